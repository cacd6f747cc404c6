// `explain SANDBOX`: every layer's answer for one sandbox with its age, each live replica's own
// view and the decision it would take right now, the gateway's row and lease, and the slots held.
// Served by any sidecar (`GET /v1/explain`) or gathered by the CLI with the peer secret.
import type { GatewayRowView, SandboxLocalView, SlotView } from './inspect.ts';
import type { PeerInspectAnswer } from './peer-inspect.ts';

export interface ExplainSources {
  /** Live replicas from the store (id + peer URL); rejects when the store is down. */
  liveReplicas: () => Promise<Array<{ replicaId: string; peerUrl: string }>>;
  /** This process's own replica, answered without a peer hop (absent in the CLI). */
  self?: { replicaId: string; view: (sandboxId: string, row: GatewayRowView | null | undefined) => Promise<SandboxLocalView> };
  peerView?: (replica: { replicaId: string; peerUrl: string }, sandboxId: string) => Promise<PeerInspectAnswer>;
  gatewayRow: (sandboxId: string) => Promise<GatewayRowView | null | undefined>;
  reconcilerLease: () => Promise<{ holder: string; updatedAtMs: number } | null | undefined>;
  slots: (sandboxId: string) => Promise<SlotView[]>;
  /** Resolves a `workspace/name` or a bare name to a sandbox id (undefined: cannot tell). */
  idByName?: (name: string, workspace: string) => Promise<string | null | undefined>;
}

export interface ReplicaExplain {
  replicaId: string;
  view: SandboxLocalView | null;
  error: string | null;
}

export interface Explanation {
  sandboxId: string;
  /** What the operator typed, when it was a name. */
  query: string;
  generatedAtMs: number;
  gateway: {
    /** null: no such row; 'unknown': the gateway's table cannot be read. */
    row: GatewayRowView | null | 'unknown';
    leaseHolder: { holder: string; renewedAgoMs: number } | null | 'unknown';
  };
  replicas: ReplicaExplain[];
  /** The owner as Postgres has it, and whether the owner itself holds the session. */
  owner: { replicaId: string; epoch: number; live: boolean; claimedAgeMs: number; ownerHoldsSession: boolean | null } | null;
  slots: SlotView[];
  /** One line: where a request for this sandbox goes right now. */
  summary: string;
}

const ID_PATTERN = /^[A-Za-z0-9._-]{1,128}$/;

export async function resolveSandboxQuery(query: string, idByName: ExplainSources['idByName']): Promise<string> {
  if (!idByName) return query;
  const slash = query.indexOf('/');
  const [workspace, name] = slash > 0 ? [query.slice(0, slash), query.slice(slash + 1)] : ['default', query];
  const byName = await idByName(name, workspace).catch(() => undefined);
  return typeof byName === 'string' ? byName : query;
}

export async function collectExplanation(query: string, src: ExplainSources): Promise<Explanation> {
  const sandboxId = await resolveSandboxQuery(query, src.idByName);
  if (!ID_PATTERN.test(sandboxId)) throw new Error(`not a sandbox id or name: ${JSON.stringify(query)}`);
  const [row, lease, slots] = await Promise.all([
    src.gatewayRow(sandboxId).catch(() => undefined),
    src.reconcilerLease().catch(() => undefined),
    src.slots(sandboxId).catch(() => []),
  ]);
  let live: Array<{ replicaId: string; peerUrl: string }> = [];
  try {
    live = await src.liveReplicas();
  } catch {
    // the store is down: ask ourselves only
  }
  if (src.self && !live.some((r) => r.replicaId === src.self?.replicaId)) live.push({ replicaId: src.self.replicaId, peerUrl: '' });
  const replicas: ReplicaExplain[] = await Promise.all(
    live.map(async (r): Promise<ReplicaExplain> => {
      try {
        if (src.self && r.replicaId === src.self.replicaId) return { replicaId: r.replicaId, view: await src.self.view(sandboxId, row), error: null };
        if (!src.peerView) return { replicaId: r.replicaId, view: null, error: 'not asked (no peer secret)' };
        const answer = await src.peerView(r, sandboxId);
        return { replicaId: r.replicaId, view: answer.sandbox ?? null, error: answer.sandbox ? null : 'no sandbox view in the answer' };
      } catch (err) {
        return { replicaId: r.replicaId, view: null, error: (err as Error).message };
      }
    }),
  );
  replicas.sort((a, b) => a.replicaId.localeCompare(b.replicaId));
  const pgLayer = replicas.map((r) => r.view?.layers?.postgres).find((l) => l !== undefined && l.state !== 'unavailable');
  const ownerRow = pgLayer?.state === 'row' ? pgLayer : null;
  const ownerView = ownerRow ? replicas.find((r) => r.replicaId === ownerRow.replicaId) : undefined;
  const owner = ownerRow
    ? {
        replicaId: ownerRow.replicaId,
        epoch: ownerRow.epoch,
        live: ownerRow.live,
        claimedAgeMs: ownerRow.claimedAgeMs,
        ownerHoldsSession: ownerView?.view ? ownerView.view.session?.epoch === ownerRow.epoch : null,
      }
    : null;
  return {
    sandboxId,
    query,
    generatedAtMs: Date.now(),
    gateway: {
      row: row === undefined ? 'unknown' : row,
      leaseHolder: lease === undefined ? 'unknown' : lease === null ? null : { holder: lease.holder, renewedAgoMs: Date.now() - lease.updatedAtMs },
    },
    replicas,
    owner,
    slots,
    summary: summarize(owner, replicas, row),
  };
}

function summarize(owner: Explanation['owner'], replicas: ReplicaExplain[], row: GatewayRowView | null | undefined): string {
  if (row === null) return 'the gateway has no such sandbox: every replica lets its local gateway answer NOT_FOUND';
  const actions = new Set(replicas.map((r) => r.view?.decision.action).filter((a) => a !== undefined));
  if (owner && owner.live) {
    const held = owner.ownerHoldsSession === false ? `, but ${owner.replicaId} holds no session at that epoch (a stale record: peers are answered "not owner")` : '';
    const phase = row && row.phase !== 'Ready' ? `; the gateway row says ${row.phase}` : '';
    return `owned by ${owner.replicaId} at epoch ${owner.epoch}: requests through ${owner.replicaId} go to its own gateway, through any other replica they are forwarded to it${held}${phase}`;
  }
  if (actions.has('hold')) {
    const holding = replicas.filter((r) => r.view?.decision.action === 'hold').map((r) => r.replicaId);
    return `no live owner: ${holding.join(', ')} would hold a request for an ownership event (the supervisor reconnecting); the others let their local gateway answer`;
  }
  if (owner && !owner.live) return `the owner row names ${owner.replicaId}@${owner.epoch}, whose lease expired: no live owner until the supervisor reconnects`;
  return 'no owner: the supervisor is not connected anywhere; each replica lets its local gateway answer';
}
