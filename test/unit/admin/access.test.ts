// The one access rule of the admin port's operator endpoints (status, explain, the live page).
import { describe, expect, it } from 'vitest';
import { createAdminAccess, parseCidr } from '../../../src/admin/access.ts';

const req = (remoteAddress: string | undefined, authorization?: string) =>
  ({ headers: authorization ? { authorization } : {}, socket: { remoteAddress } }) as unknown as Parameters<ReturnType<typeof createAdminAccess>>[0];

describe('admin access', () => {
  it('lets loopback in (kubectl port-forward and exec arrive there) and nobody else by default', () => {
    const check = createAdminAccess();
    expect(check(req('127.0.0.1'))).toEqual({ ok: true, via: 'loopback' });
    expect(check(req('127.8.9.10'))).toEqual({ ok: true, via: 'loopback' });
    expect(check(req('::1'))).toEqual({ ok: true, via: 'loopback' });
    expect(check(req('::ffff:127.0.0.1'))).toEqual({ ok: true, via: 'loopback' });
    expect(check(req('10.1.2.3'))).toMatchObject({ ok: false, status: 403 });
    expect(check(req(undefined))).toMatchObject({ ok: false, status: 403 });
  });

  it('an allowed CIDR opens it to that network, IPv4-mapped addresses included', () => {
    const check = createAdminAccess({ allowCidrs: ['10.0.0.0/8', 'fd00::/8'] });
    expect(check(req('10.244.1.7'))).toEqual({ ok: true, via: 'cidr' });
    expect(check(req('::ffff:10.244.1.7'))).toEqual({ ok: true, via: 'cidr' });
    expect(check(req('fd12::1'))).toEqual({ ok: true, via: 'cidr' });
    expect(check(req('192.168.1.1'))).toMatchObject({ ok: false, status: 403 });
  });

  it('a bearer token opens it from anywhere; a wrong one is 401, not a fall-through to the address', () => {
    const check = createAdminAccess({ token: 'an-admin-token-0123456789' });
    expect(check(req('192.168.1.1', 'Bearer an-admin-token-0123456789'))).toEqual({ ok: true, via: 'token' });
    expect(check(req('127.0.0.1', 'Bearer wrong'))).toMatchObject({ ok: false, status: 401 });
    expect(check(req('192.168.1.1'))).toMatchObject({ ok: false, status: 403 });
  });

  it('rejects malformed CIDRs', () => {
    expect(parseCidr('10.0.0.0/8')).toEqual({ address: '10.0.0.0', prefix: 8, family: 'ipv4' });
    expect(() => parseCidr('10.0.0.0/33')).toThrow();
    expect(() => parseCidr('nonsense/8')).toThrow();
  });
});
