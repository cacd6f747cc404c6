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
  /** Called when a connection is destroyed for an unanswered PING or closed for idleness. */
  onClose?: (why: 'ping-timeout' | 'idle') => void;
}

interface Watched {
  session: http2.Http2Session;
  /** 0 = never closed for idleness. */
  idleTimeoutMs: number;
  lastBytesRead: number;
  lastActivityAt: number;
  idleSince: number | undefined;
  openStreams: number;
  pingSentAt: number | undefined;
}

/** The watched connection of a server stream, for the one shared close listener below. */
const kWatched = Symbol('ohs liveness');
type WatchedStream = http2.Http2Stream & { [kWatched]?: Watched };

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

  /** Watches a connection until it closes. `idleTimeoutMs` 0: never closed for having no stream. */
  watch(session: http2.Http2Session, idleTimeoutMs = 0): void {
    const now = Date.now();
    const w: Watched = {
      session,
      idleTimeoutMs,
      lastBytesRead: session.socket?.bytesRead ?? 0,
      lastActivityAt: now,
      idleSince: now,
      openStreams: 0,
      pingSentAt: undefined,
    };
    const member = this.watched.add(w);
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
      if (w.pingSentAt !== undefined && now - w.pingSentAt >= this.opts.pingTimeoutMs) {
        this.opts.onClose?.('ping-timeout');
        s.destroy();
        continue;
      }
      if (w.idleTimeoutMs > 0 && w.idleSince !== undefined && now - w.idleSince >= w.idleTimeoutMs) {
        this.opts.onClose?.('idle');
        s.close();
        continue;
      }
      if (this.opts.pingIntervalMs > 0 && w.pingSentAt === undefined && now - w.lastActivityAt >= this.opts.pingIntervalMs) {
        w.pingSentAt = now;
        try {
          // The answer's bytes count as activity on the next tick; the callback only ends the wait.
          s.ping((err) => {
            if (!err) w.pingSentAt = undefined;
          });
        } catch {
          // too many PINGs in flight or the session is closing: the next tick decides
        }
      }
    }
  }
}
