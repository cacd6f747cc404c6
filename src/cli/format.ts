// Text renderings of `status` and `explain` for a terminal. Pure: JSON in, lines out.
import type { ClusterStatus } from '../admin/cluster-status.ts';
import type { Explanation } from '../admin/explain.ts';
import type { OwnerLayers } from '../ownership/types.ts';

export function seconds(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '-';
  const s = Math.abs(ms) / 1000;
  const text = s < 10 ? `${s.toFixed(1)} s` : s < 120 ? `${Math.round(s)} s` : s < 7200 ? `${Math.round(s / 60)} min` : `${Math.round(s / 3600)} h`;
  return ms < 0 ? `-${text}` : text;
}

/** Left-aligned columns separated by two spaces; the header row first. */
export function table(rows: string[][]): string[] {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0))).join('  ').trimEnd());
}

export function renderStatus(st: ClusterStatus & { self?: string }): string {
  const out: string[] = [];
  const seen = st.self ? `; seen from ${st.self}` : '';
  out.push(`cluster: ${st.healthy ? 'HEALTHY' : 'UNHEALTHY'} (${st.totals.live}/${st.totals.replicas} replicas live, ${st.totals.ownedSandboxes} sandboxes owned${seen})`);
  const redis = st.store.redis === null ? 'not configured' : st.store.redis ? 'up' : 'DOWN';
  const lease = st.leaseHolder ? `${st.leaseHolder.holder} (renewed ${seconds(st.leaseHolder.renewedAgoMs)} ago)` : 'none seen';
  const postgres = st.store.postgres === null ? 'none (embedded: in-memory store)' : st.store.postgres ? 'up' : 'DOWN';
  out.push(`store: postgres ${postgres}, redis ${redis}    reconciler lease: ${lease}`);
  out.push('');
  const rows = [['REPLICA', 'STATE', 'HEARTBEAT', 'LEASE LEFT', 'VERSION', 'PEER', 'OWNED', 'SESSIONS', 'TUNNELS', 'STREAMS', 'HELD', 'PENDING', 'POLICY', 'SHADOWS OUT/IN']];
  for (const r of st.replicas) {
    const rt = r.runtime;
    rows.push([
      r.replicaId,
      r.live ? r.state : 'DEAD',
      r.heartbeatAgeMs === null ? '-' : `${seconds(r.heartbeatAgeMs)} ago`,
      r.leaseLeftMs === null ? '-' : r.leaseLeftMs < 0 ? `expired ${seconds(-r.leaseLeftMs)} ago` : seconds(r.leaseLeftMs),
      r.version || '-',
      r.peerUrl || '-',
      String(r.owned),
      rt ? String(rt.sessions) : String(r.sessionsReported),
      rt ? String(rt.tunnels) : '-',
      rt ? String(rt.streams) : '-',
      rt ? String(rt.heldRequests) : '-',
      rt ? String(rt.pendingStoreWrites) : '-',
      rt ? rt.limitPolicy : r.live && r.runtimeError ? '(no answer)' : '-',
      rt ? `${rt.shadowSessions}/${rt.shadowsHosted}` : '-',
    ]);
  }
  out.push(...table(rows));
  out.push('');
  const t = st.totals;
  const n = (v: number | null): string => (v === null ? '-' : String(v));
  out.push(`totals: tunnels ${n(t.tunnels)}, streams ${n(t.streams)}, held requests ${n(t.heldRequests)}, pending store writes ${n(t.pendingStoreWrites)}, owner rows on expired replicas ${t.orphanedOwners}`);
  const policies = [...new Set(Object.values(st.limitPolicies))];
  out.push(`limit policy: ${policies.length === 0 ? 'unknown (no replica answered)' : policies.length === 1 ? `${policies[0]} on every replica that answered` : Object.entries(st.limitPolicies).map(([id, p]) => `${id}=${p}`).join(', ')}`);
  if (st.topLimitUsers.length > 0) {
    out.push('largest limit users (live slots; token keys are digests):');
    out.push(...table(st.topLimitUsers.map((u) => [`  ${u.rule}`, u.key, `${u.held} slot${u.held === 1 ? '' : 's'}`])));
  } else {
    out.push('largest limit users: none (no slot held)');
  }
  for (const p of st.problems) out.push(`PROBLEM: ${p}`);
  for (const w of st.warnings) out.push(`warning: ${w}`);
  return `${out.join('\n')}\n`;
}

function ownerText(o: { replicaId: string; epoch: number } | null): string {
  return o ? `${o.replicaId}@${o.epoch}` : 'no owner';
}

function layerTexts(l: OwnerLayers | null): [string, string, string] {
  if (!l) return ['-', '-', '-'];
  const memory = l.memory.state === 'hit' ? `${ownerText(l.memory.owner)} (age ${seconds(l.memory.ageMs)}, ${seconds(l.memory.ttlLeftMs)} left)` : 'miss';
  const redis =
    l.redis.state === 'hit' ? `${ownerText(l.redis.owner)} (${seconds(l.redis.ttlLeftMs)} left)` : l.redis.state === 'not-configured' ? 'not configured' : l.redis.state;
  const pg =
    l.postgres.state === 'row'
      ? `${l.postgres.replicaId}@${l.postgres.epoch} ${l.postgres.live ? `live, ${seconds(l.postgres.leaseLeftMs)} left` : 'EXPIRED'}`
      : l.postgres.state === 'none'
        ? 'no row'
        : 'unavailable';
  return [memory, redis, pg];
}

export function renderExplanation(e: Explanation): string {
  const out: string[] = [];
  out.push(`sandbox ${e.sandboxId}${e.query !== e.sandboxId ? ` (${e.query})` : ''}`);
  out.push(`summary: ${e.summary}`);
  out.push('');
  const row = e.gateway.row;
  if (row === 'unknown') out.push("gateway row: unknown (the gateway's table cannot be read)");
  else if (row === null) out.push('gateway row: none (no such sandbox)');
  else {
    const conds = row.conditions.map((c) => `${c.type}=${c.status}${c.reason ? ` (${c.reason}${c.message ? `: ${c.message}` : ''})` : ''}`).join('; ');
    out.push(`gateway row: ${row.phase} (${row.layout} layout), written ${seconds(row.ageMs)} ago${conds ? `; conditions: ${conds}` : ''}`);
  }
  const lease = e.gateway.leaseHolder;
  out.push(`reconciler lease: ${lease === 'unknown' ? 'unknown' : lease === null ? 'none (seed gateway or SQLite)' : `${lease.holder}, renewed ${seconds(lease.renewedAgoMs)} ago`}`);
  if (e.owner) {
    const holds = e.owner.ownerHoldsSession === null ? 'unknown (owner not asked)' : e.owner.ownerHoldsSession ? 'yes' : 'NO';
    out.push(`owner (Postgres): ${e.owner.replicaId} epoch ${e.owner.epoch}, claimed ${seconds(e.owner.claimedAgeMs)} ago, lease ${e.owner.live ? 'live' : 'EXPIRED'}; the owner holds the session at that epoch: ${holds}`);
  } else {
    out.push('owner (Postgres): no row');
  }
  out.push('');
  const rows = [['REPLICA', 'SESSION', 'IN-PROCESS CACHE', 'REDIS', 'POSTGRES', 'LAST KNOWN', 'DECISION NOW']];
  for (const r of e.replicas) {
    const v = r.view;
    if (!v) {
      rows.push([r.replicaId, '-', '-', '-', '-', '-', `(no answer: ${r.error ?? '?'})`]);
      continue;
    }
    const [memory, redis, pg] = layerTexts(v.layers);
    const d = v.decision;
    rows.push([
      r.replicaId,
      v.session ? `epoch ${v.session.epoch}${v.claimInFlight ? ' (claiming)' : ''}` : v.claimInFlight ? 'claiming' : '-',
      memory,
      redis,
      pg,
      v.lastKnown ? `${v.lastKnown.target} (${seconds(v.lastKnown.ageMs)} ago)` : '-',
      d.action === 'forward' && d.to ? `forward → ${d.to.replicaId}@${d.to.epoch}` : d.action,
    ]);
  }
  out.push(...table(rows));
  out.push('');
  out.push('why:');
  for (const r of e.replicas) if (r.view) out.push(`  ${r.replicaId}: ${r.view.decision.why}`);
  const shadowOwner = e.replicas.find((r) => r.view?.shadows);
  if (shadowOwner?.view?.shadows) {
    const s = shadowOwner.view.shadows;
    const on = s.on.map((x) => `${x.replicaId} ${x.accepted ? 'registered' : `pending${x.failures ? ` (${x.failures} failures)` : ''}`}`).join(', ');
    out.push(`shadows (kept by ${shadowOwner.replicaId} for epoch ${s.epoch}, ${seconds(s.ageMs)}): ${on || 'none (single replica)'}`);
  }
  out.push(`slots: ${e.slots.length === 0 ? 'no sandbox-keyed limit rule' : e.slots.map((s) => `${s.rule} ${s.held < 0 ? '?' : s.held}/${s.max} (${s.scope})`).join(', ')}`);
  return `${out.join('\n')}\n`;
}
