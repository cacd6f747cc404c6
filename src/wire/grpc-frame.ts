// Incremental reader for the first length-prefixed gRPC message of a request stream. The routing
// key lives in that message (reference §2.0), so the proxy buffers DATA until it is complete, then
// replays every buffered byte upstream unchanged.

import { OhsError } from '../errors.ts';

/** `[compressed: u8][length: u32 BE]` before every gRPC message. */
export const GRPC_FRAME_HEADER_BYTES = 5;

export type FirstMessageResult =
  | { state: 'need-more' }
  | {
      state: 'complete';
      /** The first message's protobuf bytes (a view into `frameBytes`). */
      message: Buffer;
      /** Everything pushed so far, possibly including bytes after the first message. */
      frameBytes: Buffer;
    }
  | { state: 'error'; error: OhsError };

export class FirstMessageBuffer {
  readonly #maxBytes: number;
  readonly #chunks: Buffer[] = [];
  #buffered = 0;
  /** Payload length once the 5-byte prefix has been read. */
  #messageLength: number | undefined;
  #done = false;

  /** @param maxBytes largest first message accepted, excluding the 5-byte prefix. */
  constructor(maxBytes: number) {
    if (!Number.isInteger(maxBytes) || maxBytes < 0) {
      throw new OhsError('OHS_ERR_INTERNAL', `FirstMessageBuffer maxBytes must be a non-negative integer, got ${maxBytes}`);
    }
    this.#maxBytes = maxBytes;
  }

  /** Bytes held so far. */
  get bufferedBytes(): number {
    return this.#buffered;
  }

  /**
   * Adds the next DATA chunk. After a `complete` or `error` result the buffer is spent and further
   * pushes are a programming error.
   */
  push(chunk: Uint8Array): FirstMessageResult {
    if (this.#done) throw new OhsError('OHS_ERR_INTERNAL', 'FirstMessageBuffer.push after the first message was decided');
    if (chunk.length > 0) {
      this.#chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
      this.#buffered += chunk.length;
    }

    if (this.#messageLength === undefined) {
      if (this.#buffered < GRPC_FRAME_HEADER_BYTES) return { state: 'need-more' };
      const header = this.#coalesce().subarray(0, GRPC_FRAME_HEADER_BYTES);
      const compressed = header[0] as number;
      if (compressed !== 0) {
        // The gateway configures no compression, and the key cannot be read from compressed bytes.
        return this.#fail(
          compressed === 1
            ? 'compressed first gRPC message is not supported (the gateway configures no compression)'
            : `invalid gRPC frame compressed flag ${compressed}`,
          'OHS_ERR_MALFORMED_MESSAGE',
        );
      }
      const length = header.readUInt32BE(1);
      if (length > this.#maxBytes) {
        // Refuse at once: waiting for the bytes would let a client pin memory up to 4 GiB.
        return this.#fail(
          `first gRPC message is ${length} bytes, more than the ${this.#maxBytes}-byte limit`,
          'OHS_ERR_MESSAGE_TOO_LARGE',
          { messageBytes: length, maxBytes: this.#maxBytes },
        );
      }
      this.#messageLength = length;
    }

    const end = GRPC_FRAME_HEADER_BYTES + this.#messageLength;
    if (this.#buffered < end) return { state: 'need-more' };
    this.#done = true;
    const frameBytes = this.#coalesce();
    return { state: 'complete', message: frameBytes.subarray(GRPC_FRAME_HEADER_BYTES, end), frameBytes };
  }

  /** Joins the chunks into one buffer (once per call site that needs contiguous bytes). */
  #coalesce(): Buffer {
    if (this.#chunks.length !== 1) {
      const joined = Buffer.concat(this.#chunks, this.#buffered);
      this.#chunks.length = 0;
      this.#chunks.push(joined);
    }
    return this.#chunks[0] as Buffer;
  }

  #fail(message: string, code: 'OHS_ERR_MALFORMED_MESSAGE' | 'OHS_ERR_MESSAGE_TOO_LARGE', details?: Record<string, unknown>): FirstMessageResult {
    this.#done = true;
    // Drop the buffered bytes: they are never logged or replayed after a refusal.
    this.#chunks.length = 0;
    this.#buffered = 0;
    return { state: 'error', error: new OhsError(code, message, details === undefined ? {} : { details }) };
  }
}

/**
 * Cuts a gRPC byte stream into whole length-prefixed messages (prefix included), so a stream can
 * change upstream between two messages without a partial one reaching either side. Bounded: a
 * message larger than `maxMessageBytes` is an error (the gateway's own decode limit is 1 MiB,
 * reference §1.1).
 */
export class GrpcMessageSplitter {
  readonly #maxMessageBytes: number;
  #pending: Buffer[] = [];
  #pendingBytes = 0;

  constructor(maxMessageBytes: number) {
    this.#maxMessageBytes = maxMessageBytes;
  }

  /** Bytes held that do not yet form a whole message. */
  get bufferedBytes(): number {
    return this.#pendingBytes;
  }

  /** Adds a chunk; returns the whole messages it completed (possibly none). Throws OhsError on an oversized message. */
  push(chunk: Buffer): Buffer[] {
    if (chunk.length === 0) return [];
    this.#pending.push(chunk);
    this.#pendingBytes += chunk.length;
    const out: Buffer[] = [];
    while (this.#pendingBytes >= GRPC_FRAME_HEADER_BYTES) {
      const head = this.#peek(GRPC_FRAME_HEADER_BYTES);
      const length = head.readUInt32BE(1);
      if (length > this.#maxMessageBytes) {
        throw new OhsError('OHS_ERR_MESSAGE_TOO_LARGE', `gRPC message of ${length} bytes exceeds the ${this.#maxMessageBytes}-byte limit`);
      }
      const total = GRPC_FRAME_HEADER_BYTES + length;
      if (this.#pendingBytes < total) break;
      out.push(this.#take(total));
    }
    return out;
  }

  /** Drops a partial message (the stream it came from is abandoned). */
  reset(): void {
    this.#pending = [];
    this.#pendingBytes = 0;
  }

  #peek(n: number): Buffer {
    const first = this.#pending[0] as Buffer;
    if (first.length >= n) return first;
    const joined = Buffer.concat(this.#pending, this.#pendingBytes);
    this.#pending = [joined];
    return joined;
  }

  #take(n: number): Buffer {
    const joined = this.#peek(n);
    const msg = joined.subarray(0, n);
    const rest = joined.subarray(n);
    this.#pending = rest.length > 0 ? [rest] : [];
    this.#pendingBytes -= n;
    return msg;
  }
}
