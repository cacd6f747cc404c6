// Shared pieces of the adversarial suite (issue 10 item 7): the sidecar's resident memory read from
// /proc, a legitimate-traffic probe that runs during an attack and reports successes and latency, a
// hyper-like fake gateway that records every request it receives, and an attacker's h2c server.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { once } from 'node:events';
import { startProcess, sidecarCommand, type ManagedProcess } from '../../emulator/process.ts';
import { detectPreface } from '../../src/classify/classify.ts';
import { NODE_FLAGS } from '../../src/node-flags.ts';

/** VmRSS of a process in MiB (Linux /proc). */
export function rssMiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]) / 1024;
}

/** Samples a process's RSS every `everyMs` until stopped; reports baseline and peak. */
export class RssSampler {
  readonly baseline: number;
  peak: number;
  last: number;
  readonly #timer: NodeJS.Timeout;

  constructor(readonly pid: number, everyMs = 100) {
    this.baseline = rssMiB(pid);
    this.peak = this.baseline;
    this.last = this.baseline;
    this.#timer = setInterval(() => this.sample(), everyMs);
    this.#timer.unref();
  }

  sample(): number {
    try {
      this.last = rssMiB(this.pid);
      this.peak = Math.max(this.peak, this.last);
    } catch {
      // the process is gone; the caller checks liveness separately
    }
    return this.last;
  }

  stop(): { baselineMiB: number; peakMiB: number; growthMiB: number } {
    clearInterval(this.#timer);
    this.sample();
    return { baselineMiB: round(this.baseline), peakMiB: round(this.peak), growthMiB: round(this.peak - this.baseline) };
  }
}

export interface ProbeStats {
  ok: number;
  failed: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  errors: string[];
}

/**
 * Runs `op` in `concurrency` loops with `gapMs` between attempts until stopped: the legitimate
 * traffic that must keep working on the attacked replica.
 */
export class LegitProbe {
  readonly #lat: number[] = [];
  readonly #errors: string[] = [];
  #failed = 0;
  #on = true;
  readonly #loops: Array<Promise<void>>;

  constructor(op: (n: number) => Promise<void>, opts: { concurrency?: number; gapMs?: number; timeoutMs?: number } = {}) {
    const gap = opts.gapMs ?? 50;
    const timeoutMs = opts.timeoutMs ?? 10_000;
    this.#loops = Array.from({ length: opts.concurrency ?? 2 }, async (_, loop) => {
      for (let n = 0; this.#on; n++) {
        const start = performance.now();
        try {
          await withTimeout(op(n * 1000 + loop), timeoutMs);
          this.#lat.push(performance.now() - start);
        } catch (err) {
          this.#failed++;
          if (this.#errors.length < 5) this.#errors.push(err instanceof Error ? err.message : String(err));
        }
        if (this.#on) await sleep(gap);
      }
    });
  }

  async stop(): Promise<ProbeStats> {
    this.#on = false;
    await Promise.all(this.#loops);
    const sorted = [...this.#lat].sort((a, b) => a - b);
    const pct = (p: number): number => round(sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? NaN);
    return { ok: sorted.length, failed: this.#failed, p50Ms: pct(0.5), p99Ms: pct(0.99), maxMs: round(sorted[sorted.length - 1] ?? NaN), errors: this.#errors };
  }
}

export function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function round(n: number): number {
  return Math.round(n * 10) / 10;
}

/** One row of the adversarial table printed at the end of a file. */
export interface CaseReport {
  case: string;
  today: string;
  rss: { baselineMiB: number; peakMiB: number; growthMiB: number };
  rssBoundMiB: number;
  legit: ProbeStats;
}

export function printReports(title: string, rows: readonly CaseReport[]): void {
  const lines = rows.map(
    (r) =>
      `- ${r.case}: ${r.today}; RSS ${r.rss.baselineMiB} -> peak ${r.rss.peakMiB} MiB (+${r.rss.growthMiB}, bound +${r.rssBoundMiB}); ` +
      `legit ${r.legit.ok} ok / ${r.legit.failed} failed, p50 ${r.legit.p50Ms} ms, p99 ${r.legit.p99Ms} ms, max ${r.legit.maxMs} ms` +
      (r.legit.errors.length > 0 ? ` (errors: ${r.legit.errors.join(' | ')})` : ''),
  );
  console.log(`${title}\n${lines.join('\n')}`);
}

/** Sum of every series of `name` on a /metrics page whose labels include `labels`; and how many series. */
export async function metric(adminPort: number, name: string, labels: Record<string, string> = {}): Promise<{ sum: number; series: number }> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  let sum = 0;
  let series = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const lbl = m[2] ?? '';
    if (Object.entries(labels).every(([k, v]) => lbl.includes(`${k}="${v}"`))) {
      sum += Number(m[3]);
      series++;
    }
  }
  return { sum, series };
}

/**
 * A sidecar in embedded mode (in-memory ownership, local limits) in front of a fake gateway, started
 * with the image's node flags: the RSS bounds below are the deployed process's.
 */
export async function embeddedSidecar(gatewayPort: number, extra: string[] = []): Promise<{ proc: ManagedProcess; port: number; admin: number }> {
  const [node, ...entry] = sidecarCommand();
  const proc = await startProcess('sidecar-kf', [
    node as string,
    ...NODE_FLAGS,
    ...entry,
    '--listen', '127.0.0.1:0', '--peer-listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0',
    '--gateway', `http://127.0.0.1:${gatewayPort}`, '--replica-id', 'kf', '--log-level', 'warn',
    ...extra,
  ]);
  return { proc, port: proc.ready.listenPort as number, admin: proc.ready.adminPort as number };
}

// ---- a hyper-like fake gateway ----------------------------------------------------------------

export interface SeenRequest {
  proto: 'http1' | 'h2';
  method: string;
  path: string;
  /** Name/value pairs as received (HTTP/1.1 rawHeaders; h2 header pairs). */
  headers: Array<[string, string]>;
}

export interface FakeGateway {
  port: number;
  seen: SeenRequest[];
  /** CONNECT tunnels currently open, by the first x-sandbox-id value (what hyper's HeaderMap::get returns). */
  openTunnels: Map<string, number>;
  /** Upgrades to `/silent…` taken and never answered, still open. */
  silentUpgrades: Set<net.Socket>;
  close(): Promise<void>;
}

/**
 * Speaks h2c and HTTP/1.1 on one port like the gateway. Header lookups take the first value, as
 * hyper's `HeaderMap::get` does. CONNECT /connect/ssh with both sandbox headers: 200 and an open
 * tunnel (echo); without them: 401 and the connection stays open (keep-alive, as hyper does for a
 * non-2xx CONNECT answer); for a sandbox id `silent-…`, no answer at all. Upgrades are answered
 * `upgradeStatus` (101, or e.g. 400 keep-alive), except upgrades to `/silent…` (no answer) and to
 * `/reset-after-upgrade` (101, then the connection reset).
 * Every request head is recorded.
 */
export async function startFakeGateway(opts: { upgradeStatus?: number } = {}): Promise<FakeGateway> {
  const seen: SeenRequest[] = [];
  const openTunnels = new Map<string, number>();
  const silentUpgrades = new Set<net.Socket>();
  const sockets = new Set<net.Socket>();
  const first = (raw: string[], name: string): string | undefined => {
    for (let i = 0; i + 1 < raw.length; i += 2) if ((raw[i] as string).toLowerCase() === name) return raw[i + 1];
    return undefined;
  };
  const pairs = (raw: string[]): Array<[string, string]> => {
    const out: Array<[string, string]> = [];
    for (let i = 0; i + 1 < raw.length; i += 2) out.push([raw[i] as string, raw[i + 1] as string]);
    return out;
  };
  const h1 = http.createServer({ requireHostHeader: false }, (req, res) => {
    seen.push({ proto: 'http1', method: req.method ?? '', path: req.url ?? '', headers: pairs(req.rawHeaders) });
    req.resume();
    // `/slow/<ms>`: a slow but healthy answer (a long poll), sent after <ms>.
    const slow = /^\/slow\/(\d+)/.exec(req.url ?? '');
    const answer = (): void => void res.writeHead(200, { 'content-type': 'text/plain' }).end('fake gateway\n');
    if (slow) setTimeout(answer, Number(slow[1])).unref();
    else answer();
  });
  h1.on('connect', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
    seen.push({ proto: 'http1', method: req.method ?? '', path: req.url ?? '', headers: pairs(req.rawHeaders) });
    const id = first(req.rawHeaders, 'x-sandbox-id');
    const token = first(req.rawHeaders, 'x-sandbox-token');
    if (req.url !== '/connect/ssh' || !id || !token) {
      // Keep-alive refusal: the same connection may carry the next request.
      socket.write('HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n');
      const parser = http.createServer({ requireHostHeader: false });
      parser.on('request', (r2: http.IncomingMessage, res2: http.ServerResponse) => {
        seen.push({ proto: 'http1', method: r2.method ?? '', path: r2.url ?? '', headers: pairs(r2.rawHeaders) });
        res2.end();
      });
      parser.on('connect', (r2: http.IncomingMessage, s2: net.Socket) => {
        seen.push({ proto: 'http1', method: r2.method ?? '', path: r2.url ?? '', headers: pairs(r2.rawHeaders) });
        s2.end('HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n');
      });
      if (head.length > 0) socket.unshift(head);
      parser.emit('connection', socket);
      return;
    }
    openTunnels.set(id, (openTunnels.get(id) ?? 0) + 1);
    socket.once('close', () => openTunnels.set(id, (openTunnels.get(id) ?? 1) - 1));
    socket.on('error', () => undefined);
    // A gateway that took the tunnel and never answers it (stuck, or a black hole in between).
    if (id.startsWith('silent-')) return;
    socket.write('HTTP/1.1 200 OK\r\n\r\n');
    if (head.length > 0) socket.write(head);
    socket.on('data', (d: Buffer) => socket.write(d));
  });
  h1.on('upgrade', (req: http.IncomingMessage, socket: net.Socket) => {
    seen.push({ proto: 'http1', method: req.method ?? '', path: req.url ?? '', headers: pairs(req.rawHeaders) });
    const status = opts.upgradeStatus ?? 101;
    socket.on('error', () => undefined);
    if (req.url?.startsWith('/reset-after-upgrade')) {
      // Upgraded, then the connection reset (a gateway that crashed mid-stream).
      socket.write('HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n');
      setTimeout(() => socket.resetAndDestroy(), 100).unref();
      return;
    }
    if (req.url?.startsWith('/silent')) {
      silentUpgrades.add(socket);
      socket.once('close', () => silentUpgrades.delete(socket));
      return;
    }
    if (status === 101) {
      socket.write('HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n');
      socket.on('data', (d: Buffer) => socket.write(d));
      return;
    }
    socket.write(`HTTP/1.1 ${status} Refused\r\ncontent-length: 0\r\n\r\n`);
    const parser = http.createServer({ requireHostHeader: false }, (r2, res2) => {
      seen.push({ proto: 'http1', method: r2.method ?? '', path: r2.url ?? '', headers: pairs(r2.rawHeaders) });
      res2.end();
    });
    parser.emit('connection', socket);
  });
  h1.on('clientError', (_err, socket: net.Socket) => socket.destroy());
  const h2 = http2.createServer();
  h2.on('stream', (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, _flags: number, rawHeaders: string[]) => {
    seen.push({ proto: 'h2', method: String(headers[':method']), path: String(headers[':path']), headers: pairs(rawHeaders) });
    stream.on('error', () => undefined);
    stream.resume();
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
    stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '5', 'grpc-message': 'fake gateway' }));
    stream.end();
  });
  h2.on('sessionError', () => undefined);
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      const kind = detectPreface(buf);
      if (kind === 'need-more' && buf.length < 64) return;
      socket.off('data', onData);
      socket.pause();
      socket.unshift(buf);
      if (kind === 'h2') h2.emit('connection', socket);
      else {
        h1.emit('connection', socket);
        socket.resume();
      }
    };
    socket.on('data', onData);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as net.AddressInfo).port,
    seen,
    openTunnels,
    silentUpgrades,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

// ---- an attacker's h2c server (for a poisoned owner record) -------------------------------------

export interface Attacker {
  url: string;
  connections: number;
  streams: Array<Record<string, string | string[] | undefined>>;
  close(): Promise<void>;
}

/** Records every connection and stream it receives; answers each stream with 200 and nothing else. */
export async function startAttacker(): Promise<Attacker> {
  const a: Attacker = { url: '', connections: 0, streams: [], close: async () => undefined };
  const server = http2.createServer();
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on('session', (sess) => {
    sessions.add(sess);
    sess.once('close', () => sessions.delete(sess));
  });
  server.on('connection', () => a.connections++);
  server.on('stream', (stream, headers) => {
    a.streams.push({ ...headers });
    stream.on('error', () => undefined);
    stream.respond({ ':status': 200 });
    stream.end();
  });
  server.on('sessionError', () => undefined);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  a.url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  a.close = () =>
    new Promise<void>((r) => {
      server.close(() => r());
      for (const sess of sessions) sess.destroy();
    });
  return a;
}

/** Raw HTTP/1.1 exchange that keeps the socket for more writes; resolves after `waitMs` of collecting. */
export async function rawSession(port: number, first: Buffer): Promise<{ socket: net.Socket; received: () => string; closed: () => boolean }> {
  const socket = net.connect(port, '127.0.0.1');
  const chunks: Buffer[] = [];
  let closed = false;
  socket.on('data', (d: Buffer) => chunks.push(d));
  socket.on('error', () => undefined);
  socket.on('close', () => (closed = true));
  await once(socket, 'connect');
  socket.write(first);
  return { socket, received: () => Buffer.concat(chunks).toString('latin1'), closed: () => closed };
}
