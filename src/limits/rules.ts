// Limit rules and their arithmetic (DESIGN §5). Pure: no sockets, no clocks.
//
// The gateway caps SSH tunnels at 3 per session token and 20 per sandbox, but it counts per
// process; with several replicas the caps multiply. The sidecar enforces the same caps once for the
// whole cluster, so these defaults mirror the gateway's own.

import { OhsError } from '../errors.ts';

/** What a rule counts by: the session token, the sandbox, or the client's address. */
export type LimitKeyKind = 'token' | 'sandbox' | 'client-address';

export interface LimitRule {
  /** Stable identifier: metric label, Redis key part, named in refusals. */
  name: string;
  /** Traffic class the rule applies to (classification output, e.g. `ssh-tunnel`). */
  trafficClass: 'ssh-tunnel' | 'exec' | string;
  key: LimitKeyKind;
  /** Concurrent connections allowed per key, cluster-wide. 0 refuses every connection of the class. */
  max: number;
  /** The gateway's own RESOURCE_EXHAUSTED message for this cap, used on gRPC refusals (ForwardTcp). */
  gatewayMessage?: string;
}

// Messages from upstream's `acquire_ssh_connection_slots` (grpc/sandbox.rs at HEAD).
export const DEFAULT_LIMIT_RULES: readonly LimitRule[] = Object.freeze([
  Object.freeze({ name: 'ssh-per-token', trafficClass: 'ssh-tunnel', key: 'token', max: 3, gatewayMessage: 'SSH session connection limit reached' }),
  Object.freeze({ name: 'ssh-per-sandbox', trafficClass: 'ssh-tunnel', key: 'sandbox', max: 20, gatewayMessage: 'sandbox SSH connection limit reached' }),
]);

/**
 * The class whose rules and counters a traffic class uses. A 2026-08 `ForwardTcp` is what a seed
 * `CONNECT /connect/ssh` was (the gateway counts both in the same per-token and per-sandbox maps,
 * reference §2.3), so both share one set of cluster-wide slots.
 */
export function limitClassOf(cls: string): string {
  return cls === 'tcp-forward' ? 'ssh-tunnel' : cls;
}

/** The rules that apply to a traffic class, in configuration order. */
export function rulesFor(cls: string, rules: readonly LimitRule[]): LimitRule[] {
  return rules.filter((r) => r.trafficClass === cls);
}

/**
 * The share of a cluster-wide limit one replica enforces on its own while Redis is unavailable.
 * Rounded up, so a limit is never split into zeros (3 over 4 replicas is 1 each, not 0): the cluster
 * may briefly admit a little more than `max`, never lock everyone out. A caller that cannot count
 * live replicas (0, NaN) gets the whole limit.
 */
export function localShare(max: number, liveReplicas: number): number {
  const replicas = Number.isFinite(liveReplicas) ? Math.max(1, Math.floor(liveReplicas)) : 1;
  return Math.ceil(max / replicas);
}

/** The values a connection may be counted by; a rule whose key is absent does not apply. */
export interface LimitKeys {
  token?: string | undefined;
  sandboxId?: string | undefined;
  clientAddress?: string | undefined;
}

export function keyValue(rule: LimitRule, keys: LimitKeys): string | undefined {
  const v = rule.key === 'token' ? keys.token : rule.key === 'sandbox' ? keys.sandboxId : keys.clientAddress;
  return v === undefined || v === '' ? undefined : v;
}

const KEY_WORDS: Readonly<Record<LimitKeyKind, string>> = {
  token: 'session token',
  sandbox: 'sandbox',
  'client-address': 'client address',
};

/** "at most 3 concurrent ssh tunnels per session token" */
export function describeRule(rule: LimitRule): string {
  const what = rule.trafficClass === 'ssh-tunnel' ? 'ssh tunnels' : `${rule.trafficClass} connections`;
  return `at most ${rule.max} concurrent ${what} per ${KEY_WORDS[rule.key]}`;
}

/** The refusal a client sees (429 / RESOURCE_EXHAUSTED through errors.ts). Never carries the key value. */
export function limitError(rule: LimitRule, enforcedMax = rule.max): OhsError {
  const local = enforcedMax === rule.max ? '' : ` (${enforcedMax} on this replica while redis is unavailable)`;
  return new OhsError('OHS_ERR_LIMIT', `limit ${rule.name} reached: ${describeRule(rule)}${local}`, {
    details: { rule: rule.name, max: rule.max, enforcedMax },
  });
}

/** Rejects rule sets that would make Redis keys or metrics ambiguous. */
export function validateRules(rules: readonly LimitRule[]): void {
  const seen = new Set<string>();
  for (const r of rules) {
    if (!/^[\w.-]+$/.test(r.name)) throw new OhsError('OHS_ERR_CONFIG', `limit rule name ${JSON.stringify(r.name)} must match [A-Za-z0-9_.-]+`);
    if (seen.has(r.name)) throw new OhsError('OHS_ERR_CONFIG', `duplicate limit rule ${r.name}`);
    seen.add(r.name);
    if (!Number.isInteger(r.max) || r.max < 0) throw new OhsError('OHS_ERR_CONFIG', `limit rule ${r.name}: max must be a non-negative integer`);
  }
}
