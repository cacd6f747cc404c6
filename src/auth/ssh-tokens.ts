// Checks an SSH session token against the gateway's own `ssh_session` row before a connection
// slot is taken for it (DESIGN §5: a slot only for a token valid for that sandbox), so requests
// with junk tokens consume nothing; the gateway still makes the final decision itself.
import type { GatewayObjects } from '../ownership/gateway-objects.ts';
import { sshSessionValidFor, type SshSessionPayload } from '../wire/gateway-payloads.ts';

/** `unknown`: the gateway's table could not be read, so the slot is taken and the gateway decides. */
export type TokenVerdict = 'valid' | 'invalid' | 'unknown';

export interface SshTokenCheckOptions {
  /** How long a row read is reused (default 2 s): a flood of one token costs one query per period. */
  cacheTtlMs?: number;
  /** Most rows kept (default 10 000); the oldest go first. */
  maxEntries?: number;
  now?: () => number;
}

export interface SshTokenCheck {
  check(token: string | undefined, sandboxId: string): Promise<TokenVerdict>;
  /** `check`'s verdict when it needs no query (the row was read within `cacheTtlMs`), else undefined. */
  cachedVerdict(token: string | undefined, sandboxId: string): TokenVerdict | undefined;
}

export function createSshTokenCheck(objects: GatewayObjects, opts: SshTokenCheckOptions = {}): SshTokenCheck {
  const ttl = opts.cacheTtlMs ?? 2_000;
  const max = opts.maxEntries ?? 10_000;
  const now = opts.now ?? Date.now;
  const cache = new Map<string, { row: SshSessionPayload | null; atMs: number }>();
  const inflight = new Map<string, Promise<SshSessionPayload | null | undefined>>();

  /** The row read within the last `ttl` (null: no such token), or undefined. */
  const fresh = (token: string): { row: SshSessionPayload | null } | undefined => {
    const hit = cache.get(token);
    return hit && now() - hit.atMs < ttl ? hit : undefined;
  };

  const read = async (token: string): Promise<SshSessionPayload | null | undefined> => {
    const hit = fresh(token);
    if (hit) return hit.row;
    let p = inflight.get(token);
    if (!p) {
      p = objects.sshSession(token).finally(() => inflight.delete(token));
      inflight.set(token, p);
    }
    const row = await p;
    if (row !== undefined) {
      cache.delete(token);
      cache.set(token, { row, atMs: now() });
      while (cache.size > max) cache.delete(cache.keys().next().value as string);
    }
    return row;
  };

  const verdictOf = (row: SshSessionPayload | null | undefined, sandboxId: string): TokenVerdict => {
    if (row === undefined) return 'unknown';
    if (row === null) return 'invalid';
    return sshSessionValidFor(row, sandboxId, now()) ? 'valid' : 'invalid';
  };

  return {
    async check(rawToken, sandboxId) {
      // The gateway trims the token before looking it up (upstream ForwardTcp handler).
      const token = rawToken?.trim() ?? '';
      if (token === '') return 'invalid';
      return verdictOf(await read(token), sandboxId);
    },
    cachedVerdict(rawToken, sandboxId) {
      const token = rawToken?.trim() ?? '';
      if (token === '') return 'invalid';
      const hit = fresh(token);
      return hit ? verdictOf(hit.row, sandboxId) : undefined;
    },
  };
}
