// A small, independent protobuf wire *writer* and fast-check generators for messages described
// field by field. The fuzz targets build messages here and compare what the sidecar's readers (a
// different implementation: @bufbuild/protobuf's BinaryReader) make of them with what protobuf's
// own rules say the message means.
import fc from 'fast-check';

export const WT_VARINT = 0;
export const WT_FIXED64 = 1;
export const WT_LEN = 2;
export const WT_START_GROUP = 3;
export const WT_END_GROUP = 4;
export const WT_FIXED32 = 5;

/** Largest field number protobuf allows (2^29 - 1). */
export const MAX_FIELD_NO = 536_870_911;

export type Entry =
  | { f: number; wt: 0; v: bigint }
  | { f: number; wt: 1; b: Uint8Array }
  | { f: number; wt: 2; b: Uint8Array; pad?: number }
  | { f: number; wt: 3; group: Entry[] }
  | { f: number; wt: 5; b: Uint8Array };

/**
 * Varint of `n` (unsigned, up to 64 bits). `pad` adds that many redundant continuation bytes (a
 * non-canonical but valid encoding that prost and every conforming reader accept), at most 10
 * bytes in all.
 */
export function varint(n: bigint, pad = 0): Buffer {
  const out: number[] = [];
  let v = BigInt.asUintN(64, n);
  while (v > 0x7fn) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
  for (let i = 0; i < pad && out.length < 10; i++) {
    out[out.length - 1] = (out[out.length - 1] as number) | 0x80;
    out.push(0);
  }
  return Buffer.from(out);
}

export function tag(f: number, wt: number): Buffer {
  return varint((BigInt(f) << 3n) | BigInt(wt));
}

export function encode(entries: readonly Entry[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    parts.push(tag(e.f, e.wt));
    switch (e.wt) {
      case 0:
        parts.push(varint(e.v));
        break;
      case 1:
      case 5:
        parts.push(Buffer.from(e.b));
        break;
      case 2:
        parts.push(varint(BigInt(e.b.length), e.pad ?? 0), Buffer.from(e.b));
        break;
      case 3:
        parts.push(encode(e.group), tag(e.f, WT_END_GROUP));
        break;
    }
  }
  return Buffer.concat(parts);
}

export const str = (f: number, s: string, pad = 0): Entry => ({ f, wt: 2, b: Buffer.from(s, 'utf8'), pad });
export const msg = (f: number, inner: readonly Entry[], pad = 0): Entry => ({ f, wt: 2, b: encode(inner), pad });
export const vint = (f: number, v: bigint): Entry => ({ f, wt: 0, v });

/** What a string field decodes to: its UTF-8 round trip (a lone surrogate becomes U+FFFD on both sides). */
export const utf8 = (s: string): string => Buffer.from(s, 'utf8').toString('utf8');

const anyFieldNo = fc.oneof(fc.integer({ min: 1, max: 40 }), fc.integer({ min: 1, max: MAX_FIELD_NO }));

/** A field number outside `excluded` (valid: 1 .. 2^29-1). */
export function fieldNoExcept(excluded: readonly number[]): fc.Arbitrary<number> {
  return anyFieldNo.filter((f) => !excluded.includes(f));
}

/** An unknown field of any wire type (groups nested a little), with a field number outside `excluded`. */
export function unknownEntry(excluded: readonly number[], depth = 2): fc.Arbitrary<Entry> {
  const f = fieldNoExcept(excluded);
  const leaves: Array<fc.Arbitrary<Entry>> = [
    fc.record({ f, wt: fc.constant(0 as const), v: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) }),
    fc.record({ f, wt: fc.constant(1 as const), b: fc.uint8Array({ minLength: 8, maxLength: 8 }) }),
    fc.record({ f, wt: fc.constant(5 as const), b: fc.uint8Array({ minLength: 4, maxLength: 4 }) }),
    fc.record({ f, wt: fc.constant(2 as const), b: fc.uint8Array({ maxLength: 24 }), pad: fc.integer({ min: 0, max: 3 }) }),
  ];
  if (depth > 0) {
    // Inside a group any field number is fine: the whole group is skipped.
    leaves.push(fc.record({ f, wt: fc.constant(3 as const), group: fc.array(unknownEntry([], depth - 1), { maxLength: 3 }) }));
  }
  return fc.oneof(...leaves);
}

/** Strings that look like sandbox ids and some that must be refused. */
export const idLike: fc.Arbitrary<string> = fc.oneof(
  { weight: 4, arbitrary: fc.uuid() },
  { weight: 4, arbitrary: fc.stringMatching(/^[A-Za-z0-9._-]{1,128}$/) },
  { weight: 1, arbitrary: fc.constant('') },
  { weight: 1, arbitrary: fc.stringMatching(/^[A-Za-z0-9._-]{129,140}$/) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'grapheme-ascii', maxLength: 40 }) },
);

/** Any string, including non-ASCII and empty. */
export const anyText: fc.Arbitrary<string> = fc.oneof(fc.string({ maxLength: 40 }), fc.string({ unit: 'binary', maxLength: 40 }), fc.uuid());

/** `known` in order, with up to `maxExtra` entries from `extra` scattered before, between and after them. */
export function scattered<T>(known: readonly T[], extra: fc.Arbitrary<T>, maxExtra = 6): fc.Arbitrary<T[]> {
  return fc.array(fc.tuple(extra, fc.nat({ max: known.length })), { maxLength: maxExtra }).map((extras) => {
    const buckets: T[][] = Array.from({ length: known.length + 1 }, () => []);
    for (const [e, slot] of extras) (buckets[slot] as T[]).push(e);
    const out: T[] = [];
    for (let i = 0; i <= known.length; i++) {
      out.push(...(buckets[i] as T[]));
      if (i < known.length) out.push(known[i] as T);
    }
    return out;
  });
}

/** Random splits of `bytes` into consecutive chunks (empty chunks included). */
export function chunkings(bytes: Uint8Array): fc.Arbitrary<Buffer[]> {
  return fc.array(fc.integer({ min: 0, max: bytes.length }), { maxLength: 12 }).map((cuts) => {
    const sorted = [...cuts].sort((a, b) => a - b);
    const out: Buffer[] = [];
    let prev = 0;
    for (const c of sorted) {
      out.push(Buffer.from(bytes.subarray(prev, c)));
      prev = c;
    }
    out.push(Buffer.from(bytes.subarray(prev)));
    return out;
  });
}

/** `haystack` contains `needle` as a contiguous byte run. */
export function containsBytes(haystack: Uint8Array, needle: Uint8Array): boolean {
  return Buffer.from(haystack).indexOf(Buffer.from(needle)) >= 0;
}

/** Mutations of a valid encoding: bit flips, truncation, insertion, deletion. */
export function mutated(base: Uint8Array): fc.Arbitrary<Buffer> {
  const b = Buffer.from(base);
  return fc.oneof(
    fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 7 })), { minLength: 1, maxLength: 4 }).map((flips) => {
      const out = Buffer.from(b);
      if (out.length === 0) return out;
      for (const [at, bit] of flips) out[at % out.length] = (out[at % out.length] as number) ^ (1 << bit);
      return out;
    }),
    fc.nat().map((n) => b.subarray(0, b.length === 0 ? 0 : n % b.length)),
    fc.tuple(fc.nat(), fc.uint8Array({ minLength: 1, maxLength: 8 })).map(([at, ins]) => {
      const p = b.length === 0 ? 0 : at % (b.length + 1);
      return Buffer.concat([b.subarray(0, p), Buffer.from(ins), b.subarray(p)]);
    }),
    fc.tuple(fc.nat(), fc.integer({ min: 1, max: 6 })).map(([at, n]) => {
      const p = b.length === 0 ? 0 : at % b.length;
      return Buffer.concat([b.subarray(0, p), b.subarray(p + n)]);
    }),
  );
}
