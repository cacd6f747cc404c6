// Headers that carry the peer protocol between sidecars. They are stripped from every public
// request (a public client can never act as a peer) and from every response relayed to clients.
import { timingSafeEqual, createHash } from 'node:crypto';

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

/** Constant-time comparison of a presented secret with ours (hashing equalises lengths). */
export function peerSecretMatches(presented: string | string[] | undefined, secret: string): boolean {
  if (typeof presented !== 'string' || presented.length === 0) return false;
  const a = createHash('sha256').update(presented).digest();
  const b = createHash('sha256').update(secret).digest();
  return timingSafeEqual(a, b);
}

export interface PeerRequestInfo {
  secret: string;
  origin: string;
  sandboxId: string;
  epoch: number;
  cls: string;
  hop: number;
}

export function peerHeaders(info: PeerRequestInfo): Record<string, string> {
  return {
    // With peer mTLS alone there is no secret: the certificate authenticates.
    ...(info.secret === '' ? {} : { [PEER_AUTH]: info.secret }),
    [PEER_ORIGIN]: info.origin,
    [PEER_SANDBOX]: info.sandboxId,
    [PEER_EPOCH]: String(info.epoch),
    [PEER_CLASS]: info.cls,
    [PEER_HOP]: String(info.hop),
  };
}
