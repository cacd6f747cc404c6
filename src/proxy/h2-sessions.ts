// HTTP/2 client sessions to the local gateway and to peers: a pool with one live session per
// origin (no per-request handshakes), and dedicated sessions for supervisor connections.
import http2 from 'node:http2';
import type tls from 'node:tls';
import { OhsError } from '../errors.ts';

export interface SessionOptions {
  connectTimeoutMs: number;
  /** Stream and connection receive window (DESIGN §3: 1 MiB moves ~40 % more through tunnels). */
  windowBytes: number;
  /** TLS settings for an `https://` origin (CA, client certificate, server name); a function is asked per connection (reloaded certificates). */
  tls?: tls.ConnectionOptions | (() => tls.ConnectionOptions);
}

/** Opens one h2c session and resolves once the connection is up. */
export function connectSession(origin: string, opts: SessionOptions): Promise<http2.ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(origin, {
      ...(typeof opts.tls === 'function' ? opts.tls() : opts.tls),
      settings: { initialWindowSize: opts.windowBytes, enablePush: false },
      maxSessionMemory: 64,
    });
    let settled = false;
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      session.destroy();
      reject(new OhsError('OHS_ERR_TIMEOUT', `connect to ${origin} timed out after ${opts.connectTimeoutMs} ms`));
    }, opts.connectTimeoutMs);
    timer.unref();
    session.once('connect', () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      try {
        session.setLocalWindowSize(opts.windowBytes);
      } catch {
        // window already at least this large
      }
      session.off('error', onError);
      // Errors after connect surface as stream errors and 'close'; never crash the process.
      session.on('error', () => undefined);
      resolve(session);
    });
    const onError = (err: NodeJS.ErrnoException): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      session.destroy();
      reject(new OhsError('OHS_ERR_UPSTREAM', `connect to ${origin} failed: ${err.code ?? err.message}`, { cause: err, details: { errno: err.code } }));
    };
    session.on('error', onError);
  });
}

export function sessionUsable(s: http2.ClientHttp2Session): boolean {
  return !s.closed && !s.destroyed && !(s as { goawayReceived?: boolean }).goawayReceived;
}

/** One shared session per origin, reconnected lazily after it closes. */
export class SessionPool {
  private readonly sessions = new Map<string, Promise<http2.ClientHttp2Session>>();
  private closed = false;

  constructor(
    private readonly opts: SessionOptions,
    private readonly onCountChange?: (n: number) => void,
  ) {}

  get size(): number {
    return this.sessions.size;
  }

  async get(origin: string): Promise<http2.ClientHttp2Session> {
    if (this.closed) throw new OhsError('OHS_ERR_UPSTREAM', 'session pool closed');
    const existing = this.sessions.get(origin);
    if (existing) {
      const s = await existing.catch(() => undefined);
      if (s && sessionUsable(s)) return s;
      if (this.sessions.get(origin) === existing) this.sessions.delete(origin);
    }
    const pending = connectSession(origin, this.opts);
    this.sessions.set(origin, pending);
    this.onCountChange?.(this.sessions.size);
    try {
      const session = await pending;
      const forget = (): void => {
        if (this.sessions.get(origin) === pending) {
          this.sessions.delete(origin);
          this.onCountChange?.(this.sessions.size);
        }
      };
      session.once('close', forget);
      session.once('goaway', forget);
      return session;
    } catch (err) {
      if (this.sessions.get(origin) === pending) {
        this.sessions.delete(origin);
        this.onCountChange?.(this.sessions.size);
      }
      throw err;
    }
  }

  /** Drops a session that misbehaved so the next get() reconnects. */
  evict(origin: string): void {
    const p = this.sessions.get(origin);
    this.sessions.delete(origin);
    this.onCountChange?.(this.sessions.size);
    void p?.then((s) => s.close(), () => undefined);
  }

  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.sessions.values()];
    this.sessions.clear();
    await Promise.all(
      all.map((p) =>
        p.then(
          (s) => new Promise<void>((resolve) => {
            if (s.destroyed) return resolve();
            s.close(() => resolve());
            setTimeout(() => {
              s.destroy();
              resolve();
            }, 2000).unref();
          }),
          () => undefined,
        ),
      ),
    );
  }
}

/**
 * Many long-lived streams to one origin, spread over as many connections as needed so that none
 * carries more than `maxStreamsPerSession` (a gateway caps concurrent streams per connection;
 * hyper's server default is 200). Used for shadow registrations, which live as long as sessions.
 */
export class SpreadPool {
  private readonly sessions: Array<{ session: Promise<http2.ClientHttp2Session>; active: number }> = [];
  private closed = false;

  constructor(
    private readonly origin: string,
    private readonly opts: SessionOptions,
    private readonly maxStreamsPerSession = 100,
  ) {}

  /** A session with room for one more stream; call `release` when that stream is over. */
  async acquire(): Promise<{ session: http2.ClientHttp2Session; release: () => void }> {
    if (this.closed) throw new OhsError('OHS_ERR_UPSTREAM', 'session pool closed');
    let slot = this.sessions.find((s) => s.active < this.maxStreamsPerSession);
    if (!slot) {
      const session = connectSession(this.origin, this.opts);
      slot = { session, active: 0 };
      const created = slot;
      this.sessions.push(created);
      session.then(
        (s) => s.once('close', () => this.remove(created)),
        () => this.remove(created),
      );
    }
    slot.active++;
    const held = slot;
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      held.active--;
    };
    try {
      const session = await held.session;
      if (!sessionUsable(session)) throw new OhsError('OHS_ERR_UPSTREAM', `session to ${this.origin} is closing`);
      return { session, release };
    } catch (err) {
      release();
      this.remove(held);
      throw err;
    }
  }

  private remove(slot: { session: Promise<http2.ClientHttp2Session>; active: number }): void {
    const i = this.sessions.indexOf(slot);
    if (i >= 0) this.sessions.splice(i, 1);
  }

  async close(): Promise<void> {
    this.closed = true;
    const all = this.sessions.splice(0);
    await Promise.all(all.map((s) => s.session.then((x) => x.destroy(), () => undefined)));
  }
}
