// Settings of the operator surface: who may use the admin endpoints, and tracing.
import { describe, expect, it } from 'vitest';
import { describeConfig, loadConfig } from '../../../src/config/load.ts';

const load = (argv: string[], files: Record<string, string> = {}) =>
  loadConfig({ argv, env: {}, readFile: (p) => files[p] ?? (() => { throw new Error(`no ${p}`); })(), randomHex: () => 'abcd' });

describe('operator settings', () => {
  it('default: loopback only, tracing off', () => {
    const c = load([]);
    expect(c.adminAllowCidrs).toEqual([]);
    expect(c.adminToken).toBeUndefined();
    expect(c.tracing).toBe('off');
  });

  it('CIDRs are validated; the admin token comes from a file and is never logged', () => {
    const c = load(['--admin-allow-cidrs', '10.0.0.0/8, fd00::/8', '--admin-token-file', '/t'], { '/t': 'a-long-admin-token-value\n' });
    expect(c.adminAllowCidrs).toEqual(['10.0.0.0/8', 'fd00::/8']);
    expect(c.adminToken).toBe('a-long-admin-token-value');
    expect(describeConfig(c)['adminToken']).toBe('[redacted]');
    expect(() => load(['--admin-allow-cidrs', '10.0.0.0/40'])).toThrow(/adminAllowCidrs/);
    expect(() => load(['--admin-token', 'short'])).toThrow(/adminToken/);
  });

  it('otlp tracing needs an endpoint', () => {
    expect(() => load(['--tracing', 'otlp'])).toThrow(/otlpTracesUrl/);
    expect(load(['--tracing', 'otlp', '--otlp-traces-url', 'http://collector:4318/v1/traces']).otlpTracesUrl).toBe('http://collector:4318/v1/traces');
  });
});
