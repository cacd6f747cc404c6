// Two byte streams joined both ways (CONNECT tunnels, peer tunnels), with backpressure set up once
// (`pipe`) and no JavaScript per chunk: byte counts come from the sockets' own counters at close.
//
// Closing is graceful: when one side closes, the other is ended (FIN, or END_STREAM on an HTTP/2
// stream), drained and given a moment to close by itself; only an error, or a side that does not
// finish within the grace, is destroyed. A destroyed HTTP/2 stream sends RST_STREAM, and a Node (or
// hyper) HTTP/2 server answers a burst of about a thousand of those with GOAWAY (nghttp2's rapid-
// reset limit: 1000, refilled at 33 per second), which would take every tunnel sharing the peer
// session down with it.
import type { Duplex } from 'node:stream';

/** How long the surviving side of a tunnel may take to finish after the other closed. */
export const SPLICE_END_GRACE_MS = 5_000;

/** Pipes two byte streams both ways; calls `onClose` once, when both are closed. */
export function splice(a: Duplex, b: Duplex, onClose: () => void, graceMs = SPLICE_END_GRACE_MS): void {
  let done = false;
  let timer: NodeJS.Timeout | undefined;
  const finish = (): void => {
    if (done || !a.destroyed || !b.destroyed) return;
    done = true;
    clearTimeout(timer);
    onClose();
  };
  const abort = (): void => {
    a.destroy();
    b.destroy();
    finish();
  };
  const wrapUp = (other: Duplex): void => {
    if (other.destroyed) return finish();
    // Whatever the other side still sends has nowhere to go: drain it so that it can reach its end.
    other.resume();
    if (!other.writableEnded) other.end();
    timer ??= setTimeout(() => other.destroy(), graceMs);
    timer.unref();
  };
  a.on('error', abort);
  b.on('error', abort);
  // `on`, not `once`: 'close' comes once, and a held tunnel would keep each `once` wrapper (a bound
  // function and its state, ~0.2 KB) for its whole life.
  a.on('close', () => {
    wrapUp(b);
    finish();
  });
  b.on('close', () => {
    wrapUp(a);
    finish();
  });
  a.pipe(b);
  b.pipe(a);
}
