// Fuzz: gRPC framing (src/wire/grpc-frame.ts) under arbitrary chunkings of valid and invalid
// streams. The first-message buffer must complete exactly when the first message is whole, replay
// every byte, refuse oversized or compressed first messages as soon as the prefix says so, and never
// hold more than the prefix plus the cap. The splitter must cut any stream of valid messages back
// into exactly those messages, whatever the chunk boundaries, and throw nothing but OhsError.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { OhsError } from '../../src/errors.ts';
import { FirstMessageBuffer, GRPC_FRAME_HEADER_BYTES, GrpcMessageSplitter } from '../../src/wire/grpc-frame.ts';
import { counted, FUZZ_TIMEOUT_MS, fuzzAssert, reportCounts } from './support.ts';
import { chunkings } from './proto-gen.ts';

reportCounts('grpc-frame');

function frame(body: Uint8Array, flag = 0, lengthOverride?: number): Buffer {
  const head = Buffer.alloc(GRPC_FRAME_HEADER_BYTES);
  head[0] = flag;
  head.writeUInt32BE(lengthOverride ?? body.length, 1);
  return Buffer.concat([head, Buffer.from(body)]);
}

const cap = fc.oneof(fc.integer({ min: 0, max: 64 }), fc.constant(65_536));
const body = fc.uint8Array({ maxLength: 80 });

describe('FirstMessageBuffer', () => {
  it('any chunking of a valid stream: need-more until the first message is whole, then every byte replayed', async () => {
    const input = fc
      .tuple(cap, body, fc.uint8Array({ maxLength: 40 }))
      .filter(([max, b]) => b.length <= max)
      .chain(([max, b, after]) => {
        const stream = Buffer.concat([frame(b), Buffer.from(after)]);
        return chunkings(stream).map((chunks) => ({ max, b, stream, chunks }));
      });
    await fuzzAssert(
      fc.property(input, ({ max, b, chunks }) => {
        const buf = new FirstMessageBuffer(max);
        const need = GRPC_FRAME_HEADER_BYTES + b.length;
        let pushed = 0;
        let done = false;
        for (const c of chunks) {
          if (done) break;
          pushed += c.length;
          const r = buf.push(c);
          if (pushed < need) {
            expect(r).toEqual({ state: 'need-more' });
            expect(buf.bufferedBytes).toBe(pushed);
            // Never holds more than the prefix plus the cap while waiting.
            expect(buf.bufferedBytes).toBeLessThan(GRPC_FRAME_HEADER_BYTES + max + 1);
            continue;
          }
          expect(r.state).toBe('complete');
          if (r.state !== 'complete') return;
          expect(Buffer.from(r.message).equals(Buffer.from(b))).toBe(true);
          expect(r.frameBytes.equals(Buffer.concat(chunks).subarray(0, pushed))).toBe(true);
          expect(() => buf.push(Buffer.alloc(1))).toThrow(OhsError);
          done = true;
        }
        counted('FirstMessageBuffer valid stream', done ? 'complete' : 'need-more');
        expect(done).toBe(pushed >= need);
      }),
    );
  }, FUZZ_TIMEOUT_MS);

  it('a lying or oversized length prefix, or a compressed flag, is refused at the prefix and drops what it held', async () => {
    const input = fc
      .tuple(
        cap,
        fc.oneof({ weight: 3, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.constant(1) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }) }),
        fc.oneof(fc.nat({ max: 100 }), fc.constant(0xffffffff), fc.integer({ min: 0, max: 0xffffffff }), fc.constant(65_537)),
        fc.uint8Array({ maxLength: 60 }),
      )
      .chain(([max, flag, len, b]) => chunkings(frame(b, flag, len)).map((chunks) => ({ max, flag, len, b, chunks })));
    await fuzzAssert(
      fc.property(input, ({ max, flag, len, b, chunks }) => {
        const buf = new FirstMessageBuffer(max);
        let pushed = 0;
        let outcome = 'need-more';
        for (const c of chunks) {
          pushed += c.length;
          const r = buf.push(c);
          if (r.state === 'need-more') {
            expect(buf.bufferedBytes).toBe(pushed);
            expect(buf.bufferedBytes).toBeLessThan(GRPC_FRAME_HEADER_BYTES + max + 1 + c.length);
            continue;
          }
          expect(pushed).toBeGreaterThanOrEqual(GRPC_FRAME_HEADER_BYTES);
          if (flag !== 0) {
            expect(r.state).toBe('error');
            if (r.state === 'error') expect(r.error.code).toBe('OHS_ERR_MALFORMED_MESSAGE');
          } else if (len > max) {
            expect(r.state).toBe('error');
            if (r.state === 'error') expect(r.error.code).toBe('OHS_ERR_MESSAGE_TOO_LARGE');
          } else {
            expect(r.state).toBe('complete');
            expect(pushed).toBeGreaterThanOrEqual(GRPC_FRAME_HEADER_BYTES + len);
          }
          if (r.state === 'error') {
            // Refused as soon as the 5-byte prefix is there: no waiting for the claimed bytes.
            expect(pushed - c.length).toBeLessThan(GRPC_FRAME_HEADER_BYTES);
            expect(buf.bufferedBytes).toBe(0);
          }
          outcome = r.state === 'error' ? r.error.code : r.state;
          break;
        }
        if (outcome === 'need-more') expect(flag === 0 && len <= max && pushed < GRPC_FRAME_HEADER_BYTES + len).toBe(true);
        counted('FirstMessageBuffer lying/oversized prefix', outcome);
        void b;
      }),
    );
  }, FUZZ_TIMEOUT_MS);
});

describe('GrpcMessageSplitter', () => {
  it('any chunking of valid messages yields exactly those messages, in order, and holds only a partial one', async () => {
    const input = fc
      .tuple(fc.integer({ min: 0, max: 100 }), fc.array(body, { maxLength: 8 }))
      .map(([max, bodies]) => ({ max, bodies: bodies.filter((x) => x.length <= max) }))
      .chain(({ max, bodies }) => {
        const frames = bodies.map((x) => frame(x));
        return chunkings(Buffer.concat(frames)).map((chunks) => ({ max, frames, chunks }));
      });
    await fuzzAssert(
      fc.property(input, ({ max, frames, chunks }) => {
        const s = new GrpcMessageSplitter(max);
        const out: Buffer[] = [];
        for (const c of chunks) {
          out.push(...s.push(c));
          expect(s.bufferedBytes).toBeLessThan(GRPC_FRAME_HEADER_BYTES + max + 1);
        }
        counted('GrpcMessageSplitter valid stream', `${Math.min(frames.length, 3)}${frames.length >= 3 ? '+' : ''} messages`);
        expect(out.map((m) => m.toString('hex'))).toEqual(frames.map((f) => f.toString('hex')));
        expect(s.bufferedBytes).toBe(0);
      }),
    );
  }, FUZZ_TIMEOUT_MS);

  it('arbitrary bytes: only OhsError, every message out is whole, and bytes out + held = bytes in', async () => {
    // Random bytes, and frames whose length prefixes lie (claim more or less than follows).
    const lying = fc
      .array(fc.tuple(fc.uint8Array({ maxLength: 30 }), fc.integer({ min: -3, max: 3 }), fc.integer({ min: 0, max: 255 })), { maxLength: 6 })
      .chain((frames) =>
        chunkings(Buffer.concat(frames.map(([b, lie, flag]) => frame(b, flag % 3 === 0 ? flag : 0, Math.max(0, b.length + lie))))),
      );
    const input = fc.tuple(fc.integer({ min: 0, max: 100 }), fc.oneof(fc.array(fc.uint8Array({ maxLength: 40 }), { maxLength: 10 }), lying));
    await fuzzAssert(
      fc.property(input, ([max, chunks]) => {
        const s = new GrpcMessageSplitter(max);
        let inBytes = 0;
        let outBytes = 0;
        let outcome = 'ok';
        for (const c of chunks) {
          inBytes += c.length;
          let msgs: Buffer[];
          try {
            msgs = s.push(Buffer.from(c));
          } catch (err) {
            expect(err).toBeInstanceOf(OhsError);
            expect((err as OhsError).code).toBe('OHS_ERR_MESSAGE_TOO_LARGE');
            outcome = 'too-large';
            break;
          }
          for (const m of msgs) {
            expect(m.length).toBeGreaterThanOrEqual(GRPC_FRAME_HEADER_BYTES);
            expect(m.readUInt32BE(1)).toBe(m.length - GRPC_FRAME_HEADER_BYTES);
            expect(m.length - GRPC_FRAME_HEADER_BYTES).toBeLessThanOrEqual(max);
            outBytes += m.length;
          }
          expect(outBytes + s.bufferedBytes).toBe(inBytes);
          expect(s.bufferedBytes).toBeLessThan(GRPC_FRAME_HEADER_BYTES + max + 1);
        }
        counted('GrpcMessageSplitter arbitrary bytes', outcome);
        s.reset();
        expect(s.bufferedBytes).toBe(0);
      }),
    );
  }, FUZZ_TIMEOUT_MS);
});
