// Headers that carry the peer protocol between sidecars. They are stripped from every public
// request (a public client can never act as a peer) and from every response relayed to clients.
import { hash, timingSafeEqual } from 'node:crypto';

export const PEER_AUTH = 'x-ohs-peer-auth';
export const PEER_HOP = 'x-ohs-hop';
export const PEER_SANDBOX = 'x-ohs-sandbox';
export const PEER_EPOCH = 'x-ohs-owner-epoch';
export const PEER_ORIGIN = 'x-ohs-origin';
export const PEER_CLASS = 'x-ohs-class';
export const PEER_NOT_OWNER = 'x-ohs-not-owner';
export const PEER_OWNER_HINT = 'x-ohs-owner';
export const PEER_ERROR = 'x-ohs-error';

/** HTTP status a peer uses for "I am not the owner of that sandbox (at that epoch)". */
export const NOT_OWNER_STATUS = 421;

/**
 * Constant-time comparison of a presented secret with ours (hashing equalises lengths). Every peer
 * request pays it: the one-shot `hash` makes no Hash object (~0.8 against ~1.3 µs).
 */
export function peerSecretMatches(presented: string | string[] | undefined, secret: string): boolean {
  if (typeof presented !== 'string' || presented.length === 0) return false;
  return timingSafeEqual(hash('sha256', presented, 'buffer'), secretDigest(secret));
}

/** Our secret's digest, made once per secret rather than once per peer request. */
let lastSecret: { secret: string; digest: Buffer } | undefined;
function secretDigest(secret: string): Buffer {
  if (lastSecret?.secret !== secret) lastSecret = { secret, digest: hash('sha256', secret, 'buffer') };
  return lastSecret.digest;
}

export interface PeerRequestInfo {
  secret: string;
  origin: string;
  sandboxId: string;
  epoch: number;
  cls: string;
  hop: number;
}

/**
 * A copy of `headers` with the peer protocol's headers (and `extra`, e.g. trace context) set on it:
 * one new object per peer request, `headers` untouched.
 */
export function withPeerHeaders<H extends Record<string, unknown>>(headers: H, info: PeerRequestInfo, extra?: Readonly<Record<string, string>>): H & Record<string, string> {
  // Copied name by name, not spread: V8 (Node 20) gives an object made by a spread a map of its own,
  // and each key added to it afterwards makes another (~0.8 µs a key): 5 µs per peer request for
  // these six, against 0.16 µs this way.
  const out: Record<string, unknown> = {};
  for (const name in headers) out[name] = headers[name];
  // With peer mTLS alone there is no secret: the certificate authenticates.
  if (info.secret !== '') out[PEER_AUTH] = info.secret;
  out[PEER_ORIGIN] = info.origin;
  out[PEER_SANDBOX] = info.sandboxId;
  out[PEER_EPOCH] = String(info.epoch);
  out[PEER_CLASS] = info.cls;
  out[PEER_HOP] = String(info.hop);
  if (extra !== undefined) for (const k of Object.keys(extra)) out[k] = extra[k];
  return out as H & Record<string, string>;
}
