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
import { collectStream } from '../helpers/gen2.ts';
import { gatewayClient } from '../helpers/grpc-client.ts';

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
});
