// Who may make this replica a sandbox's owner (DESIGN §4: authenticate before any side effect). A
// supervisor Hello claims ownership and fences the previous owner only when the sidecar itself
// verified its sender: at 2026-08 the sandbox JWT (signed by the gateway, naming this very
// sandbox); at seed, where no such token exists, the client certificate the TLS listener verified
// (reference §1.2). Anything else is passed to the gateway untouched, which refuses it.
import type { TLSSocket } from 'node:tls';
import type { ProxyContext } from '../proxy/context.ts';
import type { JwtVerdict } from './sandbox-jwt.ts';

export type HelloAuth =
  | { ok: true; via: 'jwt' | 'client-cert' | 'seed-unauthenticated' }
  | { ok: false; reason: 'no-token' | 'invalid-token' | 'token-for-other-sandbox' | 'keys-unavailable' | 'gateway-unreachable' | 'no-client-cert' };

const KEY_RETRY_ATTEMPTS = 3;
const KEY_RETRY_DELAY_MS = 300;

export async function authorizeHello(
  ctx: Pick<ProxyContext, 'jwt' | 'config'>,
  socket: { encrypted?: boolean; authorized?: boolean } | undefined,
  authorization: string | string[] | undefined,
  sandboxId: string,
): Promise<HelloAuth> {
  let verdict: JwtVerdict = await ctx.jwt.verify(authorization);
  // The gateway's keys were unreadable for a moment (restart, GOAWAY): a real supervisor must not
  // lose its ownership claim to that, so ask again briefly.
  for (let i = 1; verdict.kind === 'unavailable' && i < KEY_RETRY_ATTEMPTS; i++) {
    await new Promise((r) => setTimeout(r, KEY_RETRY_DELAY_MS).unref());
    verdict = await ctx.jwt.verify(authorization);
  }
  if (verdict.kind === 'verified') {
    return verdict.sandboxId === sandboxId ? { ok: true, via: 'jwt' } : { ok: false, reason: 'token-for-other-sandbox' };
  }
  if (verdict.kind === 'invalid') return { ok: false, reason: 'invalid-token' };
  const issuesJwts = await ctx.jwt.gatewayIssuesJwts();
  if (issuesJwts === true) return { ok: false, reason: verdict.kind === 'absent' ? 'no-token' : 'keys-unavailable' };
  if (issuesJwts === undefined) return { ok: false, reason: 'gateway-unreachable' };
  // A seed gateway: no sandbox tokens exist; TLS client certificates are its only identity.
  if (ctx.config.tls) {
    const tlsSocket = socket as Partial<TLSSocket> | undefined;
    return tlsSocket?.encrypted && tlsSocket.authorized && ctx.config.tls.clientCaFile ? { ok: true, via: 'client-cert' } : { ok: false, reason: 'no-client-cert' };
  }
  // A plaintext seed deployment authenticates nobody, the gateway included (reference §5).
  return { ok: true, via: 'seed-unauthenticated' };
}
