// The sidecar's own check of a supervisor's sandbox JWT against the keys its local gateway
// publishes (reference §2.1 HEAD). A real HTTP server serves the JWKS; tokens are signed with jose.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { SignJWT, exportJWK, generateKeyPair, type CryptoKey, type JWK } from 'jose';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkSandboxClaims, createSandboxJwtVerifier, type SandboxJwtVerifier } from '../../../src/auth/sandbox-jwt.ts';

const KID = 'k1';
const ISS = 'openshell-gateway:openshell';
const SANDBOX = '3f2b8c1e-9a4d-4e7f-b6a2-5c0d1e2f3a4b';

let server: http.Server;
let origin: string;
let jwksBody: { keys: JWK[] } | null;
let jwksRequests = 0;
let signing: CryptoKey;
let otherKey: CryptoKey;
let verifier: SandboxJwtVerifier;

async function mint(opts: { key?: CryptoKey; kid?: string; typ?: string; claims?: Record<string, unknown>; exp?: number } = {}): Promise<string> {
  const nowSecs = Math.floor(Date.now() / 1000);
  const jwt = new SignJWT({ sandbox_id: SANDBOX, ...opts.claims })
    .setProtectedHeader({ alg: 'EdDSA', kid: opts.kid ?? KID, ...(opts.typ ? { typ: opts.typ } : {}) })
    .setSubject(`spiffe://openshell/sandbox/${SANDBOX}`)
    .setIssuer(ISS)
    .setAudience(ISS)
    .setIssuedAt(nowSecs)
    .setExpirationTime(opts.exp ?? nowSecs + 3600);
  return jwt.sign(opts.key ?? signing);
}

beforeAll(async () => {
  const pair = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
  signing = pair.privateKey;
  otherKey = (await generateKeyPair('EdDSA', { crv: 'Ed25519' })).privateKey;
  jwksBody = { keys: [{ ...(await exportJWK(pair.publicKey)), kid: KID, alg: 'EdDSA', use: 'sig' }] };
  server = http.createServer((req, res) => {
    if (req.url === '/.well-known/jwks.json' && jwksBody) {
      jwksRequests++;
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(jwksBody));
    } else res.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  verifier = createSandboxJwtVerifier({ gatewayOrigin: origin, logger: pino({ level: 'silent' }), cooldownMs: 0 });
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

describe('sandbox JWT verification', () => {
  it('accepts a token the gateway minted and names its sandbox', async () => {
    expect(await verifier.verify(`Bearer ${await mint()}`)).toEqual({ kind: 'verified', sandboxId: SANDBOX });
    expect(await verifier.gatewayIssuesJwts()).toBe(true);
  });

  it('accepts exp = 0 (never expires) and an exp within the 60 s leeway', async () => {
    expect((await verifier.verify(`Bearer ${await mint({ exp: 0 })}`)).kind).toBe('verified');
    expect((await verifier.verify(`Bearer ${await mint({ exp: Math.floor(Date.now() / 1000) - 30 })}`)).kind).toBe('verified');
  });

  it('reports a missing or non-Bearer header as absent', async () => {
    expect(await verifier.verify(undefined)).toEqual({ kind: 'absent' });
    expect(await verifier.verify('Basic abc')).toEqual({ kind: 'absent' });
    expect(await verifier.verify('Bearer ')).toEqual({ kind: 'absent' });
  });

  it.each([
    ['signed by another key with the same kid', async () => mint({ key: otherKey })],
    ['with a kid the gateway does not publish', async () => mint({ kid: 'nope' })],
    ['an extension token', async () => mint({ typ: 'openshell-ext+jwt' })],
    ['expired beyond the leeway', async () => mint({ exp: Math.floor(Date.now() / 1000) - 120 })],
    ['without a sandbox_id', async () => mint({ claims: { sandbox_id: '' } })],
    ['garbage', async () => 'not.a.jwt'],
    ['unsigned (alg none)', async () => `${Buffer.from('{"alg":"none","kid":"k1"}').toString('base64url')}.${Buffer.from('{}').toString('base64url')}.`],
  ])('refuses a token %s', async (_what, make) => {
    expect((await verifier.verify(`Bearer ${await make()}`)).kind).toBe('invalid');
  });

  it('refuses an issuer other than the configured one', async () => {
    const strict = createSandboxJwtVerifier({ gatewayOrigin: origin, issuer: 'openshell-gateway:other', logger: pino({ level: 'silent' }) });
    expect(await strict.verify(`Bearer ${await mint()}`)).toEqual({ kind: 'invalid', reason: 'unexpected iss' });
  });

  it('a gateway that publishes no keys (seed) makes every token unverifiable, not valid', async () => {
    const saved = jwksBody;
    jwksBody = null;
    try {
      const seed = createSandboxJwtVerifier({ gatewayOrigin: origin, logger: pino({ level: 'silent' }) });
      expect(await seed.gatewayIssuesJwts()).toBe(false);
      expect((await seed.verify(`Bearer ${await mint()}`)).kind).toBe('unavailable');
    } finally {
      jwksBody = saved;
    }
  });

  it('an unreachable gateway makes tokens unverifiable', async () => {
    const down = createSandboxJwtVerifier({ gatewayOrigin: 'http://127.0.0.1:1', logger: pino({ level: 'silent' }), timeoutMs: 500 });
    expect((await down.verify(`Bearer ${await mint()}`)).kind).toBe('unavailable');
    expect(await down.gatewayIssuesJwts()).toBeUndefined();
  });

  it('keys are cached: many verifications fetch the key set once', async () => {
    const cached = createSandboxJwtVerifier({ gatewayOrigin: origin, logger: pino({ level: 'silent' }) });
    const before = jwksRequests;
    const token = `Bearer ${await mint()}`;
    for (let i = 0; i < 20; i++) expect((await cached.verify(token)).kind).toBe('verified');
    expect(jwksRequests - before).toBe(1);
  });

  it('a rotated key: a token with a kid not in the cached set fetches the set again and verifies; forged kids wait for the cooldown', async () => {
    const rotating = createSandboxJwtVerifier({ gatewayOrigin: origin, logger: pino({ level: 'silent' }), cooldownMs: 60_000 });
    const saved = jwksBody;
    try {
      expect((await rotating.verify(`Bearer ${await mint()}`)).kind).toBe('verified');
      // The gateway rotates: a new key published under a new kid beside the old one.
      const next = await generateKeyPair('EdDSA', { crv: 'Ed25519' });
      jwksBody = { keys: [...saved!.keys, { ...(await exportJWK(next.publicKey)), kid: 'k2', alg: 'EdDSA', use: 'sig' }] };
      const before = jwksRequests;
      const rotated = await rotating.verify(`Bearer ${await mint({ key: next.privateKey, kid: 'k2' })}`);
      expect(rotated).toMatchObject({ kind: 'verified', sandboxId: SANDBOX });
      expect(jwksRequests - before).toBe(1);
      // Tokens with kids nobody published: refused, and within the cooldown the gateway is not asked again.
      for (let i = 0; i < 20; i++) expect((await rotating.verify(`Bearer ${await mint({ key: otherKey, kid: `forged-${i}` })}`)).kind).not.toBe('verified');
      expect(jwksRequests - before).toBe(1);
      // Both keys keep verifying from the cache.
      expect((await rotating.verify(`Bearer ${await mint()}`)).kind).toBe('verified');
      expect(jwksRequests - before).toBe(1);
    } finally {
      jwksBody = saved;
    }
  });
});

describe('checkSandboxClaims', () => {
  const base = { sub: 's', iss: ISS, aud: ISS, exp: 0, sandbox_id: 'sb' };
  it('requires aud to carry the issuer, as a string or in a list', () => {
    expect(checkSandboxClaims({ ...base, aud: [ISS] }, 0)).toEqual({ ok: true, sandboxId: 'sb' });
    expect(checkSandboxClaims({ ...base, aud: 'openshell-gateway:x' }, 0).ok).toBe(false);
    expect(checkSandboxClaims({ ...base, iss: 'someone-else' }, 0).ok).toBe(false);
    expect(checkSandboxClaims({ ...base, exp: undefined }, 0).ok).toBe(false);
  });
});
