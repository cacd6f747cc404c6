// Who may use the admin port's operator endpoints (/v1/status, /v1/explain, /ui). One function, so
// the hardening work can tighten it in one place. Today a request is allowed when it comes from
// loopback (kubectl port-forward and kubectl exec arrive there), or from an address inside one of
// `adminAllowCidrs`, or carries `Authorization: Bearer <adminToken>` when a token is configured.
// Anything else gets 403 (401 when it presented a wrong bearer token). /healthz, /readyz and
// /metrics stay open: kubelet and Prometheus scrape them from the pod network.
import { createHash, timingSafeEqual } from 'node:crypto';
import type http from 'node:http';
import net from 'node:net';

export type AccessVerdict = { ok: true; via: 'loopback' | 'cidr' | 'token' } | { ok: false; status: 401 | 403; reason: string };

export interface AdminAccessOptions {
  /** CIDRs (IPv4 or IPv6) allowed besides loopback, e.g. `10.0.0.0/8`. */
  allowCidrs?: readonly string[];
  /** A bearer token that is accepted from any address. */
  token?: string | undefined;
}

export type AdminAccessCheck = (req: Pick<http.IncomingMessage, 'headers' | 'socket'>) => AccessVerdict;

/** Throws on a malformed CIDR (config validation calls this too). */
export function parseCidr(cidr: string): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } {
  const slash = cidr.lastIndexOf('/');
  const address = slash < 0 ? cidr : cidr.slice(0, slash);
  const family = net.isIPv4(address) ? 'ipv4' : net.isIPv6(address) ? 'ipv6' : undefined;
  if (!family) throw new Error(`not an IP address: ${address}`);
  const max = family === 'ipv4' ? 32 : 128;
  const prefix = slash < 0 ? max : Number(cidr.slice(slash + 1));
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > max) throw new Error(`bad prefix length in ${cidr}`);
  return { address, prefix, family };
}

/** `::ffff:10.1.2.3` (an IPv4 client on a dual-stack socket) is 10.1.2.3. */
function normalise(address: string): { address: string; family: 'ipv4' | 'ipv6' } {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped?.[1]) return { address: mapped[1], family: 'ipv4' };
  return { address, family: net.isIPv4(address) ? 'ipv4' : 'ipv6' };
}

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

export function createAdminAccess(opts: AdminAccessOptions = {}): AdminAccessCheck {
  const loopback = new net.BlockList();
  loopback.addSubnet('127.0.0.0', 8, 'ipv4');
  loopback.addAddress('::1', 'ipv6');
  const allowed = new net.BlockList();
  let anyAllowed = false;
  for (const c of opts.allowCidrs ?? []) {
    const { address, prefix, family } = parseCidr(c);
    allowed.addSubnet(address, prefix, family);
    anyAllowed = true;
  }
  const tokenDigest = opts.token ? digest(opts.token) : undefined;
  return (req) => {
    const auth = req.headers.authorization;
    if (tokenDigest && typeof auth === 'string' && /^bearer /i.test(auth)) {
      if (timingSafeEqual(digest(auth.slice(7).trim()), tokenDigest)) return { ok: true, via: 'token' };
      return { ok: false, status: 401, reason: 'wrong admin token' };
    }
    const remote = req.socket.remoteAddress;
    if (remote) {
      const { address, family } = normalise(remote);
      if (loopback.check(address, family)) return { ok: true, via: 'loopback' };
      if (anyAllowed && allowed.check(address, family)) return { ok: true, via: 'cidr' };
    }
    return {
      ok: false,
      status: 403,
      reason: tokenDigest ? 'admin endpoints need loopback, an allowed address or the admin token' : 'admin endpoints are open to loopback and allowed addresses only',
    };
  };
}
