// Today's gateway (2026-08 generation) behind sidecars: three replicas, each gateway emulator behind
// its sidecar, a round-robin Service in front, supervisors and clients landing anywhere. Every
// owner-bound call of reference §2.9 (HEAD) reaches the owner from any replica. The shared checks
// (test/helpers/gen2-checks.ts) run here against the emulator and under `make interop` against
// upstream's real gateway; the emulator-only cases below need what only the emulator exposes.
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Phase } from '../../emulator/proto.ts';
import { answerChecks, routingChecks } from '../helpers/gen2-checks.ts';
import { EmulatorTarget } from '../helpers/emulator-target.ts';
import { collectStream, failure } from '../helpers/gen2.ts';
import { gatewayClient, unary } from '../helpers/grpc-client.ts';
import { waitUntil } from '../helpers/wait.ts';

let target: EmulatorTarget;

beforeAll(async () => {
  target = await EmulatorTarget.start('gen2_routing');
}, 90_000);

afterAll(async () => {
  await target?.close();
});

const shared = { label: 'emulator', report: (line: string) => console.log(`gen2 emulator: ${line}`) };
routingChecks(() => target, shared);
answerChecks(() => target, shared);

describe('emulator only: ownership moves and foreign writes', () => {
  it('an ownership change moves an open watch to the new owner', async () => {
    const [s] = await target.createSandboxes('move', 1);
    const owner = (await target.ownerOf(s!.id))?.replicaId;
    const watchVia = target.replicas.find((r) => r.name !== owner)!;
    const client = gatewayClient(`127.0.0.1:${watchVia.publicPort}`);
    try {
      const watching = collectStream<{ sandbox?: { status?: { phase?: number } } }>(client, 'WatchSandbox', { id: s!.id, follow_status: true }, {
        untilMs: 30_000,
        stopWhen: (seen) => seen.filter((m) => m.sandbox?.status?.phase === Phase.READY).length >= 2,
      });
      await new Promise((r) => setTimeout(r, 300));
      // The supervisor reconnects through the Service: usually to another replica.
      target.fleet.supervisors.get(s!.id)!.supervisor.dropConnection();
      const seen = await watching;
      const phases = seen.messages.map((m) => m.sandbox?.status?.phase);
      console.log(`watch via ${watchVia.name}: owner ${owner} → ${(await target.ownerOf(s!.id))?.replicaId}, phases ${phases.join(',')}`);
      expect(phases.filter((p) => p === Phase.READY).length).toBeGreaterThanOrEqual(2);
    } finally {
      client.close();
    }
  }, 60_000);

  it('a phase written by another replica reaches a watch on the owner, and a delete elsewhere ends it', async () => {
    const row = await target.store.createSandbox({ name: 'foreign-writes' });
    const client = gatewayClient(`127.0.0.1:${target.replicas[0]!.publicPort}`);
    try {
      const watching = collectStream<{ sandbox?: { status?: { phase?: number } } }>(client, 'WatchSandbox', { id: row.id, follow_status: true }, { untilMs: 20_000 });
      await new Promise((r) => setTimeout(r, 500));
      // Another replica's write (a shadow's connect, a lost compare-and-swap elsewhere): only the
      // writer's own watchers are notified by the gateway (reference §2.8).
      await target.store.writePhase(row.id, Phase.READY, 'elsewhere', 'test: a foreign write');
      await new Promise((r) => setTimeout(r, 3_500));
      await target.store.deleteSandboxRow(row.id);
      const seen = await watching;
      const phases = seen.messages.map((m) => m.sandbox?.status?.phase);
      console.log(`watch on a replica that made none of the writes: phases ${phases.join(',')}, ended by the delete: ${!seen.cancelled}`);
      expect(phases).toEqual([Phase.PROVISIONING, Phase.READY]);
      expect(seen.cancelled).toBe(false);
      expect(seen.status?.code).toBe(Status.OK);
    } finally {
      client.close();
    }
  }, 60_000);

  it('a Stop or Start that loses its compare-and-swap to another write is sent again, three times at most', async () => {
    const [s] = await target.createSandboxes('conflict', 1);
    const owner = (await target.ownerOf(s!.id))?.replicaId;
    const viaPeer = target.replicas.find((r) => r.name !== owner)!;
    const ownerReplica = target.replicas.find((r) => r.name === owner)!;
    const gateways = target.cluster.replicas;
    // Each gateway's next `count` Stop/Start phase writes meet a rewrite of the row between their read
    // and their compare-and-swap, as a sweep or a shadow's Ready write does (emulator instrumentation).
    const conflicts = async (count?: number): Promise<number[]> =>
      Promise.all(
        gateways.map(async (g) => {
          const url = `http://127.0.0.1:${g.gatewayHealthPort}/debug/lifecycle-conflicts${count === undefined ? '' : `?count=${count}`}`;
          const res = await fetch(url, { method: count === undefined ? 'GET' : 'POST' });
          return ((await res.json()) as { left: number }).left;
        }),
      );
    // Until the row has not changed for a second: the shadows' Ready writes after a (re)connect are done.
    const settled = async (): Promise<void> => {
      let last = -1;
      let since = Date.now();
      await waitUntil('sandbox row settled', async () => {
        const v = (await target.store.sandboxById(s!.id))?.resourceVersion ?? -1;
        if (v !== last) [last, since] = [v, Date.now()];
        return Date.now() - since;
      }, (quietMs) => quietMs >= 1_000, { timeoutMs: 15_000 });
    };
    const retries = (method: string): Promise<number> => target.metricSum('ohs_conflict_retries_total', (l) => l.includes(`method="${method}"`));
    const ask = { name: s!.name, workspace: s!.workspace };
    const clients = [viaPeer, ownerReplica].map((r) => gatewayClient(`127.0.0.1:${r.publicPort}`));
    const direct = gatewayClient(`127.0.0.1:${ownerReplica.gatewayPort}`);
    try {
      // Through a replica that is not the owner: two lost writes, then the Stop goes through. (Counts
      // are taken against what earlier checks on this cluster may have retried for real.)
      await settled();
      const [stopsBefore, startsBefore] = [await retries('StopSandbox'), await retries('StartSandbox')];
      await conflicts(2);
      const stopped = await unary<{ sandbox: { status: { phase: number } } }>(clients[0]!, 'StopSandbox', ask);
      expect(stopped.sandbox.status.phase).toBe(Phase.STOPPED);
      expect(await retries('StopSandbox')).toBe(stopsBefore + 2);
      expect((await conflicts())[gateways.findIndex((g) => g.name === owner)]).toBe(0);

      // Without the sidecar the caller gets the gateway's ABORTED, and nothing changed.
      await conflicts(1);
      expect(await failure(unary(direct, 'StartSandbox', ask))).toMatchObject({ code: Status.ABORTED, details: expect.stringContaining('concurrent modification') });
      expect(await target.phaseOf(s!.id)).toBe(Phase.STOPPED);

      // Through the owner's own sidecar, to its gateway: one lost write, then the Start goes through.
      await conflicts(1);
      const started = await unary<{ sandbox: { status: { phase: number } } }>(clients[1]!, 'StartSandbox', ask);
      expect([Phase.STARTING, Phase.READY]).toContain(started.sandbox.status.phase);
      expect(await retries('StartSandbox')).toBe(startsBefore + 1);
      await conflicts(0);
      await expect.poll(() => target.phaseOf(s!.id), { timeout: 15_000 }).toBe(Phase.READY);
      await settled();

      // A row that keeps changing: the first send and three more, then the gateway's answer.
      await conflicts(10);
      expect(await failure(unary(clients[0]!, 'StopSandbox', ask))).toMatchObject({ code: Status.ABORTED, details: expect.stringContaining('concurrent modification') });
      const left = await conflicts();
      expect(left.reduce((a, b) => a + b, 0)).toBe(30 - 4);
      expect(await retries('StopSandbox')).toBe(stopsBefore + 2 + 3);
      expect(await target.phaseOf(s!.id)).toBe(Phase.READY);
      console.log(`lifecycle conflicts: Stop via ${viaPeer.name} (owner ${owner}) after 2 retries, Start after 1, a fifth send never made (${left.join('/')} left)`);
    } finally {
      await conflicts(0);
      for (const c of [...clients, direct]) c.close();
    }
  }, 60_000);
});
