import { describe, expect, it } from 'vitest';
import { formatHostPort, isWildcardHost, parseHostPort } from '../../../src/config/host-port.ts';

describe('parseHostPort', () => {
  it.each<[string, string, number]>([
    ['127.0.0.1:0', '127.0.0.1', 0],
    ['0.0.0.0:8080', '0.0.0.0', 8080],
    ['localhost:65535', 'localhost', 65535],
    ['gateway.openshell.svc:18080', 'gateway.openshell.svc', 18080],
    ['[::1]:8080', '::1', 8080],
    ['[::]:8443', '::', 8443],
    ['[fe80::1%eth0]:22', 'fe80::1%eth0', 22],
  ])('parses %s', (input, host, port) => {
    expect(parseHostPort(input)).toEqual({ host, port });
  });

  it.each(['::1:8080', '127.0.0.1', '127.0.0.1:70000', 'host:abc', 'host:', ':8080', '[::1]8080', '[::1', '[abc]:80', 'a b:80', 'host:-1'])(
    'rejects %s with a config error',
    (input) => {
      expect(() => parseHostPort(input)).toThrow(expect.objectContaining({ code: 'OHS_ERR_CONFIG' }));
    },
  );

  it('round-trips through formatHostPort', () => {
    for (const s of ['127.0.0.1:0', '[::1]:8080', 'example.com:443']) {
      expect(formatHostPort(parseHostPort(s))).toBe(s);
    }
  });
});

describe('isWildcardHost', () => {
  it('knows the wildcard bind addresses', () => {
    expect(isWildcardHost('0.0.0.0')).toBe(true);
    expect(isWildcardHost('::')).toBe(true);
    expect(isWildcardHost('127.0.0.1')).toBe(false);
    expect(isWildcardHost('10.0.0.5')).toBe(false);
  });
});
