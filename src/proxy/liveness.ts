// Liveness of long-lived HTTP/2 connections, client and peer alike, with one timer for all of them.
// A connection that received nothing for `pingIntervalMs` is sent a PING; one whose PING stays
// unanswered for `pingTimeoutMs` is destroyed (a peer or client that vanished without a FIN: its
// streams, relays and limit slots are released instead of being renewed forever). A connection with
// no open stream for `idleTimeoutMs` is closed gracefully (GOAWAY, nothing in flight is cut).
import type http2 from 'node:http2';
import { LinkedSet } from '../linked-set.ts';

export interface LivenessOptions {
  /** 0 disables PINGs. */
  pingIntervalMs: number;
  pingTimeoutMs: number;
  /** Called when a connection is destroyed for an unanswered PING or closed for idleness, before that. */
  onClose?: (why: 'ping-timeout' | 'idle', session: http2.Http2Session) => void;
}

interface Watched {
  session: http2.Http2Session;
  /** 0 = never closed for idleness. */
  idleTimeoutMs: number;
  /** PINGed after this long without a byte; 0 = never (nor probed). */
  pingIntervalMs: number;
  lastBytesRead: number;
  lastActivityAt: number;
  idleSince: number | undefined;
  openStreams: number;
  pingSentAt: number | undefined;
  /**
   * A stream started at `probeAt`, when the connection had read `probeFrom` bytes: unless more
   * arrive, it is PINGed PROBE_AFTER_SILENT_MS later.
   */
  probeFrom: number | undefined;
  probeAt: number;
}

/** The watched connection of a server stream, for the one shared close listener below. */
const kWatched = Symbol('ohs liveness');
type WatchedStream = http2.Http2Stream & { [kWatched]?: Watched };
/** On a watched connection: its record; once destroyed for an unanswered PING: true. */
const kWatch = Symbol('ohs liveness watch');
const kSilent = Symbol('ohs went silent');
type WatchedSession = http2.Http2Session & { [kWatch]?: Watched; [kSilent]?: true };

/**
 * A stream started on a pooled connection that has sent nothing for this long gets a PING behind it
 * (`probe`; at once, or on the tick once the connection has been silent this long): a peer whose
 * node or link vanished is found out about `pingTimeoutMs` after the first request sent to it, not
 * `pingIntervalMs` after it fell silent plus that.
 */
const PROBE_AFTER_SILENT_MS = 1_000;

/** Whether `session` was destroyed because a PING went unanswered: nothing came from it since. */
export function silentDeath(session: http2.Http2Session): boolean {
  return (session as WatchedSession)[kSilent] === true;
}

function onWatchedStreamClose(this: WatchedStream): void {
  const w = this[kWatched];
  if (w === undefined) return;
  w.openStreams--;
  if (w.openStreams === 0) w.idleSince = Date.now();
}

export class H2Liveness {
  /** A linked set: connections come and go by the thousand (src/linked-set.ts). */
  private readonly watched = new LinkedSet<Watched>();
  private readonly timer: NodeJS.Timeout | undefined;

  constructor(private readonly opts: LivenessOptions) {
    const tickMs = Math.max(50, Math.min(opts.pingIntervalMs || Infinity, opts.pingTimeoutMs, 1000));
    this.timer = setInterval(() => this.tick(), tickMs);
    this.timer.unref();
  }

  /**
   * Watches a connection until it closes. `idleTimeoutMs` 0: never closed for having no stream.
   * `pingIntervalMs`: this connection's own silence before a PING, in place of the options' (peer
   * connections: few, and carrying relays that may sit idle for minutes).
   */
  watch(session: http2.Http2Session, idleTimeoutMs = 0, pingIntervalMs = this.opts.pingIntervalMs): void {
    const now = Date.now();
    const w: Watched = {
      session,
      idleTimeoutMs,
      pingIntervalMs,
      lastBytesRead: session.socket?.bytesRead ?? 0,
      lastActivityAt: now,
      idleSince: now,
      openStreams: 0,
      pingSentAt: undefined,
      probeFrom: undefined,
      probeAt: 0,
    };
    const member = this.watched.add(w);
    (session as WatchedSession)[kWatch] = w;
    // `on`, not `once`: 'close' comes once, and a `once` wrapper (a bound function and its state,
    // ~0.2 KB) would stay with the connection for its whole life.
    session.on('close', () => this.watched.delete(member));
    // One listener function for every stream (a closure per stream would cost more than the stream's count).
    const opened = (stream: WatchedStream): void => {
      w.openStreams++;
      w.idleSince = undefined;
      stream[kWatched] = w;
      stream.on('close', onWatchedStreamClose);
    };
    // Server sessions announce their streams (client sessions are watched for PINGs only).
    session.on('stream', opened);
  }

  /**
   * A stream is about to start on `session` (a pooled upstream connection): if nothing came from it
   * for PROBE_AFTER_SILENT_MS and no PING is out, one goes now, and the connection is destroyed if
   * it stays unanswered for `pingTimeoutMs`. Its streams then fail with `silentDeath` true, and a
   * request that reached nobody can be sent to the sandbox's next owner (grpc-streams, tunnel).
   */
  probe(session: http2.Http2Session): void {
    const w = (session as WatchedSession)[kWatch];
    if (w === undefined || w.pingSentAt !== undefined || w.pingIntervalMs <= 0) return;
    const now = Date.now();
    const read = session.socket?.bytesRead ?? w.lastBytesRead;
    if (w.probeFrom !== undefined) {
      // A check is pending: it covers this stream too unless bytes came in since it began (they
      // may have been the last before a partition), then it starts again from now.
      if (read !== w.probeFrom) {
        w.probeFrom = read;
        w.probeAt = now;
      }
      return;
    }
    // Silent for a while already: at once. Else the tick PINGs it if nothing arrives meanwhile.
    if (read === w.lastBytesRead && now - w.lastActivityAt >= PROBE_AFTER_SILENT_MS) return this.ping(w, now);
    w.probeFrom = read;
    w.probeAt = now;
  }

  private ping(w: Watched, now: number): void {
    w.pingSentAt = now;
    w.probeFrom = undefined;
    try {
      // The answer's bytes count as activity on the next tick; the callback only ends the wait.
      w.session.ping((err) => {
        if (!err) w.pingSentAt = undefined;
      });
    } catch {
      // too many PINGs in flight or the session is closing: the next tick decides
    }
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.watched.clear();
  }

  private tick(): void {
    const now = Date.now();
    for (const w of this.watched) {
      const s = w.session;
      if (s.destroyed || s.closed) continue;
      const read = s.socket?.bytesRead ?? w.lastBytesRead;
      if (read !== w.lastBytesRead) {
        w.lastBytesRead = read;
        w.lastActivityAt = now;
        w.pingSentAt = undefined;
      }
      // Heard from since a stream started: that stream is not waiting on a dead connection.
      if (w.probeFrom !== undefined && read !== w.probeFrom) w.probeFrom = undefined;
      if (w.pingSentAt !== undefined && now - w.pingSentAt >= this.opts.pingTimeoutMs) {
        this.opts.onClose?.('ping-timeout', s);
        (s as WatchedSession)[kSilent] = true;
        s.destroy();
        continue;
      }
      if (w.idleTimeoutMs > 0 && w.idleSince !== undefined && now - w.idleSince >= w.idleTimeoutMs) {
        this.opts.onClose?.('idle', s);
        s.close();
        continue;
      }
      if (w.pingIntervalMs > 0 && w.pingSentAt === undefined) {
        const silentMs = now - w.lastActivityAt;
        if (silentMs >= w.pingIntervalMs || (w.probeFrom !== undefined && now - w.probeAt >= PROBE_AFTER_SILENT_MS)) this.ping(w, now);
      }
    }
  }
}
