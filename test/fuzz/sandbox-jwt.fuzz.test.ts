// Fuzz: the pure parts of sandbox JWT checking (src/auth/sandbox-jwt.ts). checkSandboxClaims must
// accept exactly the gateway's rules (sub, iss prefix and pin, aud containing iss, finite exp with
// 60 s leeway or 0, non-empty sandbox_id) for claims of any shape, and never throw; bearerToken must
// extract exactly the token of a `Bearer ` value and nothing from anything else.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { bearerToken, checkSandboxClaims } from '../../src/auth/sandbox-jwt.ts';
import { counted, FUZZ_TIMEOUT_MS, fuzzAssert, reportCounts } from './support.ts';

reportCounts('sandbox-jwt');

const NOW = 1_800_000_000;
const junk = fc.oneof(fc.constant(undefined), fc.constant(null), fc.boolean(), fc.double(), fc.integer(), fc.string({ maxLength: 8 }), fc.array(fc.string({ maxLength: 4 }), { maxLength: 2 }), fc.object({ maxDepth: 1 }));
const gatewayIss = fc.oneof(fc.constant('openshell-gateway:gw-1'), fc.stringMatching(/^openshell-gateway:[a-z0-9-]{0,8}$/));
const iss = fc.oneof({ weight: 4, arbitrary: gatewayIss }, { weight: 1, arbitrary: fc.constantFrom('openshell-gateway', 'OPENSHELL-GATEWAY:gw-1', ' openshell-gateway:gw-1', 'evil') }, { weight: 1, arbitrary: junk });

const claims = iss.chain((i) =>
  fc.record(
    {
      sub: fc.oneof({ weight: 4, arbitrary: fc.constantFrom('sandbox', 'x') }, { weight: 1, arbitrary: fc.constant('') }, { weight: 1, arbitrary: junk }),
      iss: fc.constant(i),
      aud: fc.oneof(
        { weight: 3, arbitrary: fc.constant(i) },
        { weight: 2, arbitrary: fc.array(fc.oneof(fc.constant(i), gatewayIss, junk), { maxLength: 3 }) },
        { weight: 1, arbitrary: junk },
      ),
      exp: fc.oneof(
        fc.constant(0),
        fc.integer({ min: NOW - 200, max: NOW + 200 }),
        fc.constantFrom(NOW - 60, NOW - 61, NOW - 59, Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, -1),
        fc.double(),
        junk,
      ),
      sandbox_id: fc.oneof({ weight: 4, arbitrary: fc.uuid() }, { weight: 1, arbitrary: fc.constant('') }, { weight: 1, arbitrary: junk }),
    },
    // Mostly all claims present (junk includes undefined), sometimes some missing.
    { requiredKeys: ['sub', 'iss', 'aud', 'exp', 'sandbox_id'] },
  ).chain((c) => fc.oneof({ weight: 5, arbitrary: fc.constant([] as string[]) }, { weight: 1, arbitrary: fc.subarray(Object.keys(c), { maxLength: 1 }) }).map((drop) => Object.fromEntries(Object.entries(c).filter(([k]) => !drop.includes(k))))),
);

/** The gateway's claim rules, stated independently. */
function model(c: Record<string, unknown>, now: number, pin: string | undefined): string | undefined {
  if (typeof c.sub !== 'string' || c.sub.length === 0) return undefined;
  if (typeof c.iss !== 'string' || c.iss.indexOf('openshell-gateway:') !== 0) return undefined;
  if (pin !== undefined && pin !== c.iss) return undefined;
  const aud: unknown[] = Array.isArray(c.aud) ? c.aud : [c.aud];
  if (!aud.some((a) => a === c.iss)) return undefined;
  if (typeof c.exp !== 'number' || Number.isNaN(c.exp) || Math.abs(c.exp) === Infinity) return undefined;
  if (c.exp !== 0 && c.exp + 60 < now) return undefined;
  if (typeof c.sandbox_id !== 'string' || c.sandbox_id.length === 0) return undefined;
  return c.sandbox_id;
}

describe('checkSandboxClaims', () => {
  it('accepts exactly the claims the gateway accepts, for claims of any shape, and never throws', async () => {
    const pin = fc.option(fc.constantFrom('openshell-gateway:gw-1', 'openshell-gateway:other'), { nil: undefined, freq: 2 });
    await fuzzAssert(
      fc.property(claims, fc.integer({ min: NOW - 100, max: NOW + 100 }), pin, (c, now, p) => {
        const got = checkSandboxClaims(c, now, p);
        const want = model(c, now, p);
        counted('checkSandboxClaims', got.ok ? 'accepted' : got.reason);
        if (want === undefined) expect(got.ok).toBe(false);
        else expect(got).toEqual({ ok: true, sandboxId: want });
      }),
    );
  }, FUZZ_TIMEOUT_MS);
});

describe('bearerToken', () => {
  const token = fc.stringMatching(/^[A-Za-z0-9_.-]{1,60}$/);
  const value = fc.oneof(
    token.map((t) => `Bearer ${t}`),
    fc.tuple(token, fc.constantFrom(' ', '  ', '\t', '')).map(([t, ws]) => `Bearer ${ws}${t}${ws}`),
    token.map((t) => `bearer ${t}`),
    token.map((t) => `Bearer\t${t}`),
    token.map((t) => `Basic ${t}`),
    fc.constantFrom('Bearer', 'Bearer ', 'Bearer    ', ''),
    fc.string({ maxLength: 30 }),
  );
  const header = fc.oneof(fc.constant(undefined), value, fc.array(value, { maxLength: 3 }));

  it('extracts the token of the first value when it is `Bearer <token>`, and nothing otherwise', async () => {
    await fuzzAssert(
      fc.property(header, (h) => {
        const got = bearerToken(h);
        counted('bearerToken', got === undefined ? 'none' : 'token');
        const first = Array.isArray(h) ? h[0] : h;
        if (typeof first !== 'string' || !first.startsWith('Bearer ') || first.slice(7).trim() === '') {
          expect(got).toBeUndefined();
          return;
        }
        expect(got).toBe(first.slice(7).trim());
        expect(got).toBe(got?.trim());
        expect(got).not.toBe('');
        // Round trip: the value it came from, re-made from the token, gives the token again.
        expect(bearerToken(`Bearer ${got}`)).toBe(got);
      }),
    );
  }, FUZZ_TIMEOUT_MS);
});
