// What the drain tests look at: who owns what, the busiest replica, and every sandbox's phase while
// a replica stops.
import type { Cluster, Replica } from '../../emulator/cluster.ts';
import type { Gen2Store } from '../../emulator/gateway/gen2/store.ts';
import { Phase } from '../../emulator/proto.ts';

export async function owners(store: Gen2Store): Promise<Map<string, string>> {
  const res = await store.pool.query<{ sandbox_id: string; replica_id: string }>('SELECT sandbox_id, replica_id FROM ohs_owners');
  return new Map(res.rows.map((r) => [r.sandbox_id, r.replica_id]));
}

/** The replica holding the most sessions, and the sandboxes whose sessions are there. */
export async function busiest(store: Gen2Store, cluster: Cluster, ids: string[]): Promise<{ victim: Replica; moving: string[] }> {
  const before = await owners(store);
  const counts = new Map<string, number>();
  for (const r of before.values()) counts.set(r, (counts.get(r) ?? 0) + 1);
  const victim = cluster.replicas.reduce((a, b) => ((counts.get(b.name) ?? 0) > (counts.get(a.name) ?? 0) ? b : a));
  return { victim, moving: ids.filter((id) => before.get(id) === victim.name) };
}

/** Every sandbox's phase, 10 times a second, until `stop()` or `until()`; what was not Ready, with when. */
export function samplePhases(
  store: Gen2Store,
  ids: string[],
  moving: string[],
  until: () => boolean = () => false,
): { stop(): Promise<{ samples: number; notReady: string[] }> } {
  const notReady: string[] = [];
  const started = Date.now();
  let sampling = true;
  let samples = 0;
  const loop = (async () => {
    while (sampling && !until()) {
      const phases = await Promise.all(ids.map(async (id) => [id, (await store.getSandbox(id))?.phase] as const));
      samples++;
      for (const [id, phase] of phases) if (phase !== Phase.READY) notReady.push(`${id.slice(0, 8)}${moving.includes(id) ? ' (moving)' : ''}: phase ${phase} at ${Date.now() - started} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  return {
    async stop() {
      sampling = false;
      await loop;
      return { samples, notReady };
    },
  };
}
