// Fuzz: readers of the gateway's prost-encoded `objects` payloads and watch messages
// (src/wire/gateway-payloads.ts). Payloads built field by field (any order, unknown fields,
// repeated and merged embedded messages, both gateway layouts) must read back as protobuf defines
// them; two encodings of one sandbox state must give one signature; statusEventFrame must round-trip;
// arbitrary bytes may only throw an Error (the callers catch it), never hang or return garbage types.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  sandboxPayloadPhase,
  sandboxSignature,
  serviceEndpointSandboxId,
  sshSessionPayload,
  sshSessionValidFor,
  statusEventFrame,
  streamEventSandbox,
  watchRequestFlags,
} from '../../src/wire/gateway-payloads.ts';
import { counted, FUZZ_TIMEOUT_MS, fuzzAssert, reportCounts } from './support.ts';
import { anyText, encode, msg, mutated, scattered, str, unknownEntry, utf8, vint, type Entry } from './proto-gen.ts';

reportCounts('gateway-payloads');

const u64 = fc.oneof(
  fc.constantFrom(0n, 1n, 2n, 3n, 4n, 5n),
  fc.integer({ min: -5, max: 2 ** 31 - 1 }).map((n) => BigInt.asUintN(64, BigInt(n))),
  fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
);
const int32Of = (v: bigint): number => Number(BigInt.asIntN(32, v));

type PhaseOcc = { seed: bigint } | { status: Array<{ phase: bigint } | Entry> };

/** A Sandbox payload in either layout, with the phase protobuf gives it. */
const sandboxPayload = fc
  .array(
    fc.oneof(
      { weight: 1, arbitrary: u64.map((v): PhaseOcc => ({ seed: v })) },
      { weight: 2, arbitrary: fc.array(u64.map((v) => ({ phase: v })), { maxLength: 2 }).chain((ph) => scattered<{ phase: bigint } | Entry>(ph, unknownEntry([6]), 3)).map((status): PhaseOcc => ({ status })) },
    ),
    { maxLength: 4 },
  )
  .chain((occs) => scattered<PhaseOcc | Entry>(occs, unknownEntry([3, 4]), 4))
  .map((all) => {
    let seed: number | undefined;
    let head: number | undefined;
    const entries = all.map((x): Entry => {
      if ('seed' in x) {
        seed = int32Of(x.seed);
        return vint(4, x.seed);
      }
      if ('status' in x) {
        return msg(
          3,
          x.status.map((s): Entry => {
            if ('phase' in s) {
              head = int32Of(s.phase);
              return vint(6, s.phase);
            }
            return s;
          }),
        );
      }
      return x;
    });
    const expected = seed !== undefined ? { phase: seed, layout: 'seed' } : head !== undefined ? { phase: head, layout: 'head' } : { phase: 0, layout: 'unknown' };
    return { bytes: encode(entries), expected };
  });

describe('Sandbox payloads', () => {
  it('the phase is read from either layout as protobuf defines it (seed field wins, last value wins, statuses merge)', async () => {
    await fuzzAssert(
      fc.property(sandboxPayload, ({ bytes, expected }) => {
        const got = sandboxPayloadPhase(bytes);
        counted('sandboxPayloadPhase', got.layout);
        expect(got).toEqual(expected);
      }),
    );
  }, FUZZ_TIMEOUT_MS);

  it('two encodings of one state (phase, resource_version) give one signature, and it names that state', async () => {
    const state = fc.record({ phase: fc.integer({ min: 0, max: 6 }), version: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) });
    const encoding = (s: { phase: number; version: bigint }): fc.Arbitrary<Buffer> =>
      fc
        .tuple(
          scattered<Entry>([vint(5, s.version)], unknownEntry([5]), 3),
          scattered<Entry>(s.phase === 0 ? [] : [vint(6, BigInt(s.phase))], unknownEntry([6]), 3),
          fc.boolean(),
        )
        .chain(([meta, status, statusFirst]) => {
          const known = statusFirst ? [msg(3, status), msg(1, meta)] : [msg(1, meta), msg(3, status)];
          return scattered<Entry>(known, unknownEntry([1, 3, 4]), 3).map(encode);
        });
    await fuzzAssert(
      fc.property(state.chain((s) => fc.tuple(fc.constant(s), encoding(s), encoding(s))), ([s, a, b]) => {
        counted('sandboxSignature', s.phase === 2 ? 'ready' : 'other-phase');
        expect(sandboxSignature(a)).toBe(sandboxSignature(b));
        expect(sandboxSignature(a)).toBe(`${s.phase}:${s.version}`);
      }),
    );
  }, FUZZ_TIMEOUT_MS);
});

describe('ssh_session, service_endpoint and watch payloads', () => {
  it('SshSession fields read back (last occurrence wins) and the validity rule is the gateway\'s', async () => {
    type Occ = { id: string } | { exp: bigint } | { revoked: bigint };
    const occ: fc.Arbitrary<Occ> = fc.oneof(
      fc.oneof(fc.uuid(), anyText).map((id) => ({ id })),
      fc.oneof(fc.integer({ min: 0, max: 4_000_000_000_000 }).map(BigInt), u64).map((exp) => ({ exp })),
      fc.constantFrom(0n, 1n, 7n, 1n << 40n).map((revoked) => ({ revoked })),
    );
    const input = fc.tuple(fc.array(occ, { maxLength: 6 }).chain((o) => scattered<Occ | Entry>(o, unknownEntry([2, 4, 5]), 4)), fc.uuid(), fc.integer({ min: 0, max: 4_000_000_000_000 }), fc.boolean());
    await fuzzAssert(
      fc.property(input, ([all, askedFor, nowMs, askOwn]) => {
        const want = { sandboxId: '', expiresAtMs: 0, revoked: false };
        const entries = all.map((x): Entry => {
          if ('id' in x) {
            want.sandboxId = utf8(x.id);
            return str(2, x.id);
          }
          if ('exp' in x) {
            want.expiresAtMs = Number(BigInt.asIntN(64, x.exp));
            return vint(4, x.exp);
          }
          if ('revoked' in x) {
            want.revoked = x.revoked !== 0n;
            return vint(5, x.revoked);
          }
          return x;
        });
        const got = sshSessionPayload(encode(entries));
        expect(got).toEqual(want);
        const sandbox = askOwn ? got.sandboxId : askedFor;
        const valid = sshSessionValidFor(got, sandbox, nowMs);
        counted('sshSessionPayload/sshSessionValidFor', valid ? 'valid' : 'refused');
        expect(valid).toBe(!got.revoked && got.sandboxId === sandbox && (got.expiresAtMs <= 0 || nowMs <= got.expiresAtMs));
      }),
    );
  }, FUZZ_TIMEOUT_MS);

  it('ServiceEndpoint.sandbox_id and WatchSandboxRequest flags read back (last occurrence wins)', async () => {
    type Occ = { id: string } | { follow: bigint } | { stop: bigint };
    const occ: fc.Arbitrary<Occ> = fc.oneof(
      fc.oneof(fc.uuid(), anyText).map((id) => ({ id })),
      u64.map((follow) => ({ follow })),
      u64.map((stop) => ({ stop })),
    );
    await fuzzAssert(
      fc.property(fc.array(occ, { maxLength: 6 }).chain((o) => scattered<Occ | Entry>(o, unknownEntry([2, 7]), 4)), (all) => {
        let id = '';
        const flags = { followStatus: false, stopOnTerminal: false };
        const endpoint: Entry[] = [];
        const watch: Entry[] = [];
        for (const x of all) {
          if ('id' in x) {
            id = utf8(x.id);
            endpoint.push(str(2, x.id));
          } else if ('follow' in x) {
            flags.followStatus = x.follow !== 0n;
            watch.push(vint(2, x.follow));
          } else if ('stop' in x) {
            flags.stopOnTerminal = x.stop !== 0n;
            watch.push(vint(7, x.stop));
          } else {
            endpoint.push(x);
            watch.push(x);
          }
        }
        counted('serviceEndpointSandboxId/watchRequestFlags', `${id === '' ? 'no-id' : 'id'}${flags.followStatus ? '+follow' : ''}`);
        expect(serviceEndpointSandboxId(encode(endpoint))).toBe(id);
        expect(watchRequestFlags(encode(watch))).toEqual(flags);
      }),
    );
  }, FUZZ_TIMEOUT_MS);

  it('statusEventFrame round-trips through streamEventSandbox and frames its length correctly', async () => {
    // Large payloads (3-byte length varints) are built from a few random bytes: generating 20,000
    // elements one by one would cost more than the property.
    const large = fc
      .tuple(fc.integer({ min: 16_000, max: 20_000 }), fc.uint8Array({ minLength: 1, maxLength: 16 }), fc.nat())
      .map(([n, bytes, at]) => {
        const b = Buffer.alloc(n, bytes[0]);
        Buffer.from(bytes).copy(b, at % (n - bytes.length));
        return new Uint8Array(b);
      });
    const sandbox = fc.oneof({ weight: 9, arbitrary: fc.uint8Array({ maxLength: 400 }) }, { weight: 1, arbitrary: large });
    await fuzzAssert(
      fc.property(sandbox, (sb) => {
        const f = statusEventFrame(sb);
        counted('statusEventFrame/streamEventSandbox', sb.length < 128 ? 'short' : 'long');
        expect(f[0]).toBe(0);
        expect(f.readUInt32BE(1)).toBe(f.length - 5);
        expect(Buffer.from(streamEventSandbox(f.subarray(5)) ?? []).equals(Buffer.from(sb))).toBe(true);
      }),
    );
  }, FUZZ_TIMEOUT_MS);

  it('streamEventSandbox follows the oneof: a later log, event or warning member means no sandbox', async () => {
    type Member = { f: 1 | 2 | 3 | 4; b: Uint8Array };
    const member = fc.record({ f: fc.constantFrom(1, 2, 3, 4) as fc.Arbitrary<1 | 2 | 3 | 4>, b: fc.uint8Array({ maxLength: 20 }) });
    await fuzzAssert(
      fc.property(fc.array(member, { maxLength: 3 }).chain((m) => scattered<Member | Entry>(m, unknownEntry([1, 2, 3, 4]), 3)), (all) => {
        let last: Member | undefined;
        const entries = all.map((x): Entry => {
          if ('wt' in x) return x;
          last = x;
          return { f: x.f, wt: 2, b: x.b };
        });
        const got = streamEventSandbox(encode(entries));
        counted('streamEventSandbox oneof', got ? 'sandbox' : 'other');
        if (last?.f === 1) expect(Buffer.from(got ?? []).equals(Buffer.from(last.b))).toBe(true);
        else expect(got).toBeUndefined();
      }),
    );
  }, FUZZ_TIMEOUT_MS);
});

describe('arbitrary bytes', () => {
  it('every reader returns well-typed values or throws an Error (never anything else)', async () => {
    const bytes = fc.oneof(fc.uint8Array({ maxLength: 64 }), sandboxPayload.chain((p) => mutated(p.bytes)));
    await fuzzAssert(
      fc.property(bytes, (b) => {
        let threw = 0;
        const attempt = (fn: () => void): void => {
          try {
            fn();
          } catch (err) {
            expect(err).toBeInstanceOf(Error);
            threw++;
          }
        };
        attempt(() => {
          const p = sandboxPayloadPhase(b);
          expect(Number.isInteger(p.phase)).toBe(true);
        });
        attempt(() => expect(sandboxSignature(b)).toMatch(/^-?\d+:\d*$/));
        attempt(() => {
          const s = sshSessionPayload(b);
          expect(typeof s.sandboxId).toBe('string');
          expect(typeof s.expiresAtMs).toBe('number');
          expect(typeof s.revoked).toBe('boolean');
        });
        attempt(() => expect(typeof serviceEndpointSandboxId(b)).toBe('string'));
        attempt(() => expect(Object.keys(watchRequestFlags(b)).sort()).toEqual(['followStatus', 'stopOnTerminal']));
        attempt(() => {
          const sb = streamEventSandbox(b);
          if (sb !== undefined) expect(sb).toBeInstanceOf(Uint8Array);
        });
        counted('payload readers on arbitrary bytes', threw === 0 ? 'all-returned' : threw === 6 ? 'all-threw' : 'some-threw');
      }),
    );
  }, FUZZ_TIMEOUT_MS);
});
