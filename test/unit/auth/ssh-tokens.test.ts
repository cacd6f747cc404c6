// The SSH token check: `check` reads the gateway's row (once per token and TTL), `cachedVerdict`
// answers from what was read without a query, or says it cannot.
import { describe, expect, it } from 'vitest';
import { createSshTokenCheck } from '../../../src/auth/ssh-tokens.ts';
import type { GatewayObjects } from '../../../src/ownership/gateway-objects.ts';
import type { SshSessionPayload } from '../../../src/wire/gateway-payloads.ts';

/** A gateway table of the given rows (`undefined`: the table cannot be read), counting reads. */
function table(rows: Record<string, SshSessionPayload | null | undefined>): { objects: GatewayObjects; reads: string[] } {
  const reads: string[] = [];
  const objects = {
    sshSession: async (token: string) => {
      reads.push(token);
      return token in rows ? rows[token] : null;
    },
  } as unknown as GatewayObjects;
  return { objects, reads };
}

describe('SSH token check', () => {
  const row: SshSessionPayload = { sandboxId: 'sbx-a', expiresAtMs: 0, revoked: false };

  it('answers from a row read within the TTL without a query, and says so when it cannot', async () => {
    let clock = 1_000;
    const { objects, reads } = table({ 'tok-a': row });
    const tokens = createSshTokenCheck(objects, { cacheTtlMs: 2_000, now: () => clock });

    expect(tokens.cachedVerdict('tok-a', 'sbx-a')).toBeUndefined();
    expect(await tokens.check(' tok-a ', 'sbx-a')).toBe('valid');
    expect(reads).toEqual(['tok-a']);
    expect(tokens.cachedVerdict('tok-a', 'sbx-a')).toBe('valid');
    expect(tokens.cachedVerdict('tok-a ', 'sbx-a')).toBe('valid');
    // The same row, for another sandbox: not valid there.
    expect(tokens.cachedVerdict('tok-a', 'sbx-b')).toBe('invalid');
    expect(reads).toEqual(['tok-a']);

    clock += 2_000;
    expect(tokens.cachedVerdict('tok-a', 'sbx-a')).toBeUndefined();
    expect(await tokens.check('tok-a', 'sbx-a')).toBe('valid');
    expect(reads).toEqual(['tok-a', 'tok-a']);
  });

  it('keeps a token the table does not have as invalid, never one it could not read, and an empty token is invalid at once', async () => {
    const { objects, reads } = table({ unreadable: undefined });
    const tokens = createSshTokenCheck(objects, { now: () => 0 });

    expect(await tokens.check('junk', 'sbx-a')).toBe('invalid');
    expect(tokens.cachedVerdict('junk', 'sbx-a')).toBe('invalid');
    expect(await tokens.check('unreadable', 'sbx-a')).toBe('unknown');
    expect(tokens.cachedVerdict('unreadable', 'sbx-a')).toBeUndefined();
    expect(tokens.cachedVerdict('  ', 'sbx-a')).toBe('invalid');
    expect(tokens.cachedVerdict(undefined, 'sbx-a')).toBe('invalid');
    expect(reads).toEqual(['junk', 'unreadable']);
  });

  it('a revoked or expired row is invalid from the cache as from the table', async () => {
    let clock = 0;
    const { objects } = table({ revoked: { ...row, revoked: true }, expiring: { ...row, expiresAtMs: 500 } });
    const tokens = createSshTokenCheck(objects, { cacheTtlMs: 10_000, now: () => clock });

    expect(await tokens.check('revoked', 'sbx-a')).toBe('invalid');
    expect(tokens.cachedVerdict('revoked', 'sbx-a')).toBe('invalid');
    expect(await tokens.check('expiring', 'sbx-a')).toBe('valid');
    clock = 501;
    expect(tokens.cachedVerdict('expiring', 'sbx-a')).toBe('invalid');
  });
});
