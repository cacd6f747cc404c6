// What one replica would do right now with an owner-bound request (exec, ForwardTcp, CONNECT, logs…)
// for a sandbox, and why: the same rules as OwnerRouter.resolve/resolveHeld (DESIGN §4), evaluated
// over facts gathered without side effects, so `explain` never changes what it explains. Pure.

export type RouteAction = 'local' | 'forward' | 'hold' | 'pass-through';

export interface RouteDecision {
  action: RouteAction;
  /** forward: the replica and epoch the request goes to. */
  to?: { replicaId: string; epoch: number };
  /** One sentence an operator can read. */
  why: string;
}

export interface DecisionFacts {
  /** The replica deciding. */
  self: string;
  /** The local gateway routes sessions itself: the sidecar steps aside. */
  nativeHa: boolean;
  /** Epoch of the supervisor session held by this replica, if any. */
  localEpoch: number | undefined;
  /** A claim for the sandbox is being written on this replica. */
  claimInFlight: boolean;
  /** The owner row as the store sees it now; 'unknown' when the store could not be read. */
  owner: { replicaId: string; epoch: number; live: boolean; source: string } | null | 'unknown';
  /** The last owner this replica resolved, and how long ago. */
  lastKnown: { replicaId: string | null; epoch: number | null; ageMs: number } | undefined;
  ownerWaitMs: number;
  /** How many hold bounds a previous owner counts as evidence that a new one is coming. */
  ownerMemoryFactor: number;
  /** Whether the gateway's table has the sandbox (undefined: unknown). */
  sandboxExists: boolean | undefined;
  /** The gateway row's phase name, when known. */
  phase: string | undefined;
}

const notReadyNote = (phase: string | undefined): string =>
  phase !== undefined && phase !== 'Ready' ? `; the gateway's row says ${phase}, so a "not ready" refusal would be held up to 10 s for Ready and sent again` : '';

export function decideRoute(f: DecisionFacts): RouteDecision {
  if (f.nativeHa) return { action: 'pass-through', why: 'the local gateway routes supervisor sessions itself (native HA): the sidecar steps aside' };
  const owner = f.owner === 'unknown' ? undefined : f.owner;
  const liveOwner = owner && owner.live ? owner : null;
  if (f.localEpoch !== undefined && (!liveOwner || liveOwner.replicaId === f.self || f.localEpoch >= liveOwner.epoch)) {
    return { action: 'local', why: `this replica holds the supervisor session (epoch ${f.localEpoch}): its own gateway serves it${notReadyNote(f.phase)}` };
  }
  if (liveOwner && liveOwner.replicaId === f.self) {
    return {
      action: 'local',
      why: `the ${liveOwner.source} record names this replica (epoch ${liveOwner.epoch})${f.claimInFlight ? ' and its claim is being written' : ' but no session is registered here: a peer asking at that epoch is answered "not owner"'}`,
    };
  }
  if (liveOwner) {
    return {
      action: 'forward',
      to: { replicaId: liveOwner.replicaId, epoch: liveOwner.epoch },
      why: `${liveOwner.replicaId} owns it at epoch ${liveOwner.epoch} (${liveOwner.source}): forwarded over the peer port${notReadyNote(f.phase)}`,
    };
  }
  const storeDown = f.owner === 'unknown';
  const known = f.lastKnown;
  const recentlyOwned = known !== undefined && known.ageMs < f.ownerWaitMs * f.ownerMemoryFactor;
  if (storeDown) {
    if (known && known.replicaId !== null && known.epoch !== null) {
      return { action: 'forward', to: { replicaId: known.replicaId, epoch: known.epoch }, why: `the store cannot be read: routing continues to the last known owner ${known.replicaId}@${known.epoch}` };
    }
    return { action: 'pass-through', why: 'the store cannot be read and no owner was known here: the local gateway answers' };
  }
  const expired = owner && !owner.live ? ` (${owner.replicaId}@${owner.epoch} has an expired lease)` : '';
  if (!recentlyOwned) {
    return {
      action: 'pass-through',
      why: `no live owner${expired} and none seen here in the last ${Math.round((f.ownerWaitMs * f.ownerMemoryFactor) / 1000)} s: the local gateway answers as it would without the sidecar (404/412/UNAVAILABLE)`,
    };
  }
  if (f.sandboxExists === false) return { action: 'pass-through', why: "no live owner and the gateway's table has no such sandbox: the local gateway answers NOT_FOUND" };
  if (known && known.replicaId !== null && known.epoch !== null) {
    return {
      action: 'forward',
      to: { replicaId: known.replicaId, epoch: known.epoch },
      why: `no live owner${expired}, but ${known.replicaId}@${known.epoch} owned it ${Math.round(known.ageMs / 1000)} s ago: tried first (its lease may only have lapsed); "not owner" or unreachable → hold`,
    };
  }
  if (f.ownerWaitMs <= 0) return { action: 'pass-through', why: 'no live owner and holding is off (ownerWaitMs 0): the local gateway answers' };
  return {
    action: 'hold',
    why: `no live owner${expired}; this replica saw one ${known ? Math.round(known.ageMs / 1000) : '?'} s ago, so the request waits up to ${f.ownerWaitMs} ms for an ownership event (a supervisor reconnecting), then goes to the local gateway`,
  };
}
