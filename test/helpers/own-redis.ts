// A private redis-server for fault-injection tests: the shared Redis must never be stopped, this one
// can be killed and restarted on the same port at will.
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export interface OwnRedis {
  url: string;
  port: number;
  /** Kills the server (SIGKILL: like a crash, no goodbye to clients) and waits for it to exit. */
  stop(): Promise<void>;
  /** Starts it again on the same port (empty: nothing is persisted). */
  start(): Promise<void>;
}

const READY_TIMEOUT_MS = 10_000;
const running = new Set<ChildProcess>();
const dirs = new Set<string>();
let exitHookInstalled = false;

/** Asks the OS for a free TCP port on loopback. */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

export async function startOwnRedis(): Promise<OwnRedis> {
  const port = await freePort();
  let child: ChildProcess | null = null;

  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once('exit', () => {
      for (const c of running) c.kill('SIGKILL');
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
    });
  }
  // Its own directory: a server made a replica (REPLICAOF) writes the primary's snapshot to disk,
  // which would otherwise land in the working directory, the checkout.
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ohs-own-redis-'));
  dirs.add(dir);

  async function start(): Promise<void> {
    if (child !== null) throw new Error('own redis already running');
    const c = spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--loglevel', 'warning', '--dir', dir],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    child = c;
    running.add(c);
    let output = '';
    c.stdout?.on('data', (d: Buffer) => (output = (output + d.toString()).slice(-4000)));
    c.stderr?.on('data', (d: Buffer) => (output = (output + d.toString()).slice(-4000)));
    c.on('error', () => {}); // spawn failures surface as the readiness timeout below, with the output
    c.once('exit', () => {
      running.delete(c);
      if (child === c) child = null;
    });
    await waitForPort(port, () => child === c, () => output);
  }

  async function stop(): Promise<void> {
    const c = child;
    if (c === null) return;
    child = null;
    if (c.exitCode === null && c.signalCode === null) {
      const exited = once(c, 'exit');
      c.kill('SIGKILL');
      await exited;
    }
  }

  await start();
  return { url: `redis://127.0.0.1:${port}`, port, stop, start };
}

async function waitForPort(port: number, alive: () => boolean, output: () => string): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (!alive()) throw new Error(`redis-server on ${port} exited: ${output()}`);
    if (await pingRedis(port)) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`redis-server on ${port} not ready in ${READY_TIMEOUT_MS} ms: ${output()}`);
}

/** True once the server answers PING (a plain TCP accept is not enough: it may still be loading). */
function pingRedis(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let reply = '';
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(500, () => done(false));
    socket.on('error', () => done(false));
    socket.on('connect', () => socket.write('PING\r\n'));
    socket.on('data', (d) => {
      reply += d.toString();
      if (reply.includes('\r\n')) done(reply.startsWith('+PONG'));
    });
  });
}
