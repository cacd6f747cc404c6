// Sandbox JWTs of the 2026-08 gateway (reference §0.3, §2.1 HEAD): EdDSA (Ed25519), header kid =
// the configured kid, claims sub=spiffe://openshell/sandbox/<id>, sandbox_id, iss=aud=
// openshell-gateway:<gateway_id>, iat, exp (0 = never). Key material lives in a directory laid out
// like upstream's (`signing.pem`, `public.pem`, `kid`); every replica of a cluster shares one.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SignJWT, compactVerify, decodeProtectedHeader, exportJWK, importPKCS8, importSPKI } from 'jose';

export const DEFAULT_GATEWAY_ID = 'openshell';
/** Helm's default sandbox JWT TTL (reference §2.1). */
export const DEFAULT_SANDBOX_JWT_TTL_SECS = 3600;
const SPIFFE_PREFIX = 'spiffe://openshell/sandbox/';
/** Manual exp check leeway (auth/sandbox_jwt.rs@v0.0.111:43). */
const EXP_LEEWAY_SECS = 60;
/** Extension tokens share the key but never authenticate to the gateway (sandbox_jwt.rs:285-292). */
const EXTENSION_JWT_TYP = 'openshell-ext+jwt';

type Key = Awaited<ReturnType<typeof importPKCS8>>;

/** Writes a fresh Ed25519 key pair and kid into `dir` (default: a new temp dir); returns the dir. */
export function createJwtKeyDir(dir?: string): string {
  const target = dir ?? mkdtempSync(path.join(os.tmpdir(), 'openshell-jwt-'));
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  writeFileSync(path.join(target, 'signing.pem'), privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
  writeFileSync(path.join(target, 'public.pem'), publicKey.export({ format: 'pem', type: 'spki' }));
  writeFileSync(path.join(target, 'kid'), `openshell-sandbox-${randomBytes(6).toString('hex')}\n`);
  return target;
}

/** Outcome of checking a bearer against the sandbox-JWT authenticator. */
export type JwtCheck =
  | { kind: 'sandbox'; sandboxId: string }
  /** Not ours (other kid or algorithm): the chain falls through to the next authenticator. */
  | { kind: 'not-mine' }
  | { kind: 'invalid'; message: string };

export class SandboxJwt {
  private constructor(
    readonly kid: string,
    readonly gatewayId: string,
    readonly ttlSecs: number,
    private readonly signingKey: Key,
    private readonly publicKey: Key,
  ) {}

  static async load(dir: string, opts: { gatewayId?: string; ttlSecs?: number } = {}): Promise<SandboxJwt> {
    const kid = readFileSync(path.join(dir, 'kid'), 'utf8').trim();
    const signing = await importPKCS8(readFileSync(path.join(dir, 'signing.pem'), 'utf8'), 'EdDSA', { extractable: false });
    const pub = await importSPKI(readFileSync(path.join(dir, 'public.pem'), 'utf8'), 'EdDSA', { extractable: true });
    return new SandboxJwt(kid, opts.gatewayId ?? DEFAULT_GATEWAY_ID, opts.ttlSecs ?? DEFAULT_SANDBOX_JWT_TTL_SECS, signing, pub);
  }

  get identity(): string {
    return `openshell-gateway:${this.gatewayId}`;
  }

  /** Mints the token CreateSandbox hands to the compute driver (SandboxJwtIssuer::mint). */
  async mint(sandboxId: string, opts: { ttlSecs?: number; nowSecs?: number } = {}): Promise<string> {
    const now = opts.nowSecs ?? Math.floor(Date.now() / 1000);
    const ttl = opts.ttlSecs ?? this.ttlSecs;
    return new SignJWT({
      sub: `${SPIFFE_PREFIX}${sandboxId}`,
      iss: this.identity,
      aud: this.identity,
      iat: now,
      exp: ttl === 0 ? 0 : now + ttl,
      sandbox_id: sandboxId,
    })
      .setProtectedHeader({ alg: 'EdDSA', kid: this.kid })
      .sign(this.signingKey);
  }

  /** The JWKS document served at /.well-known/jwks.json (GatewayJwk fields, sandbox_jwt.rs:52-61). */
  async jwks(): Promise<{ keys: Array<Record<string, string>> }> {
    const jwk = await exportJWK(this.publicKey);
    return { keys: [{ kty: 'OKP', crv: 'Ed25519', alg: 'EdDSA', use: 'sig', kid: this.kid, x: jwk.x ?? '' }] };
  }

  /**
   * validate_bearer (sandbox_jwt.rs@v0.0.111:278-322): an undecodable header → "invalid token"; an
   * extension `typ` → rejected; another kid or alg → fall through; then signature, iss, aud and the
   * required claims, then exp by hand (0 = never, 60 s leeway).
   */
  async check(token: string): Promise<JwtCheck> {
    let header: ReturnType<typeof decodeProtectedHeader>;
    try {
      header = decodeProtectedHeader(token);
    } catch {
      return { kind: 'invalid', message: 'invalid token' };
    }
    if (header.typ === EXTENSION_JWT_TYP) return { kind: 'invalid', message: 'extension tokens cannot authenticate to the gateway' };
    if (header.kid !== this.kid || header.alg !== 'EdDSA') return { kind: 'not-mine' };
    let claims: Record<string, unknown>;
    try {
      const { payload } = await compactVerify(token, this.publicKey, { algorithms: ['EdDSA'] });
      claims = JSON.parse(new TextDecoder().decode(payload)) as Record<string, unknown>;
    } catch {
      return { kind: 'invalid', message: 'invalid token: InvalidSignature' };
    }
    for (const c of ['iss', 'aud', 'exp', 'sub']) {
      if (claims[c] === undefined) return { kind: 'invalid', message: `invalid token: Missing required claim: ${c}` };
    }
    if (claims.iss !== this.identity) return { kind: 'invalid', message: 'invalid token: InvalidIssuer' };
    const aud = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
    if (!aud.includes(this.identity)) return { kind: 'invalid', message: 'invalid token: InvalidAudience' };
    const exp = Number(claims.exp);
    if (exp !== 0 && exp < Math.floor(Date.now() / 1000) - EXP_LEEWAY_SECS) {
      return { kind: 'invalid', message: 'invalid token: ExpiredSignature' };
    }
    return { kind: 'sandbox', sandboxId: String(claims.sandbox_id ?? '') };
  }
}

/** Mints a token for `sandboxId` from a key dir (for tests and the supervisor fleet). */
export async function mintSandboxToken(
  keyDir: string,
  sandboxId: string,
  opts: { gatewayId?: string; ttlSecs?: number } = {},
): Promise<string> {
  const jwt = await SandboxJwt.load(keyDir, opts);
  return jwt.mint(sandboxId, opts.ttlSecs === undefined ? {} : { ttlSecs: opts.ttlSecs });
}
