// Who may make a replica a sandbox's owner: the decision table of authorizeHello (DESIGN §4,
// authenticate before any side effect), with the JWT verdicts and the gateway generation stubbed.
import { describe, expect, it } from 'vitest';
import { authorizeHello } from '../../../src/auth/hello-auth.ts';
import type { JwtVerdict, SandboxJwtVerifier } from '../../../src/auth/sandbox-jwt.ts';
import type { SidecarConfig } from '../../../src/config/schema.ts';

function ctx(verdict: JwtVerdict, issuesJwts: boolean | undefined, tls?: { clientCaFile?: string }): Parameters<typeof authorizeHello>[0] {
  const jwt: SandboxJwtVerifier = { verify: async () => verdict, gatewayIssuesJwts: async () => issuesJwts };
  const config = { ...(tls ? { tls: { certFile: 'c', keyFile: 'k', ...tls } } : {}) } as unknown as SidecarConfig;
  return { jwt, config };
}

const S = 'sb-1';

describe('authorizeHello', () => {
  it('a sandbox JWT the gateway signed for this very sandbox claims', async () => {
    expect(await authorizeHello(ctx({ kind: 'verified', sandboxId: S }, true), undefined, 'Bearer x', S)).toEqual({ ok: true, via: 'jwt' });
  });

  it("another sandbox's valid JWT does not", async () => {
    expect(await authorizeHello(ctx({ kind: 'verified', sandboxId: 'other' }, true), undefined, 'Bearer x', S)).toEqual({ ok: false, reason: 'token-for-other-sandbox' });
  });

  it('an invalid token never claims, whatever the gateway generation', async () => {
    expect(await authorizeHello(ctx({ kind: 'invalid', reason: 'signature' }, false), undefined, 'Bearer x', S)).toEqual({ ok: false, reason: 'invalid-token' });
  });

  it('no token on a gateway that issues sandbox JWTs (2026-08) does not claim', async () => {
    expect(await authorizeHello(ctx({ kind: 'absent' }, true), undefined, undefined, S)).toEqual({ ok: false, reason: 'no-token' });
  });

  it('keys that cannot be read, or a gateway that cannot be asked, do not claim', async () => {
    expect(await authorizeHello(ctx({ kind: 'unavailable', reason: 'down' }, true), undefined, 'Bearer x', S)).toEqual({ ok: false, reason: 'keys-unavailable' });
    expect(await authorizeHello(ctx({ kind: 'absent' }, undefined), undefined, undefined, S)).toEqual({ ok: false, reason: 'gateway-unreachable' });
  });

  it('at seed behind TLS, only a client certificate verified against the client CA claims', async () => {
    const verified = { encrypted: true, authorized: true };
    expect(await authorizeHello(ctx({ kind: 'absent' }, false, { clientCaFile: 'ca.pem' }), verified, undefined, S)).toEqual({ ok: true, via: 'client-cert' });
    expect(await authorizeHello(ctx({ kind: 'absent' }, false, { clientCaFile: 'ca.pem' }), { encrypted: true, authorized: false }, undefined, S)).toEqual({ ok: false, reason: 'no-client-cert' });
    // TLS without a client CA verifies no client: no claim.
    expect(await authorizeHello(ctx({ kind: 'absent' }, false, {}), { encrypted: true, authorized: false }, undefined, S)).toEqual({ ok: false, reason: 'no-client-cert' });
  });

  it('a plaintext seed deployment, which authenticates nobody, keeps working (and is flagged)', async () => {
    expect(await authorizeHello(ctx({ kind: 'absent' }, false), undefined, undefined, S)).toEqual({ ok: true, via: 'seed-unauthenticated' });
  });
});
