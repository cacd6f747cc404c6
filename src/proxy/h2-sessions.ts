// HTTP/2 client sessions to the local gateway and to peers: a pool with one live session per
// origin (no per-request handshakes), and dedicated sessions for supervisor connections.
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import { OhsError } from '../errors.ts';
import { keepSessionStreamsYoung } from '../node-patches.ts';
import type { H2Liveness } from './liveness.ts';

export interface SessionOptions {
  connectTimeoutMs: number;
  /** Stream and connection receive window (DESIGN §3: 1 MiB moves ~40 % more through tunnels). */
  windowBytes: number;
  /**
   * TLS settings for an `https://` origin (CA, client certificate, server name); a function is asked
   * per connection, with the origin dialled (reloaded certificates, the identity expected there).
   */
  tls?: tls.ConnectionOptions | ((origin: string) => tls.ConnectionOptions);
  /** TCP keepalive on the connection (first probe after this much idle time). */
  keepaliveMs?: number;
  /** PINGs the connection while it is silent and destroys it when a PING goes unanswered. */
  liveness?: H2Liveness;
  /** The silence before a PING on these connections, in place of the liveness's own interval. */
  pingIntervalMs?: number;
  /** SessionPool only: how many reset streams one connection may carry (see ResetBudget). */
  resetBudget?: ResetBudget;
}

/**
 * A server ends a connection on which it sees streams reset too fast (nghttp2, in Node and in the
 * peer sidecar: 1,000 at once, refilled at 33/s; hyper has its own limits), failing every stream on
 * it. Clients cancel streams, and the pool relays each cancel as an RST_STREAM, so one client that
 * opens and cancels streams in a loop would otherwise make the pool's shared connection a rapid-
 * reset client and take everybody's streams down with it. Each connection therefore has a budget: a
 * stream is only started on it while the resets it has carried (a token bucket) plus its open
 * streams (each can end in at most one reset) stay within `burst`. A connection out of budget takes
 * no new streams and closes once its streams are done; the next stream opens a fresh connection.
 */
export interface ResetBudget {
  burst: number;
  refillPerSecond: number;
  /** Called when a connection is retired (metrics, logs); `resets` 0 means its open streams alone filled the budget. */
  onRetire?: (origin: string, resets: number, active: number) => void;
}

/** Opens one h2c session and resolves once the connection is up. */
export function connectSession(origin: string, opts: SessionOptions): Promise<http2.ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    // Asked once per connection, so that reloaded certificates reach new connections.
    const tlsOptions = typeof opts.tls === 'function' ? opts.tls(origin) : opts.tls;
    const session = http2.connect(origin, {
      ...tlsOptions,
      settings: { initialWindowSize: opts.windowBytes, enablePush: false },
      maxSessionMemory: 64,
      // The socket is ours so that it can carry TCP keepalive and no Nagle delay (an HTTP/2
      // session's socket refuses both once it is wrapped).
      createConnection: dialer(opts, tlsOptions),
    });
    // A pooled connection lives for hours: its streams must not outlive their close (node-patches.ts).
    keepSessionStreamsYoung(session);
    let settled = false;
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      session.destroy();
      reject(new OhsError('OHS_ERR_TIMEOUT', `connect to ${origin} timed out after ${opts.connectTimeoutMs} ms`));
    }, opts.connectTimeoutMs);
    timer.unref();
    // Ready once connected and the server's SETTINGS arrived: until then its concurrent-stream
    // limit is unknown, and a burst sent on the new connection would be refused in part.
    let connected = false;
    let settingsSeen = false;
    session.once('remoteSettings', () => {
      settingsSeen = true;
      if (connected) ready();
    });
    session.once('connect', () => {
      connected = true;
      if (settingsSeen) ready();
    });
    const ready = (): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      try {
        session.setLocalWindowSize(opts.windowBytes);
      } catch {
        // window already at least this large
      }
      session.off('error', onError);
      opts.liveness?.watch(session, 0, opts.pingIntervalMs);
      // Errors after connect surface as stream errors and 'close'; never crash the process.
      session.on('error', ignoreError);
      resolve(session);
    };
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

// What a session keeps for its whole life (its connection function, its error listener) is made
// outside `connectSession`'s scope: a closure made there would keep that scope's connect-phase
// state (the timer, the promise's functions, the ready and error handlers): ~0.9 KB per connection
// (heap snapshots of 1,000 and 2,000 supervisors each on its own connection; docs/performance.md).
const ignoreError = (): void => undefined;

function dialer(opts: SessionOptions, tlsOptions: tls.ConnectionOptions | undefined): (authority: URL) => net.Socket {
  return (authority) => dial(authority, opts, tlsOptions);
}

function dial(authority: URL, opts: SessionOptions, tlsOptions: tls.ConnectionOptions | undefined): net.Socket {
  const host = authority.hostname.replace(/^\[|\]$/g, '');
  const secure = authority.protocol === 'https:';
  const port = Number(authority.port || (secure ? 443 : 80));
  const socket = secure ? tls.connect({ ...(tlsOptions ?? {}), host, port, ALPNProtocols: ['h2'] }) : net.connect({ host, port });
  socket.setNoDelay(true);
  if (opts.keepaliveMs) socket.setKeepAlive(true, opts.keepaliveMs);
  return socket;
}

export function sessionUsable(s: http2.ClientHttp2Session): boolean {
  return !s.closed && !s.destroyed && !(s as { goawayReceived?: boolean }).goawayReceived;
}

/**
 * Shared sessions per origin: as few connections as the server's SETTINGS_MAX_CONCURRENT_STREAMS
 * allows (hyper's default is 200 per connection). Long-lived streams (watches, ForwardTcp, exec)
 * would otherwise fill one connection and queue every later request behind them; when every
 * connection is full, another is opened. Closed and GOAWAY'd connections are dropped and replaced
 * lazily.
 */
export class SessionPool {
  private readonly origins = new Map<string, PoolEntry[]>();
  private closed = false;

  constructor(
    private readonly opts: SessionOptions,
    private readonly onCountChange?: (n: number) => void,
  ) {}

  /** Connections open or opening, all origins together. */
  get size(): number {
    let n = 0;
    for (const list of this.origins.values()) n += list.length;
    return n;
  }

  async get(origin: string): Promise<http2.ClientHttp2Session> {
    // Bounded: each round either returns, joins a connect in flight, or starts one.
    for (let round = 0; round < 4; round++) {
      if (this.closed) throw new OhsError('OHS_ERR_UPSTREAM', 'session pool closed');
      const list = this.origins.get(origin) ?? [];
      this.retireSpent(origin, list);
      const ready = list.find((e) => e.session !== undefined && sessionUsable(e.session) && e.active + reserved(e) < streamLimit(e.session));
      if (ready?.session) {
        reserve(ready);
        this.opts.liveness?.probe(ready.session);
        return ready.session;
      }
      // A connect in flight with room to spare is joined rather than racing another one. If it
      // fails, it fails its joiners too: the origin cannot be reached now, and retrying it once per
      // caller, one after the other, kept a burst of callers to a dead peer waiting for several
      // connect timeouts (a replica that died owning thousands of sandboxes, bench/claim-burst.ts).
      const pending = list.find((e) => e.session === undefined);
      if (pending) {
        await pending.connecting;
        continue;
      }
      await this.open(origin).connecting;
    }
    // Still no room (many callers raced for the same slots): a fresh connection of our own.
    const entry = this.open(origin);
    reserve(entry);
    return entry.connecting;
  }

  private open(origin: string): PoolEntry {
    const entry: PoolEntry = { connecting: connectSession(origin, this.opts), session: undefined, active: 0, reservations: [], resets: 0, resetsAt: Date.now() };
    const list = this.origins.get(origin) ?? [];
    list.push(entry);
    this.origins.set(origin, list);
    this.onCountChange?.(this.size);
    entry.connecting.then(
      (session) => {
        entry.session = session;
        countStreams(session, entry, this.opts.resetBudget);
        const forget = (): void => this.remove(origin, entry);
        session.once('close', forget);
        session.once('goaway', forget);
        if (this.closed) session.destroy();
      },
      () => this.remove(origin, entry),
    );
    return entry;
  }

  /** Takes connections whose reset budget is spent out of rotation; they close when idle. */
  private retireSpent(origin: string, list: PoolEntry[]): void {
    const budget = this.opts.resetBudget;
    if (!budget || budget.burst <= 0) return;
    for (const e of [...list]) {
      if (e.session === undefined) continue;
      decayResets(e, budget);
      if (e.resets + e.active + 1 <= budget.burst) continue;
      this.remove(origin, e);
      budget.onRetire?.(origin, Math.round(e.resets), e.active);
      // Nothing new starts on it, and it closes once its last stream ended. Closing now would send
      // our GOAWAY ahead of HEADERS still queued for streams opened this very turn (nghttp2 sends
      // GOAWAY first), and those streams would be refused (REFUSED_STREAM) instead of served.
      e.retired = true;
      if (e.active === 0) e.session.close();
    }
  }

  private remove(origin: string, entry: PoolEntry): void {
    const list = this.origins.get(origin);
    const i = list?.indexOf(entry) ?? -1;
    if (!list || i < 0) return;
    list.splice(i, 1);
    if (list.length === 0) this.origins.delete(origin);
    this.onCountChange?.(this.size);
  }

  /** Drops an origin's connections that misbehaved so the next get() reconnects. */
  evict(origin: string): void {
    const list = this.origins.get(origin) ?? [];
    this.origins.delete(origin);
    this.onCountChange?.(this.size);
    for (const e of list) void e.connecting.then((s) => s.close(), () => undefined);
  }

  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.origins.values()].flat();
    this.origins.clear();
    await Promise.all(
      all.map((e) =>
        e.connecting.then(
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

interface PoolEntry {
  connecting: Promise<http2.ClientHttp2Session>;
  session: http2.ClientHttp2Session | undefined;
  /** Streams open on the session, counted as they are requested and closed. */
  active: number;
  /**
   * Streams promised by get() and not requested yet, as the times the promises lapse: callers
   * waiting on one connect all resume before any of them sends, and would otherwise all see the
   * same room.
   */
  reservations: number[];
  /** Reset streams carried, decayed at the budget's refill rate as of `resetsAt` (ms). */
  resets: number;
  resetsAt: number;
  /** Out of rotation (its reset budget spent): closed once `active` is back to 0. */
  retired?: boolean;
  /** The pool's reset budget, if any (read by the streams' shared close listener). */
  budget?: ResetBudget;
}

/** The pool entry of a stream opened on a pooled session, for the one shared close listener below. */
const kPoolEntry = Symbol('ohs pool entry');
type PooledStream = http2.ClientHttp2Stream & { [kPoolEntry]?: PoolEntry };

function onPooledStreamClose(this: PooledStream): void {
  const entry = this[kPoolEntry];
  if (entry === undefined) return;
  entry.active--;
  const session = entry.session;
  if (entry.retired && entry.active === 0 && session && !session.closed) session.close();
  // Either side's RST_STREAM counts: only ours count against the server's limit, but telling
  // them apart is not worth a budget that runs out a little early.
  if (entry.budget && this.rstCode !== undefined && this.rstCode !== http2.constants.NGHTTP2_NO_ERROR) {
    decayResets(entry, entry.budget);
    entry.resets++;
  }
}

function decayResets(e: PoolEntry, budget: ResetBudget): void {
  const now = Date.now();
  e.resets = Math.max(0, e.resets - ((now - e.resetsAt) / 1000) * budget.refillPerSecond);
  e.resetsAt = now;
}

/** How long get()'s promise of a stream holds if its caller never sends one. */
const RESERVATION_MS = 1_000;

/** A stream promised to a get() caller: taken by its request(), or lapsed after RESERVATION_MS. */
function reserve(e: PoolEntry): void {
  e.reservations.push(Date.now() + RESERVATION_MS);
}

/** Promises still standing (lapsed ones are dropped here; they are in the order they were made). */
function reserved(e: PoolEntry): number {
  const now = Date.now();
  while (e.reservations.length > 0 && e.reservations[0]! <= now) e.reservations.shift();
  return e.reservations.length;
}

/** Assumed until the server's SETTINGS arrive (RFC 9113 §6.5.2 recommends at least 100). */
const DEFAULT_STREAM_LIMIT = 100;

function streamLimit(session: http2.ClientHttp2Session): number {
  return session.remoteSettings?.maxConcurrentStreams ?? DEFAULT_STREAM_LIMIT;
}

/**
 * The pool must see every stream opened on its sessions to know which has room; callers open them
 * with session.request() (forwardStream and friends), so the session's request() is wrapped once.
 */
function countStreams(session: http2.ClientHttp2Session, entry: PoolEntry, budget: ResetBudget | undefined): void {
  const request = session.request.bind(session);
  if (budget) entry.budget = budget;
  session.request = ((headers?: http2.OutgoingHttpHeaders, options?: http2.ClientSessionRequestOptions) => {
    const stream: PooledStream = request(headers, options);
    entry.active++;
    // The oldest promise of a stream on this connection is kept now.
    entry.reservations.shift();
    stream[kPoolEntry] = entry;
    stream.on('close', onPooledStreamClose);
    return stream;
  }) as typeof session.request;
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
