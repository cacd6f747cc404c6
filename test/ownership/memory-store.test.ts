import { afterEach, describe, expect, it } from 'vitest';
import { createMemoryOwnershipStore } from '../../src/ownership/memory-store.ts';
import type { OwnershipStore } from '../../src/ownership/types.ts';

const opened: OwnershipStore[] = [];

async function openStore(): Promise<OwnershipStore> {
  const store = createMemoryOwnershipStore({ replicaId: 'solo', peerUrl: 'https://solo:8443', version: 'test' });
  opened.push(store);
  await store.start();
  return store;
}

afterEach(async () => {
  await Promise.all(opened.splice(0).map((s) => s.close()));
});

describe('memory ownership store (embedded mode)', () => {
  it('claims at increasing epochs and reports the previous owner', async () => {
    const store = await openStore();
    const first = await store.claim('s1');
    expect(first).toMatchObject({ previous: null, owner: { sandboxId: 's1', replicaId: 'solo', peerUrl: 'https://solo:8443', epoch: 1 } });
    const second = await store.claim('s1');
    expect(second.owner.epoch).toBe(2);
    expect(second.previous).toMatchObject({ replicaId: 'solo', epoch: 1 });
    expect(await store.ownerEpoch('s1')).toBe(2);
    expect(await store.ownerEpoch('s2')).toBeNull();
  });

  it('releases only at the current epoch', async () => {
    const store = await openStore();
    await store.claim('s1');
    await store.claim('s1');
    expect(await store.release('s1', 1)).toBe(false);
    expect((await store.lookup('s1')).owner).toMatchObject({ epoch: 2 });
    expect(await store.release('s1', 2)).toBe(true);
    expect(await store.lookup('s1')).toEqual({ owner: null, source: 'miss' });
  });

  it('lookups answer from memory, fresh or not', async () => {
    const store = await openStore();
    await store.claim('s1');
    expect(await store.lookup('s1')).toMatchObject({ source: 'memory', owner: { replicaId: 'solo', epoch: 1 } });
    expect(await store.lookup('s1', { fresh: true })).toMatchObject({ source: 'memory', owner: { epoch: 1 } });
  });

  it('reports claims and releases to change listeners until they unsubscribe', async () => {
    const store = await openStore();
    const seen: string[] = [];
    const off = store.onChange((id) => seen.push(id));
    store.onChange(() => {
      throw new Error('a broken listener must not stop the others');
    });
    const { owner } = await store.claim('s1');
    await store.release('s1', owner.epoch);
    await store.release('s1', owner.epoch); // nothing released, nothing reported
    off();
    await store.claim('s2');
    expect(seen).toEqual(['s1', 's1']);
  });

  it('describes itself as the only live replica', async () => {
    const store = await openStore();
    store.setSessionCount(4);
    await store.setState('draining');
    expect(await store.liveReplicas()).toEqual([
      expect.objectContaining({ replicaId: 'solo', peerUrl: 'https://solo:8443', state: 'draining', sessions: 4, version: 'test', live: true }),
    ]);
    expect(await store.health()).toEqual({ postgres: true, redis: null });
  });

  it('a restart forgets every ownership', async () => {
    const store = await openStore();
    await store.claim('s1');
    await store.close();
    await store.start();
    expect(await store.lookup('s1')).toEqual({ owner: null, source: 'miss' });
    expect((await store.claim('s1')).owner.epoch).toBe(1);
  });
});
