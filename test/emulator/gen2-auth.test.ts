// The 2026-08 gateway's authentication outcomes (reference §2.1 HEAD, §8 "Auth modes"), without
// sockets: which principal or status each bearer gets on which method.
import { rmSync } from 'node:fs';
import { Metadata, status as Status } from '@grpc/grpc-js';
import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { authenticate, ensureSandboxPrincipalScope } from '../../emulator/gateway/gen2/auth.ts';
import { SandboxJwt, createJwtKeyDir } from '../../emulator/gateway/gen2/jwt.ts';
import { GatewayError } from '../../emulator/gateway/registry.ts';

let dir: string;
let otherDir: string;
let jwt: SandboxJwt;
let other: SandboxJwt;

const md = (token?: string): Metadata => {
  const m = new Metadata();
  if (token !== undefined) m.set('authorization', `Bearer ${token}`);
  return m;
};

async function outcome(p: Promise<unknown>): Promise<unknown> {
  try {
    return await p;
  } catch (err) {
    if (err instanceof GatewayError) return { code: err.code, message: err.message };
    throw err;
  }
}

beforeAll(async () => {
  dir = createJwtKeyDir();
  otherDir = createJwtKeyDir();
  jwt = await SandboxJwt.load(dir);
  other = await SandboxJwt.load(otherDir);
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
  rmSync(otherDir, { recursive: true, force: true });
});

describe('2026-08 gateway authentication', () => {
  const dev = { jwt: undefined as unknown as SandboxJwt, allowUnauthenticatedUsers: true };

  it('no bearer is the local dev user when allowed, else UNAUTHENTICATED "missing authorization header"', async () => {
    dev.jwt = jwt;
    expect(await authenticate(dev, md(), 'ListSandboxes')).toEqual({ kind: 'user', subject: 'unauthenticated-local-dev' });
    expect(await outcome(authenticate({ jwt, allowUnauthenticatedUsers: false }, md(), 'ListSandboxes'))).toEqual({
      code: Status.UNAUTHENTICATED,
      message: 'missing authorization header',
    });
    // Health never authenticates.
    expect(await authenticate({ jwt, allowUnauthenticatedUsers: false }, md('garbage'), 'Health')).toBeNull();
  });

  it('users are refused on sandbox-only methods and sandboxes on user methods', async () => {
    for (const m of ['ConnectSupervisor', 'RelayStream', 'PushSandboxLogs']) {
      expect(await outcome(authenticate({ jwt, allowUnauthenticatedUsers: true }, md(), m))).toEqual({
        code: Status.PERMISSION_DENIED,
        message: 'this method requires a sandbox principal',
      });
    }
    const tok = await jwt.mint('sb-1');
    expect(await authenticate({ jwt, allowUnauthenticatedUsers: true }, md(tok), 'ConnectSupervisor')).toEqual({ kind: 'sandbox', sandboxId: 'sb-1' });
    expect(await outcome(authenticate({ jwt, allowUnauthenticatedUsers: true }, md(tok), 'StopSandbox'))).toEqual({
      code: Status.PERMISSION_DENIED,
      message: 'sandbox principals may not call this method',
    });
  });

  it('another kid falls through to the next authenticator; a forged or expired token is UNAUTHENTICATED', async () => {
    // Another gateway's key (other kid): not ours, so the dev user when allowed.
    const foreign = await other.mint('sb-1');
    expect(await authenticate({ jwt, allowUnauthenticatedUsers: true }, md(foreign), 'ListSandboxes')).toEqual({
      kind: 'user',
      subject: 'unauthenticated-local-dev',
    });
    // Our kid, wrong key: a forgery.
    const { privateKey } = await import('node:crypto').then((c) => c.generateKeyPairSync('ed25519'));
    const forged = await new SignJWT({ sub: 'spiffe://openshell/sandbox/x', iss: jwt.identity, aud: jwt.identity, exp: 0, sandbox_id: 'x' })
      .setProtectedHeader({ alg: 'EdDSA', kid: jwt.kid })
      .sign(privateKey);
    expect(await outcome(authenticate({ jwt, allowUnauthenticatedUsers: true }, md(forged), 'ConnectSupervisor'))).toMatchObject({
      code: Status.UNAUTHENTICATED,
    });
    const old = await jwt.mint('sb-1', { ttlSecs: 30, nowSecs: Math.floor(Date.now() / 1000) - 100 });
    expect(await outcome(authenticate({ jwt, allowUnauthenticatedUsers: true }, md(old), 'ConnectSupervisor'))).toEqual({
      code: Status.UNAUTHENTICATED,
      message: 'invalid token: ExpiredSignature',
    });
    // Within the 60 s leeway, and exp = 0 (never expires), are accepted.
    const recent = await jwt.mint('sb-1', { ttlSecs: 30, nowSecs: Math.floor(Date.now() / 1000) - 45 });
    expect(await authenticate({ jwt, allowUnauthenticatedUsers: true }, md(recent), 'ConnectSupervisor')).toMatchObject({ kind: 'sandbox' });
    const forever = await jwt.mint('sb-1', { ttlSecs: 0 });
    expect(await authenticate({ jwt, allowUnauthenticatedUsers: true }, md(forever), 'ConnectSupervisor')).toMatchObject({ kind: 'sandbox' });
  });

  it('a supervisor principal must match the sandbox it claims', () => {
    expect(() => ensureSandboxPrincipalScope({ kind: 'sandbox', sandboxId: 'a' }, 'a')).not.toThrow();
    expect(() => ensureSandboxPrincipalScope({ kind: 'sandbox', sandboxId: 'a' }, 'b')).toThrow('cross-sandbox access denied');
    expect(() => ensureSandboxPrincipalScope({ kind: 'user', subject: 'u' }, 'a')).toThrow('supervisor RPCs require a sandbox principal');
  });

  it('minted tokens carry the upstream claims and header', async () => {
    const tok = await jwt.mint('sb-9');
    const [h, p] = tok.split('.').slice(0, 2).map((part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8')) as Record<string, unknown>);
    expect(h).toEqual({ alg: 'EdDSA', kid: jwt.kid });
    expect(p).toMatchObject({ sub: 'spiffe://openshell/sandbox/sb-9', sandbox_id: 'sb-9', iss: 'openshell-gateway:openshell', aud: 'openshell-gateway:openshell' });
    expect(Number(p?.exp) - Number(p?.iat)).toBe(3600);
  });
});
