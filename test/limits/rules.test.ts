import { describe, expect, it } from 'vitest';
import { httpStatusFor, grpcStatusFor, GrpcStatus } from '../../src/errors.ts';
import { DEFAULT_LIMIT_RULES, describeRule, keyValue, limitClassOf, limitError, localShare, rulesFor, validateRules } from '../../src/limits/rules.ts';
import type { LimitRule } from '../../src/limits/rules.ts';

describe('limit rules', () => {
  it('default to the gateway caps: 3 ssh tunnels per token, 20 per sandbox', () => {
    expect(DEFAULT_LIMIT_RULES).toEqual([
      { name: 'ssh-per-token', trafficClass: 'ssh-tunnel', key: 'token', max: 3, gatewayMessage: 'SSH session connection limit reached' },
      { name: 'ssh-per-sandbox', trafficClass: 'ssh-tunnel', key: 'sandbox', max: 20, gatewayMessage: 'sandbox SSH connection limit reached' },
    ]);
    expect(() => validateRules(DEFAULT_LIMIT_RULES)).not.toThrow();
  });

  it('ForwardTcp (2026-08) counts against the same rules as seed CONNECT tunnels', () => {
    expect(limitClassOf('tcp-forward')).toBe('ssh-tunnel');
    expect(limitClassOf('exec')).toBe('exec');
    expect(rulesFor(limitClassOf('tcp-forward'), DEFAULT_LIMIT_RULES).map((r) => r.name)).toEqual(['ssh-per-token', 'ssh-per-sandbox']);
  });

  it('selects the rules of a traffic class in configuration order', () => {
    const rules: LimitRule[] = [
      ...DEFAULT_LIMIT_RULES,
      { name: 'exec-per-sandbox', trafficClass: 'exec', key: 'sandbox', max: 10 },
      { name: 'ssh-per-client', trafficClass: 'ssh-tunnel', key: 'client-address', max: 50 },
    ];
    expect(rulesFor('ssh-tunnel', rules).map((r) => r.name)).toEqual(['ssh-per-token', 'ssh-per-sandbox', 'ssh-per-client']);
    expect(rulesFor('exec', rules).map((r) => r.name)).toEqual(['exec-per-sandbox']);
    expect(rulesFor('unary', rules)).toEqual([]);
  });

  it('splits a limit over live replicas rounding up, never below one share of the whole', () => {
    expect(localShare(3, 1)).toBe(3);
    expect(localShare(3, 2)).toBe(2);
    expect(localShare(3, 3)).toBe(1);
    expect(localShare(3, 4)).toBe(1);
    expect(localShare(20, 3)).toBe(7);
    expect(localShare(20, 20)).toBe(1);
    expect(localShare(0, 2)).toBe(0);
    // No replica count known: the replica enforces the whole limit.
    expect(localShare(3, 0)).toBe(3);
    expect(localShare(3, -1)).toBe(3);
    expect(localShare(3, Number.NaN)).toBe(3);
    expect(localShare(20, 2.5)).toBe(10);
  });

  it('takes the key a rule counts by from the request, ignoring empty values', () => {
    const [perToken, perSandbox] = DEFAULT_LIMIT_RULES as [LimitRule, LimitRule];
    const perClient: LimitRule = { name: 'c', trafficClass: 'ssh-tunnel', key: 'client-address', max: 1 };
    const keys = { token: 'tok', sandboxId: 'sbx', clientAddress: '10.0.0.1' };
    expect(keyValue(perToken, keys)).toBe('tok');
    expect(keyValue(perSandbox, keys)).toBe('sbx');
    expect(keyValue(perClient, keys)).toBe('10.0.0.1');
    expect(keyValue(perToken, { token: '' })).toBeUndefined();
    expect(keyValue(perSandbox, {})).toBeUndefined();
  });

  it('refuses with a 429 / RESOURCE_EXHAUSTED error naming the rule, never the key', () => {
    const [perToken, perSandbox] = DEFAULT_LIMIT_RULES as [LimitRule, LimitRule];
    const err = limitError(perToken);
    expect(err.code).toBe('OHS_ERR_LIMIT');
    expect(err.message).toBe('limit ssh-per-token reached: at most 3 concurrent ssh tunnels per session token');
    expect(httpStatusFor(err)).toBe(429);
    expect(grpcStatusFor(err)).toBe(GrpcStatus.RESOURCE_EXHAUSTED);
    expect(limitError(perSandbox, 10).message).toBe(
      'limit ssh-per-sandbox reached: at most 20 concurrent ssh tunnels per sandbox (10 on this replica while redis is unavailable)',
    );
    expect(describeRule({ name: 'e', trafficClass: 'exec', key: 'client-address', max: 5 })).toBe('at most 5 concurrent exec connections per client address');
  });

  it('rejects duplicate names, names unfit for keys and metric labels, and bad maxima', () => {
    const ok: LimitRule = { name: 'a', trafficClass: 'exec', key: 'sandbox', max: 1 };
    expect(() => validateRules([ok, ok])).toThrow(/duplicate limit rule a/);
    expect(() => validateRules([{ ...ok, name: 'a b' }])).toThrow(/must match/);
    expect(() => validateRules([{ ...ok, name: '' }])).toThrow(/must match/);
    expect(() => validateRules([{ ...ok, max: -1 }])).toThrow(/non-negative integer/);
    expect(() => validateRules([{ ...ok, max: 1.5 }])).toThrow(/non-negative integer/);
    expect(() => validateRules([{ ...ok, max: 0 }])).not.toThrow();
  });
});
