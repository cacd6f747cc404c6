// HAProxy as the reference proxy hop: tcp mode for CONNECT tunnels, HTTP/2 (h2c both sides) for gRPC.
// Optional: without `haproxy` on PATH the bench says so and leaves its columns out.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface Haproxy {
  version: string;
  tcpPort: number;
  h2Port: number;
  /** The config it runs, for the results file. */
  config: string;
  pid: number;
  close(): Promise<void>;
}

/** The `haproxy -v` first line, or undefined when it is not installed. */
export function haproxyVersion(): string | undefined {
  try {
    const out = execFileSync('haproxy', ['-v'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5_000 });
    return /HAProxy version (\S+)/.exec(out)?.[1] ?? out.split('\n')[0]?.trim();
  } catch {
    return undefined;
  }
}

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', () => resolve()));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

async function waitListening(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`haproxy not listening on ${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Starts HAProxy in front of `upstream`: the gateway's port, or (to chain two HAProxy hops, as two
 * sidecars chain when one forwards to the owner) another HAProxy's tcp and h2 ports. The HTTP/2 window
 * is set to `windowBytes` on both sides, as the sidecar's is, so the hops are compared at the same
 * flow-control settings.
 */
export async function startHaproxy(upstream: number | { tcpPort: number; h2Port: number }, opts: { windowBytes: number; nbthread?: number }): Promise<Haproxy> {
  const version = haproxyVersion();
  if (!version) throw new Error('haproxy is not installed');
  const { tcpPort: upTcp, h2Port: upH2 } = typeof upstream === 'number' ? { tcpPort: upstream, h2Port: upstream } : upstream;
  const [tcpPort, h2Port] = [await freePort(), await freePort()];
  const config = [
    'global',
    '  maxconn 8000',
    `  tune.h2.initial-window-size ${opts.windowBytes}`,
    ...(opts.nbthread ? [`  nbthread ${opts.nbthread}`] : []),
    'defaults',
    '  timeout connect 5s',
    '  timeout client 1h',
    '  timeout server 1h',
    '  timeout tunnel 1h',
    'frontend connect_tunnels',
    '  mode tcp',
    `  bind 127.0.0.1:${tcpPort}`,
    '  default_backend gateway_tcp',
    'backend gateway_tcp',
    '  mode tcp',
    `  server gw 127.0.0.1:${upTcp}`,
    'frontend grpc_h2',
    '  mode http',
    `  bind 127.0.0.1:${h2Port} proto h2`,
    '  default_backend gateway_h2',
    'backend gateway_h2',
    '  mode http',
    `  server gw 127.0.0.1:${upH2} proto h2`,
    '',
  ].join('\n');
  const dir = mkdtempSync(join(tmpdir(), 'ohs-bench-haproxy-'));
  const file = join(dir, 'haproxy.cfg');
  writeFileSync(file, config);
  const child: ChildProcess = spawn('haproxy', ['-f', file, '-db'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const kill = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 3_000);
      await exited;
      clearTimeout(t);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('exit', () => child.kill('SIGKILL'));
  try {
    await Promise.all([waitListening(tcpPort, 10_000), waitListening(h2Port, 10_000)]);
  } catch (err) {
    await kill();
    throw new Error(`${(err as Error).message}\n${stderr}`);
  }
  return { version, tcpPort, h2Port, config, pid: child.pid!, close: kill };
}
