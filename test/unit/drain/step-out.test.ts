// A replica about to rebalance steps out of the Service first (DESIGN §6): readiness false, a lead
// time for the Service to notice, sheds, and back in once its shed supervisors landed elsewhere.
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { startRebalancer, type Rebalancer } from '../../../src/drain/rebalance.ts';
import { createMetrics } from '../../../src/metrics/registry.ts';
import type { OwnershipStore, ReplicaRecord } from '../../../src/ownership/types.ts';
import { LocalSessions } from '../../../src/routing/router.ts';

const LEAD_MS = 5_000;
const MAX_MS = 60_000;
const SETTLE_MS = 4_000;

function setup(opts: { mine: number; others: Array<{ id: string; sessions: number; state?: 'active' | 'draining' }>; leadMs?: number }) {
  const local = new LocalSessions();
  const shed: string[] = [];
  const ends = new Map<string, () => void>();
  for (let i = 0; i < opts.mine; i++) {
    const sandboxId = `sb-${i}`;
    const id = local.set(sandboxId, 1, () => undefined, { shed: () => void shed.push(sandboxId) });
    ends.set(sandboxId, () => local.removeSession(sandboxId, id));
  }
  let others = opts.others;
  const store = {
    replicaId: 'r0',
    liveReplicas: async (): Promise<ReplicaRecord[]> =>
      [{ replicaId: 'r0', state: 'active', sessions: local.held }, ...others.map((o) => ({ replicaId: o.id, state: o.state ?? 'active', sessions: o.sessions }))] as unknown as ReplicaRecord[],
  } as unknown as OwnershipStore;
  const lines: Array<{ msg: string; why?: string; shed?: number }> = [];
  const logger = pino(
    { level: 'info' },
    new Writable({
      write(chunk, _enc, done) {
        lines.push(JSON.parse(String(chunk)));
        done();
      },
    }),
  );
  const metrics = createMetrics();
  let now = Date.now();
  const rebalancer: Rebalancer = startRebalancer({
    localSessions: local,
    store,
    metrics,
    logger,
    draining: () => false,
    intervalMs: 600_000,
    marginPct: 20,
    cooldownMs: 60_000,
    minAgeMs: 0,
    stepOut: { leadMs: opts.leadMs ?? LEAD_MS, maxMs: MAX_MS, settleMs: SETTLE_MS },
    now: () => now,
  });
  const gauge = async (): Promise<number> => (await metrics.rebalanceSteppedOut.get()).values[0]?.value ?? 0;
  return {
    local,
    shed,
    lines,
    rebalancer,
    gauge,
    advance: (ms: number) => void (now += ms),
    setOthers: (o: typeof others) => void (others = o),
    /** The supervisor of a shed session reconnected elsewhere: its parked session here ends. */
    landed: (sandboxId: string) => ends.get(sandboxId)!(),
  };
}

describe('rebalancing steps out of the Service while it sheds', () => {
  it('leaves first, sheds only after the lead time, and comes back once within its share and its shed supervisors landed', async () => {
    // 20 here, 20 on r1, none on r2 and r3 (a scale-up from 2 to 4): fair share 10.
    const t = setup({ mine: 20, others: [{ id: 'r1', sessions: 20 }, { id: 'r2', sessions: 0 }, { id: 'r3', sessions: 0 }] });
    try {
      await t.rebalancer.tickNow();
      expect(t.rebalancer.steppedOut()).toBe(true);
      expect(await t.gauge()).toBe(1);
      expect(t.shed).toEqual([]);
      expect(t.lines.at(-1)).toMatchObject({ msg: expect.stringMatching(/^rebalancing: out of the Service/), under: ['r2', 'r3'], excess: 10 });
      // Within the lead time the Service may still send supervisors here: nothing is shed.
      t.advance(LEAD_MS - 1);
      await t.rebalancer.tickNow();
      expect(t.shed).toEqual([]);
      t.advance(1);
      for (let i = 0; i < 10; i++) {
        await t.rebalancer.tickNow();
        t.advance(500);
        // The shed supervisors reconnect on r2 and r3 (r0 is out of the Service), whose heartbeats
        // report them before this replica's parked sessions are handed over.
        const n = t.shed.length;
        t.setOthers([{ id: 'r1', sessions: 20 }, { id: 'r2', sessions: Math.ceil(n / 2) }, { id: 'r3', sessions: Math.floor(n / 2) }]);
      }
      expect(t.shed).toHaveLength(10);
      expect(t.local.held).toBe(10);
      // Within its share, but the shed supervisors have not reconnected anywhere yet: still out.
      await t.rebalancer.tickNow();
      expect(t.shed).toHaveLength(10);
      expect(t.rebalancer.steppedOut()).toBe(true);
      for (const id of t.shed.slice(0, 9)) t.landed(id);
      await t.rebalancer.tickNow();
      expect(t.rebalancer.steppedOut()).toBe(true);
      t.landed(t.shed[9]!);
      await t.rebalancer.tickNow();
      expect(t.rebalancer.steppedOut()).toBe(false);
      expect(await t.gauge()).toBe(0);
      expect(t.lines.at(-1)).toMatchObject({ msg: 'rebalancing: back in the Service', why: 'within fair share', shed: 10 });
    } finally {
      t.rebalancer.close();
    }
  });

  it('sheds no more than the excess it saw when it left, however stale the other counts, and lets them settle before it looks again', async () => {
    // r2 and r3's heartbeats never report the sessions that moved to them.
    const t = setup({ mine: 20, others: [{ id: 'r1', sessions: 20 }, { id: 'r2', sessions: 0 }, { id: 'r3', sessions: 0 }] });
    try {
      await t.rebalancer.tickNow();
      t.advance(LEAD_MS);
      for (let i = 0; i < 15; i++) {
        await t.rebalancer.tickNow();
        t.advance(500);
      }
      expect(t.shed).toHaveLength(10);
      for (const id of t.shed) t.landed(id);
      await t.rebalancer.tickNow();
      expect(t.rebalancer.steppedOut()).toBe(false);
      expect(t.lines.at(-1)).toMatchObject({ msg: 'rebalancing: back in the Service', why: 'shed what it set out to', shed: 10 });
      // The counts still say 10 of 30 here (fair 7.5), but nothing moves until they had time to settle.
      t.advance(SETTLE_MS - 1);
      await t.rebalancer.tickNow();
      expect(t.rebalancer.steppedOut()).toBe(false);
      expect(t.shed).toHaveLength(10);
      t.advance(1);
      await t.rebalancer.tickNow();
      expect(t.rebalancer.steppedOut()).toBe(true);
      expect(t.shed).toHaveLength(10);
    } finally {
      t.rebalancer.close();
    }
  });

  it('comes back after the step-out limit and then sheds from inside the Service for a cooldown', async () => {
    const t = setup({ mine: 20, others: [{ id: 'r1', sessions: 0 }] });
    try {
      await t.rebalancer.tickNow();
      expect(t.rebalancer.steppedOut()).toBe(true);
      t.advance(MAX_MS);
      await t.rebalancer.tickNow();
      expect(t.rebalancer.steppedOut()).toBe(false);
      expect(t.lines.find((l) => l.msg === 'rebalancing: back in the Service')).toMatchObject({ why: 'step-out time limit' });
      // Still over its share: it sheds at once, without leaving again.
      expect(t.shed).toHaveLength(1);
      t.advance(500);
      await t.rebalancer.tickNow();
      expect(t.rebalancer.steppedOut()).toBe(false);
      expect(t.shed).toHaveLength(2);
    } finally {
      t.rebalancer.close();
    }
  });

  it('goes back in at once when another replica starts draining, and sheds nothing meanwhile', async () => {
    const t = setup({ mine: 20, others: [{ id: 'r1', sessions: 0 }, { id: 'r2', sessions: 10 }] });
    try {
      await t.rebalancer.tickNow();
      expect(t.rebalancer.steppedOut()).toBe(true);
      t.setOthers([{ id: 'r1', sessions: 0 }, { id: 'r2', sessions: 10, state: 'draining' }]);
      t.advance(LEAD_MS);
      await t.rebalancer.tickNow();
      expect(t.rebalancer.steppedOut()).toBe(false);
      expect(t.shed).toEqual([]);
      expect(t.lines.at(-1)).toMatchObject({ msg: 'rebalancing: back in the Service', why: 'another replica drains' });
    } finally {
      t.rebalancer.close();
    }
  });

  it('a replica within its share never steps out; with a lead time of 0 an over-full one sheds from inside the Service', async () => {
    const fair = setup({ mine: 10, others: [{ id: 'r1', sessions: 10 }] });
    const inside = setup({ mine: 20, others: [{ id: 'r1', sessions: 0 }], leadMs: 0 });
    try {
      await fair.rebalancer.tickNow();
      expect(fair.rebalancer.steppedOut()).toBe(false);
      expect(fair.shed).toEqual([]);
      await inside.rebalancer.tickNow();
      expect(inside.rebalancer.steppedOut()).toBe(false);
      expect(inside.shed).toHaveLength(1);
    } finally {
      fair.rebalancer.close();
      inside.rebalancer.close();
    }
  });
});
