// Node keeps the headers every HTTP/2 stream sent (a request's on the client stream, a response's on
// the server stream) for the stream's whole life, only to answer `stream.sentHeaders`, which nothing
// in the sidecar reads. A header object that went through Node's header processing is a dictionary
// (~450 bytes for a request's, ~250 for a response's) holding its own copies of the value strings;
// with a downstream and an upstream stream per session, that is ~0.9 KB of heap per held session
// (heap snapshot at 2,000 supervisors + 2,000 idle forwards). A stream the sidecar made or answered
// lets go of them once they are on the wire.
import type http2 from 'node:http2';

/** Node's private key of the sent headers (`Symbol('sent-headers')`), null once looked for and absent. */
let kSentHeaders: symbol | null | undefined;

/** Drops what Node keeps of the headers `stream` sent; call it right after `request()` or `respond()`. */
export function forgetSentHeaders(stream: http2.Http2Stream): void {
  // Every caller has just sent the headers: a Node that keeps them has the key on this stream now.
  // One that keeps them elsewhere (or not at all) is left alone from then on.
  kSentHeaders ??= Object.getOwnPropertySymbols(stream).find((s) => s.description === 'sent-headers') ?? null;
  if (kSentHeaders !== null) (stream as unknown as Record<symbol, unknown>)[kSentHeaders] = undefined;
}
