// Graceful drain (DESIGN §6): a replica stopped the way Kubernetes stops a pod (SIGTERM to the
// sidecar, the gateway only after it) leaves the Service, sheds its supervisor sessions in paced
// steps and exits, while SSH and exec to every sandbox through the Service keep working and, while
// the sessions move, every sandbox stays Ready (shed sessions are parked on the gateway and handed
// over to their new owners). What the replica's gateway held ends when the pod goes: its cleanups
// demote those sandboxes for a moment, and the owners repair that at once.
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { Cluster } from '../../emulator/cluster.ts';
import { sshViaForwardTcp } from '../../emulator/forward-tcp-client.ts';
import type { Gen2Store } from '../../emulator/gateway/gen2/store.ts';
import { Phase } from '../../emulator/proto.ts';
import { exec, gatewayClient } from '../helpers/grpc-client.ts';
import { busiest as busiestOf, owners as ownersOf, samplePhases as sample, startDrainEnv, type DrainEnv } from '../helpers/drain-checks.ts';
import { waitUntil } from '../helpers/wait.ts';

let env: DrainEnv;
let store: Gen2Store;
let cluster: Cluster;
let ids: string[];

const owners = (): Promise<Map<string, string>> => ownersOf(store);
const busiest = (): ReturnType<typeof busiestOf> => busiestOf(store, cluster, ids);
const samplePhases = (moving: string[], until?: () => boolean): ReturnType<typeof sample> => sample(store, ids, moving, until);

beforeAll(async () => {
  // An 8 s grace: sessions move within its first half (--drain-shed-share 0.5).
  env = await startDrainEnv('drain', 12, ['--shutdown-grace-ms', '8000', '--rebalance', 'off']);
  ({ store, cluster, ids } = env);
}, 90_000);

afterAll(() => env?.close());

it('SIGTERM drains a replica: its sessions move, it exits, and no SSH or exec through the Service fails', async () => {
  const { victim, moving } = await busiest();
  expect(moving.length).toBeGreaterThan(0);

  let stop = false;
  const failures: string[] = [];
  let ops = 0;
  const worker = async (w: number): Promise<void> => {
    const client = gatewayClient(cluster.endpoint);
    try {
      for (let n = 0; !stop; n++) {
        // The sandboxes in motion most of the time: that is what the drain must not break.
        const id = n % 3 === 0 ? ids[(n + w) % ids.length]! : moving[(n + w) % moving.length]!;
        ops++;
        if ((n + w) % 2 === 0) {
          // A session token per SSH, as the CLI mints one per connection (the per-token cap is 3).
          const token = (await store.createSshSession(id, 3600)).token;
          const r = await sshViaForwardTcp({ endpoint: cluster.endpoint, sandboxId: id, token, command: 'sandbox-id', timeoutMs: 30_000 });
          if (r.grpcCode !== null || r.stdout.trim() !== id) failures.push(`ssh ${id.slice(0, 8)}: ${r.grpcCode === null ? r.stdout : `${grpc.status[r.grpcCode]} ${r.grpcDetails}`}`);
        } else {
          const r = await exec(client, id, ['sandbox-id']).catch((err: grpc.ServiceError) => ({ exitCode: null, stdout: `${grpc.status[err.code]} ${err.details}` }));
          if (r.exitCode !== 0 || r.stdout.trim() !== id) failures.push(`exec ${id.slice(0, 8)}: ${r.stdout}`);
        }
      }
    } finally {
      client.close();
    }
  };
  const load = Array.from({ length: 4 }, (_, w) => worker(w));
  // Every sandbox's phase, 10 times a second, until the drain reported (every session moved).
  const drainReported = (): boolean => victim.sidecar!.output.some((l) => l.includes('drain complete') || l.includes('drain deadline'));
  const phases = samplePhases(moving, drainReported);
  await new Promise((r) => setTimeout(r, 1000));
  // As Kubernetes stops the pod with the injected hooks: the sidecar drains, the gateway goes after.
  const started = Date.now();
  await victim.sidecar!.kill('SIGTERM', 60_000);
  const took = Date.now() - started;
  const { samples, notReady } = await phases.stop();
  const handedOver = victim.sidecar!.output.filter((l) => l.includes('handed a parked supervisor session over')).length;
  await victim.gateway.kill('SIGTERM', 10_000);
  // The drained replica is gone; every one of its sandboxes has a new owner and stays reachable.
  await waitUntil('sessions moved', async () => {
    const now = await owners();
    return moving.every((id) => now.get(id) !== undefined && now.get(id) !== victim.name);
  }, (x) => x, { timeoutMs: 20_000 });
  await new Promise((r) => setTimeout(r, 1500));
  stop = true;
  await Promise.all(load);
  const drainLine = victim.sidecar!.output.find((l) => l.includes('drain complete') || l.includes('drain deadline'));
  const after = await owners();
  console.log(
    `drain: ${victim.name} held ${moving.length} sessions; sidecar exited ${took} ms after SIGTERM; new owners ${JSON.stringify(
      moving.map((id) => after.get(id)),
    )}; ${ops} operations, ${failures.length} failed${failures.length ? `: ${failures.slice(0, 5).join('; ')}` : ''}; ${handedOver} handed over; ${samples} phase samples during the drain, ${notReady.length} not Ready${notReady.length ? `: ${notReady.slice(0, 5).join('; ')}` : ''}; ${drainLine ?? 'no drain line'}`,
  );
  expect(failures).toEqual([]);
  expect(notReady).toEqual([]);
  expect(handedOver).toBeGreaterThanOrEqual(1);
  expect(drainLine).toContain('drain complete');
  // Within the pod's grace period (8 s), with a little for the process to go.
  expect(took).toBeLessThan(9_000);
  // The sidecar's exit cut the shadows its still-running gateway held: that gateway's cleanups demote
  // them (as upstream's does, docs/interop.md R1); the owners repair that at once.
  for (const id of ids) await waitUntil(`${id.slice(0, 8)} Ready`, async () => (await store.getSandbox(id))?.phase, (p) => p === Phase.READY, { timeoutMs: 5_000 });
  await cluster.restart(victim.index);
}, 120_000);

it('stopped as a native sidecar pod (preStop drain, then the gateway, then the sidecar): no sandbox leaves Ready at any point', async () => {
  // Everyone back in place after the previous test (the restarted replica holds nothing yet).
  for (const id of ids) await waitUntil(`${id.slice(0, 8)} Ready`, async () => (await store.getSandbox(id))?.phase, (p) => p === Phase.READY, { timeoutMs: 15_000 });
  const { victim, moving } = await busiest();
  expect(moving.length).toBeGreaterThan(0);
  const phases = samplePhases(moving);
  const started = Date.now();
  const drainMs = await cluster.stop(victim.index);
  const stoppedMs = Date.now() - started;
  // A little past the end: a late cleanup write would show now.
  await new Promise((r) => setTimeout(r, 2000));
  const { samples, notReady } = await phases.stop();
  const after = await owners();
  console.log(
    `native stop: ${victim.name} held ${moving.length} sessions; drain ${drainMs} ms, gateway and sidecar gone ${stoppedMs} ms after the preStop; new owners ${JSON.stringify(moving.map((id) => after.get(id)))}; ${samples} phase samples, ${notReady.length} not Ready${notReady.length ? `: ${notReady.slice(0, 5).join('; ')}` : ''}`,
  );
  expect(moving.every((id) => after.get(id) !== undefined && after.get(id) !== victim.name)).toBe(true);
  expect(notReady).toEqual([]);
  await cluster.restart(victim.index);
}, 120_000);
