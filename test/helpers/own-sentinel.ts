// A private Sentinel-managed Redis for failover tests: a primary, one replica and three sentinels
// (Debian's redis-sentinel) on spare loopback ports, in a temp dir. The shared Redis is never touched.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './own-redis.ts';

export const SENTINEL_MASTER = 'ohsmaster';

export interface OwnSentinel {
  /** The form proposed for the sidecar's --redis-url: redis+sentinel://h1:p1,h2:p2,h3:p3/<master>. */
  url: string;
  primaryPort: number;
  replicaPort: number;
  sentinelPorts: number[];
  /** Port of the primary the sentinels announce now. */
  currentPrimary(): Promise<number>;
  /** kill -9 the current primary; resolves with its port. */
  killPrimary(): Promise<number>;
  stop(): Promise<void>;
}

const children = new Set<ChildProcess>();
let hookInstalled = false;

/**
 * The proposed URL form, parsed into ioredis Sentinel options:
 * redis+sentinel://[user:pass@]host1:port1[,hostN:portN…]/<master-name>[/<db>]
 */
export function parseSentinelUrl(url: string): { sentinels: Array<{ host: string; port: number }>; name: string; db?: number; username?: string; password?: string } {
  const m = /^redis\+sentinel:\/\/(?:([^:@/]*)(?::([^@/]*))?@)?([^/]+)\/([^/?#]+)(?:\/(\d+))?$/.exec(url);
  if (!m) throw new Error(`not a redis+sentinel:// URL: ${url}`);
  const sentinels = (m[3] as string).split(',').map((hp) => {
    const at = hp.lastIndexOf(':');
    const host = at > 0 ? hp.slice(0, at).replace(/^\[|\]$/g, '') : hp;
    const port = at > 0 ? Number(hp.slice(at + 1)) : 26379;
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`bad sentinel address ${hp}`);
    return { host, port };
  });
  return {
    sentinels,
    name: decodeURIComponent(m[4] as string),
    ...(m[5] !== undefined ? { db: Number(m[5]) } : {}),
    ...(m[1] ? { username: decodeURIComponent(m[1]) } : {}),
    ...(m[2] ? { password: decodeURIComponent(m[2]) } : {}),
  };
}

function start(bin: string, args: string[]): ChildProcess {
  if (!hookInstalled) {
    hookInstalled = true;
    process.once('exit', () => {
      for (const c of children) c.kill('SIGKILL');
    });
  }
  const c = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  c.stderr?.on('data', () => undefined);
  c.on('error', () => undefined);
  children.add(c);
  c.once('exit', () => children.delete(c));
  return c;
}

/** One RESP command on a fresh connection; resolves with the raw reply text. */
function command(port: number, ...args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    let out = '';
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no reply from ${port}`));
    }, 2000);
    s.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    s.on('connect', () => s.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`));
    s.on('data', (d) => {
      out += d.toString();
      if (replyComplete(out)) {
        clearTimeout(timer);
        s.destroy();
        resolve(out);
      }
    });
  });
}

/** Enough RESP for the replies used here: simple strings, errors, bulk strings, arrays of bulk strings. */
function replyComplete(out: string): boolean {
  const buf = Buffer.from(out);
  let at = 0;
  const line = (): string | undefined => {
    const end = buf.indexOf('\r\n', at);
    if (end < 0) return undefined;
    const l = buf.subarray(at, end).toString();
    at = end + 2;
    return l;
  };
  const one = (): boolean => {
    const l = line();
    if (l === undefined) return false;
    if (l[0] === '$') {
      const n = Number(l.slice(1));
      if (n < 0) return true;
      if (buf.length < at + n + 2) return false;
      at += n + 2;
      return true;
    }
    if (l[0] === '*') {
      const n = Number(l.slice(1));
      for (let i = 0; i < n; i++) if (!one()) return false;
      return true;
    }
    return true;
  };
  return one();
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function startOwnSentinel(): Promise<OwnSentinel> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ohs-sentinel-'));
  const primaryPort = await freePort();
  const replicaPort = await freePort();
  const sentinelPorts = [await freePort(), await freePort(), await freePort()];
  const common = ['--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no', '--loglevel', 'warning', '--dir', dir];
  const servers = new Map<number, ChildProcess>();
  servers.set(primaryPort, start('redis-server', ['--port', String(primaryPort), ...common]));
  servers.set(replicaPort, start('redis-server', ['--port', String(replicaPort), '--replicaof', '127.0.0.1', String(primaryPort), ...common]));
  await waitFor('primary and replica', async () => (await command(primaryPort, 'PING')).startsWith('+PONG') && (await command(replicaPort, 'PING')).startsWith('+PONG'));
  await waitFor('replica in sync', async () => (await command(replicaPort, 'INFO', 'replication')).includes('master_link_status:up'));
  const sentinels: ChildProcess[] = [];
  for (const p of sentinelPorts) {
    const conf = path.join(dir, `sentinel-${p}.conf`);
    writeFileSync(
      conf,
      [
        `port ${p}`,
        'bind 127.0.0.1',
        'daemonize no',
        `dir ${dir}`,
        `sentinel monitor ${SENTINEL_MASTER} 127.0.0.1 ${primaryPort} 2`,
        `sentinel down-after-milliseconds ${SENTINEL_MASTER} 1000`,
        `sentinel failover-timeout ${SENTINEL_MASTER} 10000`,
        `sentinel parallel-syncs ${SENTINEL_MASTER} 1`,
        '',
      ].join('\n'),
    );
    sentinels.push(start('redis-sentinel', [conf]));
  }
  const currentPrimary = async (): Promise<number> => {
    const reply = await command(sentinelPorts[0] as number, 'SENTINEL', 'get-master-addr-by-name', SENTINEL_MASTER);
    const m = /\r\n(\d+)\r\n$/.exec(reply);
    if (!m) throw new Error(`sentinel reply ${JSON.stringify(reply)}`);
    return Number(m[1]);
  };
  // Every sentinel sees the replica and the other sentinels before anything is failed over.
  await waitFor('sentinels ready', async () => {
    for (const p of sentinelPorts) {
      const info = await command(p, 'INFO', 'sentinel');
      if (!/slaves=1,sentinels=3/.test(info)) return false;
    }
    return (await currentPrimary()) === primaryPort;
  }, 30_000);
  return {
    url: `redis+sentinel://${sentinelPorts.map((p) => `127.0.0.1:${p}`).join(',')}/${SENTINEL_MASTER}`,
    primaryPort,
    replicaPort,
    sentinelPorts,
    currentPrimary,
    async killPrimary() {
      const port = await currentPrimary();
      const c = servers.get(port);
      if (!c) throw new Error(`no server on ${port}`);
      const exited = once(c, 'exit');
      c.kill('SIGKILL');
      await exited;
      servers.delete(port);
      return port;
    },
    async stop() {
      for (const c of [...servers.values(), ...sentinels]) {
        if (c.exitCode === null && c.signalCode === null) {
          const exited = once(c, 'exit');
          c.kill('SIGKILL');
          await exited;
        }
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
