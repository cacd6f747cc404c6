// Verifies the sandbox JWT a 2026-08 supervisor sends as `authorization: Bearer …` (reference
// §2.1 HEAD), with the keys the local gateway publishes at `/.well-known/jwks.json`. The sidecar
// claims ownership or fences anyone only for a Hello whose token it verified itself (DESIGN §4:
// authenticate before any side effect). The checks are the gateway's own: EdDSA only, extension
// tokens refused, iss = aud = `openshell-gateway:<id>`, exp required with 60 s leeway (0 = never).
import { compactVerify, createRemoteJWKSet, customFetch, decodeProtectedHeader, type FetchImplementation } from 'jose';
import type { Logger } from 'pino';
import type tls from 'node:tls';
import { Agent, fetch as undiciFetch, request } from 'undici';

/** Header `typ` of extension tokens: signed by the same key, never valid for a sandbox (upstream sandbox_jwt.rs). */
const EXTENSION_JWT_TYP = 'openshell-ext+jwt';
const EXP_LEEWAY_SECS = 60;
const ISSUER_PREFIX = 'openshell-gateway:';
export const JWKS_PATH = '/.well-known/jwks.json';

export type JwtVerdict =
  | { kind: 'verified'; sandboxId: string }
  /** No `authorization: Bearer` header. */
  | { kind: 'absent' }
  /** A token that is not a valid sandbox JWT of this gateway; `reason` is for logs, never for clients. */
  | { kind: 'invalid'; reason: string }
  /** The gateway's keys could not be read (gateway down, or it publishes none). */
  | { kind: 'unavailable'; reason: string };

export interface SandboxJwtVerifierOptions {
  /** http://host:port of the local gateway. */
  gatewayOrigin: string;
  /** Expected `openshell-gateway:<id>`; when unset any issuer of that form whose aud equals it. */
  issuer?: string;
  /** TLS settings when the gateway speaks https (its CA, a client certificate). */
  tls?: tls.ConnectionOptions;
  logger: Logger;
  /** How long fetched keys are trusted before a refetch (default 10 min); an unknown kid refetches sooner. */
  cacheMaxAgeMs?: number;
  /** Least time between two fetches (default 30 s), so a flood of forged kids cannot hammer the gateway. */
  cooldownMs?: number;
  /**
   * An unknown kid within the cooldown may be a key the gateway just rotated in: the set is fetched
   * again anyway, at most this often (default 2 s), so a rotation is honoured at once while a flood
   * of forged kids still costs at most one fetch per period.
   */
  rotationRefetchMinMs?: number;
  timeoutMs?: number;
  now?: () => number;
}

export interface SandboxJwtVerifier {
  verify(authorization: string | string[] | undefined): Promise<JwtVerdict>;
  /**
   * Whether the local gateway publishes sandbox JWT keys: true at 2026-08 with the signer
   * configured, false when the route is absent (seed gateways), undefined when it cannot be asked.
   */
  gatewayIssuesJwts(): Promise<boolean | undefined>;
}

/** The compact JWS of an `authorization` header value, or undefined when there is none. */
export function bearerToken(authorization: string | string[] | undefined): string | undefined {
  const value = Array.isArray(authorization) ? authorization[0] : authorization;
  if (typeof value !== 'string' || !value.startsWith('Bearer ')) return undefined;
  const token = value.slice('Bearer '.length).trim();
  return token === '' ? undefined : token;
}

interface Claims {
  sub?: unknown;
  iss?: unknown;
  aud?: unknown;
  exp?: unknown;
  sandbox_id?: unknown;
}

/** The claim checks of the gateway (pure; signature already verified). Returns the sandbox id or why not. */
export function checkSandboxClaims(claims: Claims, nowSecs: number, issuer?: string): { ok: true; sandboxId: string } | { ok: false; reason: string } {
  if (typeof claims.sub !== 'string' || claims.sub === '') return { ok: false, reason: 'missing sub' };
  if (typeof claims.iss !== 'string' || !claims.iss.startsWith(ISSUER_PREFIX)) return { ok: false, reason: 'unexpected iss' };
  if (issuer !== undefined && claims.iss !== issuer) return { ok: false, reason: 'unexpected iss' };
  const aud = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
  if (!aud.includes(claims.iss)) return { ok: false, reason: 'unexpected aud' };
  if (typeof claims.exp !== 'number' || !Number.isFinite(claims.exp)) return { ok: false, reason: 'missing exp' };
  if (claims.exp !== 0 && claims.exp < nowSecs - EXP_LEEWAY_SECS) return { ok: false, reason: 'expired' };
  if (typeof claims.sandbox_id !== 'string' || claims.sandbox_id === '') return { ok: false, reason: 'missing sandbox_id' };
  return { ok: true, sandboxId: claims.sandbox_id };
}

export function createSandboxJwtVerifier(opts: SandboxJwtVerifierOptions): SandboxJwtVerifier {
  const url = new URL(JWKS_PATH, opts.gatewayOrigin);
  const timeoutMs = opts.timeoutMs ?? 2_000;
  const now = opts.now ?? Date.now;
  // One undici agent for both JWKS reads, carrying the gateway hop's TLS settings when it has them.
  const dispatcher = opts.tls ? new Agent({ connect: opts.tls as Agent.Options['connect'] }) : undefined;
  const fetchJwks: FetchImplementation = ((input: string, init: Record<string, unknown>) =>
    undiciFetch(input, { ...(init as object), ...(dispatcher ? { dispatcher } : {}) })) as unknown as FetchImplementation;
  const jwks = createRemoteJWKSet(url, {
    cacheMaxAge: opts.cacheMaxAgeMs ?? 600_000,
    cooldownDuration: opts.cooldownMs ?? 30_000,
    timeoutDuration: timeoutMs,
    [customFetch]: fetchJwks,
  });
  let issuesJwts: { value: boolean; atMs: number } | undefined;
  let rotationRefetchAt = -Infinity;

  /** What a failed verification says: the key set was not usable, or the token is bad. */
  const failure = (err: unknown): JwtVerdict => {
    const e = err as { code?: unknown; message?: string };
    // Key set unreachable (a fetch error carries no JOSE code), refused or malformed: nothing
    // about the token itself was learnt.
    const code = typeof e.code === 'string' ? e.code : '';
    if (!code.startsWith('ERR_J') || code === 'ERR_JWKS_TIMEOUT' || code === 'ERR_JOSE_GENERIC' || code === 'ERR_JWKS_INVALID') {
      return { kind: 'unavailable', reason: e.message ?? 'jwks unavailable' };
    }
    return { kind: 'invalid', reason: code };
  };

  return {
    async verify(authorization) {
      const token = bearerToken(authorization);
      if (token === undefined) return { kind: 'absent' };
      let header;
      try {
        header = decodeProtectedHeader(token);
      } catch {
        return { kind: 'invalid', reason: 'undecodable header' };
      }
      if (header.typ === EXTENSION_JWT_TYP) return { kind: 'invalid', reason: 'extension token' };
      if (header.alg !== 'EdDSA') return { kind: 'invalid', reason: `alg ${String(header.alg)}` };
      let payload: Uint8Array;
      try {
        payload = (await compactVerify(token, jwks, { algorithms: ['EdDSA'] })).payload;
      } catch (err) {
        const rotated =
          (err as { code?: unknown }).code === 'ERR_JWKS_NO_MATCHING_KEY' && jwks.coolingDown && now() - rotationRefetchAt >= (opts.rotationRefetchMinMs ?? 2_000);
        if (!rotated) return failure(err);
        rotationRefetchAt = now();
        try {
          await jwks.reload();
          payload = (await compactVerify(token, jwks, { algorithms: ['EdDSA'] })).payload;
        } catch (again) {
          return failure(again);
        }
      }
      let claims: Claims;
      try {
        claims = JSON.parse(Buffer.from(payload).toString('utf8')) as Claims;
      } catch {
        return { kind: 'invalid', reason: 'undecodable claims' };
      }
      if (claims === null || typeof claims !== 'object') return { kind: 'invalid', reason: 'undecodable claims' };
      const checked = checkSandboxClaims(claims, Math.floor(now() / 1000), opts.issuer);
      return checked.ok ? { kind: 'verified', sandboxId: checked.sandboxId } : { kind: 'invalid', reason: checked.reason };
    },

    async gatewayIssuesJwts() {
      if (issuesJwts && now() - issuesJwts.atMs < 60_000) return issuesJwts.value;
      try {
        const res = await request(url, { method: 'GET', headersTimeout: timeoutMs, bodyTimeout: timeoutMs, ...(dispatcher ? { dispatcher } : {}) });
        const body = await res.body.text();
        let value = false;
        if (res.statusCode === 200) {
          try {
            const keys = (JSON.parse(body) as { keys?: unknown }).keys;
            value = Array.isArray(keys) && keys.length > 0;
          } catch {
            value = false;
          }
        }
        if (issuesJwts?.value !== value) {
          opts.logger.info({ jwks: url.toString(), status: res.statusCode, issuesJwts: value }, value ? 'local gateway publishes sandbox JWT keys: supervisor Hellos are verified before any ownership change' : 'local gateway publishes no sandbox JWT keys (seed generation)');
        }
        issuesJwts = { value, atMs: now() };
        return value;
      } catch (err) {
        opts.logger.debug({ err: (err as Error).message }, 'could not ask the local gateway for its JWKS');
        return undefined;
      }
    },
  };
}
