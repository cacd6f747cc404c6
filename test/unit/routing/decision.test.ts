// What `explain` says a replica would do right now: the router's rules over gathered facts.
import { describe, expect, it } from 'vitest';
import { decideRoute, type DecisionFacts } from '../../../src/routing/decision.ts';

const base: DecisionFacts = {
  self: 'r0',
  nativeHa: false,
  localEpoch: undefined,
  claimInFlight: false,
  owner: null,
  lastKnown: undefined,
  ownerWaitMs: 15_000,
  ownerMemoryFactor: 4,
  sandboxExists: true,
  phase: 'Ready',
};

describe('decideRoute', () => {
  it('the replica holding the session serves it locally', () => {
    expect(decideRoute({ ...base, localEpoch: 3, owner: { replicaId: 'r0', epoch: 3, live: true, source: 'Postgres' } }).action).toBe('local');
    // A session at least as new as the record wins over it.
    expect(decideRoute({ ...base, localEpoch: 4, owner: { replicaId: 'r1', epoch: 3, live: true, source: 'Redis' } }).action).toBe('local');
  });

  it('any other replica forwards to the live owner, naming the layer that said so', () => {
    const d = decideRoute({ ...base, owner: { replicaId: 'r1', epoch: 2, live: true, source: 'Redis' } });
    expect(d).toMatchObject({ action: 'forward', to: { replicaId: 'r1', epoch: 2 } });
    expect(d.why).toContain('Redis');
    expect(decideRoute({ ...base, owner: { replicaId: 'r1', epoch: 2, live: true, source: 'Postgres' }, phase: 'Provisioning' }).why).toContain('held up to 10 s for Ready');
  });

  it('no live owner: hold when this replica knew one recently, pass through otherwise', () => {
    expect(decideRoute({ ...base, lastKnown: { replicaId: null, epoch: 1, ageMs: 2_000 } }).action).toBe('hold');
    expect(decideRoute({ ...base, lastKnown: { replicaId: null, epoch: 1, ageMs: 120_000 } }).action).toBe('pass-through');
    expect(decideRoute({ ...base }).action).toBe('pass-through');
    expect(decideRoute({ ...base, lastKnown: { replicaId: null, epoch: 1, ageMs: 2_000 }, sandboxExists: false }).action).toBe('pass-through');
    expect(decideRoute({ ...base, lastKnown: { replicaId: null, epoch: 1, ageMs: 2_000 }, ownerWaitMs: 0 }).action).toBe('pass-through');
  });

  it('a peer owner whose lease lapsed is tried first (then held), an expired row is named', () => {
    const d = decideRoute({ ...base, owner: { replicaId: 'r2', epoch: 5, live: false, source: 'Postgres' }, lastKnown: { replicaId: 'r2', epoch: 5, ageMs: 1_000 } });
    expect(d).toMatchObject({ action: 'forward', to: { replicaId: 'r2', epoch: 5 } });
    expect(d.why).toContain('expired lease');
  });

  it('store down: the last known owner, else the local gateway; native HA: step aside', () => {
    expect(decideRoute({ ...base, owner: 'unknown', lastKnown: { replicaId: 'r1', epoch: 1, ageMs: 1_000_000 } })).toMatchObject({ action: 'forward', to: { replicaId: 'r1' } });
    expect(decideRoute({ ...base, owner: 'unknown' }).action).toBe('pass-through');
    expect(decideRoute({ ...base, nativeHa: true, localEpoch: 1 }).action).toBe('pass-through');
  });
});
