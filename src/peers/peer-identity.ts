// Who is on the other end of a peer connection: with peer mTLS, a peer's certificate must name the
// replica it claims to be (x-ohs-origin), and that replica must be in the registry (ohs_replicas).
// `san`: a DNS or IP SAN equal to the host of the peer URL the replica registered (what it is
// dialled at, so one certificate per pod address). `spiffe`: a URI SAN equal to the configured
// SPIFFE id template with the replica id filled in.
import { X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import type { Http2Session } from 'node:http2';
import type { TLSSocket } from 'node:tls';
import { SPIFFE_REPLICA_PLACEHOLDER } from '../config/schema.ts';
import { replicaIdSchema } from '../config/schema.ts';

export type PeerIdentityMode = 'san' | 'spiffe';

/** Why a peer's identity was refused; a closed set, used as a metric label. */
export type PeerIdentityRefusal = 'no-certificate' | 'bad-origin' | 'unregistered' | 'mismatch' | 'registry-unavailable';

export const PEER_IDENTITY_REFUSALS: readonly PeerIdentityRefusal[] = ['no-certificate', 'bad-origin', 'unregistered', 'mismatch', 'registry-unavailable'];

export type PeerIdentityVerdict = { ok: true; identity: string } | { ok: false; reason: PeerIdentityRefusal };

/** The SPIFFE id a replica's certificate carries under `template`. */
export function spiffeIdFor(template: string, replicaId: string): string {
  return template.replace(SPIFFE_REPLICA_PLACEHOLDER, replicaId);
}

/**
 * The URI entries of a certificate's subjectAltName as Node renders it (`DNS:a, URI:b, …`). Node
 * quotes a value that holds a delimiter (JSON string syntax), so a crafted value cannot pass for
 * two entries.
 */
export function uriSans(subjectAltName: string | undefined): string[] {
  const out: string[] = [];
  if (!subjectAltName) return out;
  let i = 0;
  while (i < subjectAltName.length) {
    const colon = subjectAltName.indexOf(':', i);
    if (colon < 0) break;
    const kind = subjectAltName.slice(i, colon);
    let value: string;
    let next: number;
    if (subjectAltName[colon + 1] === '"') {
      // A JSON string: find its closing quote, honouring escapes.
      let j = colon + 2;
      while (j < subjectAltName.length && subjectAltName[j] !== '"') j += subjectAltName[j] === '\\' ? 2 : 1;
      try {
        value = JSON.parse(subjectAltName.slice(colon + 1, j + 1)) as string;
      } catch {
        return out; // malformed: nothing after this point is trusted
      }
      next = subjectAltName.indexOf(', ', j + 1);
    } else {
      next = subjectAltName.indexOf(', ', colon + 1);
      value = subjectAltName.slice(colon + 1, next < 0 ? undefined : next);
    }
    if (kind === 'URI') out.push(value);
    if (next < 0) break;
    i = next + 2;
  }
  return out;
}

/** The host of a registered peer URL as certificates name it (IPv6 without brackets). */
export function peerUrlHost(peerUrl: string): string | undefined {
  try {
    const host = new URL(peerUrl).hostname;
    return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  } catch {
    return undefined;
  }
}

/**
 * Whether a certificate (DER) names `replicaId`, registered at `registeredPeerUrl`. Pure: the caller
 * has verified the chain (the TLS handshake did) and read the registry.
 */
export function certificateNamesReplica(
  der: Buffer,
  mode: PeerIdentityMode,
  replicaId: string,
  registeredPeerUrl: string,
  spiffeTemplate?: string,
): string | undefined {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(der);
  } catch {
    return undefined;
  }
  if (mode === 'spiffe') {
    if (spiffeTemplate === undefined) return undefined;
    const want = spiffeIdFor(spiffeTemplate, replicaId);
    return uriSans(cert.subjectAltName).includes(want) ? want : undefined;
  }
  const host = peerUrlHost(registeredPeerUrl);
  if (host === undefined || host === '') return undefined;
  if (isIP(host) !== 0) return cert.checkIP(host) !== undefined ? `IP:${host}` : undefined;
  // Exact names only: a wildcard certificate would let its holder be any replica under it.
  return cert.checkHost(host, { subject: 'never', wildcards: false }) !== undefined ? `DNS:${host.toLowerCase()}` : undefined;
}

export interface ReplicaRegistry {
  /** The peer URL a replica registered, null when it is not registered; `recheck` asks the database again (rate-limited). */
  registeredPeerUrl(replicaId: string, opts?: { recheck?: boolean }): Promise<string | null>;
}

export interface PeerIdentityVerifier {
  readonly mode: PeerIdentityMode;
  /**
   * Checks the certificate of the peer session against the replica named in x-ohs-origin. A pair
   * once verified is answered synchronously (`true`) for the rest of the session's life.
   */
  verify(session: Http2Session | undefined, origin: unknown): true | Promise<PeerIdentityVerdict>;
}

export interface PeerIdentityVerifierOptions {
  mode: PeerIdentityMode;
  spiffeTemplate?: string;
  registry: ReplicaRegistry;
  /** A session verified for the first time (once per session and origin). */
  onVerified?: (info: { origin: string; identity: string; fingerprint256: string }) => void;
}

/** Origins a single verified session may speak for; more is not a sidecar. */
const MAX_ORIGINS_PER_SESSION = 4;

export function createPeerIdentityVerifier(opts: PeerIdentityVerifierOptions): PeerIdentityVerifier {
  const verified = new WeakMap<Http2Session, Set<string>>();

  async function check(session: Http2Session, origin: string, der: Buffer): Promise<PeerIdentityVerdict> {
    const match = async (recheck: boolean): Promise<PeerIdentityVerdict> => {
      const url = await opts.registry.registeredPeerUrl(origin, recheck ? { recheck } : undefined);
      if (url === null) return { ok: false, reason: 'unregistered' };
      const identity = certificateNamesReplica(der, opts.mode, origin, url, opts.spiffeTemplate);
      return identity === undefined ? { ok: false, reason: 'mismatch' } : { ok: true, identity };
    };
    let verdict: PeerIdentityVerdict;
    try {
      verdict = await match(false);
      // A replica that restarted elsewhere re-registered a new address: read it again once.
      if (!verdict.ok) verdict = await match(true);
    } catch {
      return { ok: false, reason: 'registry-unavailable' };
    }
    if (verdict.ok) {
      const set = verified.get(session) ?? new Set<string>();
      if (set.size < MAX_ORIGINS_PER_SESSION) set.add(origin);
      verified.set(session, set);
      opts.onVerified?.({ origin, identity: verdict.identity, fingerprint256: new X509Certificate(der).fingerprint256 });
    }
    return verdict;
  }

  return {
    mode: opts.mode,
    verify(session, origin) {
      if (typeof origin !== 'string' || !replicaIdSchema.safeParse(origin).success) return Promise.resolve({ ok: false, reason: 'bad-origin' });
      if (session === undefined) return Promise.resolve({ ok: false, reason: 'no-certificate' });
      if (verified.get(session)?.has(origin) === true) return true;
      const socket = session.socket as Partial<TLSSocket>;
      const der = typeof socket.getPeerCertificate === 'function' && socket.authorized === true ? socket.getPeerCertificate().raw : undefined;
      if (!der || der.length === 0) return Promise.resolve({ ok: false, reason: 'no-certificate' });
      return check(session, origin, der);
    },
  };
}
