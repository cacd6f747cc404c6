// HTTP/1.1 `CONNECT /connect/ssh` of the seed gateway (reference §2.3): checks in the gateway's
// order, per-process slot caps, then 200 at once and a bridge to a supervisor relay.
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { Phase } from '../proto.ts';
import type { GatewayContext } from './service.ts';

export const SSH_CONNECT_PATH = '/connect/ssh';
export const MAX_CONNECTIONS_PER_TOKEN = 3;
export const MAX_CONNECTIONS_PER_SANDBOX = 20;
export const SSH_SESSION_WAIT_MS = 30_000;
const RELAY_WAIT_MS = 10_000;

const REASONS: Record<number, string> = {
  200: 'OK',
  400: 'Bad Request',
  401: 'Unauthorized',
  404: 'Not Found',
  405: 'Method Not Allowed',
  412: 'Precondition Failed',
  429: 'Too Many Requests',
  500: 'Internal Server Error',
  502: 'Bad Gateway',
};

export function writeStatus(socket: Duplex, status: number, body: string): void {
  const text = `${body}\n`;
  socket.end(
    `HTTP/1.1 ${status} ${REASONS[status] ?? 'Error'}\r\ncontent-type: text/plain; charset=utf-8\r\n` +
      `content-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`,
  );
}

/** Per-process connection counters (ServerState.ssh_connections_by_{token,sandbox}). */
export class SshSlots {
  private readonly byToken = new Map<string, number>();
  private readonly bySandbox = new Map<string, number>();

  tryAcquire(token: string, sandboxId: string): boolean {
    return this.acquire(token, sandboxId) === 'ok';
  }

  /** Like tryAcquire, naming the cap that refused (2026-08 answers each with its own message). */
  acquire(token: string, sandboxId: string): 'ok' | 'token' | 'sandbox' {
    const t = this.byToken.get(token) ?? 0;
    const s = this.bySandbox.get(sandboxId) ?? 0;
    if (t >= MAX_CONNECTIONS_PER_TOKEN) return 'token';
    if (s >= MAX_CONNECTIONS_PER_SANDBOX) return 'sandbox';
    this.byToken.set(token, t + 1);
    this.bySandbox.set(sandboxId, s + 1);
    return 'ok';
  }

  release(token: string, sandboxId: string): void {
    const dec = (m: Map<string, number>, k: string): void => {
      const v = (m.get(k) ?? 0) - 1;
      if (v <= 0) m.delete(k);
      else m.set(k, v);
    };
    dec(this.byToken, token);
    dec(this.bySandbox, sandboxId);
  }

  held(): { tokens: number; sandboxes: Record<string, number> } {
    return { tokens: this.byToken.size, sandboxes: Object.fromEntries(this.bySandbox) };
  }
}

type HeaderCheck = { ok: true; value: string } | { ok: false; status: number; message: string };

function header(req: IncomingMessage, name: string): HeaderCheck {
  const raw = req.headers[name];
  if (raw === undefined) return { ok: false, status: 401, message: `missing ${name} header` };
  const value = Array.isArray(raw) ? (raw[0] ?? '') : raw;
  // Empty or non-ASCII → 400 (reference §2.3, handler step 2).
  if (value.length === 0 || !/^[\x20-\x7e]+$/.test(value)) {
    return { ok: false, status: 400, message: `invalid ${name} header` };
  }
  return { ok: true, value };
}

export function handleSshConnect(
  ctx: GatewayContext,
  slots: SshSlots,
  req: IncomingMessage,
  socket: Socket,
  head: Buffer,
): void {
  const log = ctx.logger.child({ route: 'connect-ssh' });
  socket.on('error', (err) => log.debug({ err }, 'client socket error'));
  const path = (req.url ?? '').split('?')[0];
  if (path !== SSH_CONNECT_PATH) {
    writeStatus(socket, 404, 'not found');
    return;
  }
  void (async () => {
    const id = header(req, 'x-sandbox-id');
    if (!id.ok) return writeStatus(socket, id.status, id.message);
    const tok = header(req, 'x-sandbox-token');
    if (!tok.ok) return writeStatus(socket, tok.status, tok.message);
    const sandboxId = id.value;
    const token = tok.value;
    try {
      const session = await ctx.store.getSshSession(token);
      if (!session) return writeStatus(socket, 401, 'invalid ssh session token');
      if (session.revoked || session.sandboxId !== sandboxId) return writeStatus(socket, 401, 'invalid ssh session token');
      if (session.expiresAtMs > 0 && Date.now() > session.expiresAtMs) return writeStatus(socket, 401, 'ssh session expired');
      const sandbox = await ctx.store.getSandbox(sandboxId);
      if (!sandbox) return writeStatus(socket, 404, 'sandbox not found');
      if (sandbox.phase !== Phase.READY) return writeStatus(socket, 412, 'sandbox is not ready');
    } catch (err) {
      log.warn({ err }, 'store lookup failed');
      return writeStatus(socket, 500, 'internal error');
    }
    if (!slots.tryAcquire(token, sandboxId)) {
      return writeStatus(socket, 429, 'too many concurrent ssh connections');
    }
    let released = false;
    const release = (): void => {
      if (!released) {
        released = true;
        slots.release(token, sandboxId);
      }
    };
    let relayPromise: Promise<Duplex>;
    try {
      relayPromise = (await ctx.registry.openRelay(sandboxId, SSH_SESSION_WAIT_MS)).stream;
    } catch (err) {
      release();
      log.info({ sandboxId, err: (err as Error).message }, 'no supervisor session for ssh connect');
      return writeStatus(socket, 502, 'supervisor session not connected');
    }
    if (socket.destroyed) {
      release();
      return;
    }
    // reference §2.3 step 8: 200 goes out at once; later failures show as a closed connection.
    socket.write('HTTP/1.1 200 OK\r\n\r\n');
    socket.once('close', release);
    let relay: Duplex;
    try {
      relay = await withTimeout(relayPromise, RELAY_WAIT_MS);
    } catch (err) {
      log.info({ sandboxId, err: (err as Error).message }, 'relay stream did not arrive');
      socket.destroy();
      return;
    }
    if (socket.destroyed) {
      relay.destroy();
      return;
    }
    bridge(socket, relay, head);
  })();
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('timed out')), ms);
    t.unref();
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}

/** copy_bidirectional: pipes both ways with backpressure; either side closing closes the other. */
export function bridge(a: Duplex, b: Duplex, headForB?: Buffer): void {
  let done = false;
  const cleanup = (): void => {
    if (done) return;
    done = true;
    a.destroy();
    b.destroy();
  };
  a.on('error', cleanup);
  b.on('error', cleanup);
  a.on('close', cleanup);
  b.on('close', cleanup);
  if (headForB && headForB.length > 0) b.write(headForB);
  a.pipe(b);
  b.pipe(a);
}
