// A pod with the sidecar injected as a plain container (`inject --mode container`) stops like this:
// both containers' preStop waits for the drain, then both get SIGTERM together. The registrations
// the sidecar still holds on its gateway (parked sessions handed over, shadows) end while the
// gateway shuts down, which writes nothing then (as upstream's does, docs/interop.md): unlike a
// sidecar-first stop (Compose), no sandbox leaves Ready.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { busiest, owners, samplePhases, startDrainEnv, type DrainEnv } from '../helpers/drain-checks.ts';

let env: DrainEnv;

beforeAll(async () => {
  env = await startDrainEnv('drain_pod', 9, ['--shutdown-grace-ms', '12000', '--rebalance', 'off']);
}, 90_000);

afterAll(() => env?.close());

it('stopped as a plain-container pod (preStop drain, then SIGTERM to both): its sessions move and no sandbox leaves Ready', async () => {
  const { store, cluster, ids } = env;
  const { victim, moving } = await busiest(store, cluster, ids);
  expect(moving.length).toBeGreaterThan(0);
  const phases = samplePhases(store, ids, moving);
  const started = Date.now();
  const drainMs = await cluster.stopContainerPod(victim.index);
  const stoppedMs = Date.now() - started;
  // A little past the end: a late cleanup write would show now.
  await new Promise((r) => setTimeout(r, 2000));
  const { samples, notReady } = await phases.stop();
  const after = await owners(store);
  const handedOver = victim.sidecar!.output.filter((l) => l.includes('handed a parked supervisor session over')).length;
  console.log(
    `container pod stop: ${victim.name} held ${moving.length} sessions; drain ${drainMs} ms, both gone ${stoppedMs} ms after the preStop; ` +
      `${handedOver} handed over; ${samples} phase samples, ${notReady.length} not Ready${notReady.length ? `: ${notReady.slice(0, 5).join('; ')}` : ''}`,
  );
  expect(moving.every((id) => after.get(id) !== undefined && after.get(id) !== victim.name)).toBe(true);
  expect(handedOver).toBeGreaterThanOrEqual(1);
  expect(notReady).toEqual([]);
}, 120_000);
