import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createPostgresOwnershipStore } from '../../src/ownership/postgres-store.ts';
import type { OwnershipStore } from '../../src/ownership/types.ts';
import { startOwnPostgres } from '../helpers/own-postgres.ts';
import type { OwnPostgres } from '../helpers/own-postgres.ts';
import { captureLogger, nextChange, waitFor } from './support.ts';
import type { CapturedLogger } from './support.ts';

let pgServer: OwnPostgres;
const opened = new Set<OwnershipStore>();

beforeAll(async () => {
  pgServer = await startOwnPostgres();
});

afterEach(async () => {
  await Promise.all([...opened].map((s) => s.close()));
  opened.clear();
});

afterAll(async () => {
  await pgServer?.destroy();
});

async function openStore(replicaId: string, log: CapturedLogger): Promise<OwnershipStore> {
  const store = createPostgresOwnershipStore({
    databaseUrl: pgServer.url,
    replicaId,
    peerUrl: `https://${replicaId}:8443`,
    version: 'test',
    heartbeatIntervalMs: 100,
    leaseTtlMs: 30_000,
    cacheTtlMs: 60_000,
    pgConnectTimeoutMs: 500,
    logger: log.logger,
  });
  opened.add(store);
  await store.start();
  return store;
}

describe('ownership store with postgres failing', () => {
  it('reports postgres down, fails lookups that need it, and resumes NOTIFY invalidations after a restart', async () => {
    const logA = captureLogger();
    const logB = captureLogger();
    const a = await openStore('pg-a', logA);
    const b = await openStore('pg-b', logB);
    const s = 'sbx-pg';
    const heard = nextChange(b, s, 2000); // NOTIFY is the only channel here: one event per change
    await a.claim(s);
    await heard;
    await waitFor('B to cache the owner', async () => (await b.lookup(s)).source === 'memory');

    await pgServer.stop('fast');
    expect(await b.health()).toEqual({ postgres: false, redis: null });
    await expect(b.lookup(s, { fresh: true })).rejects.toMatchObject({ code: 'OHS_ERR_STORE_UNAVAILABLE' });
    await expect(a.claim(s)).rejects.toMatchObject({ code: 'OHS_ERR_STORE_UNAVAILABLE' });
    // What B already knew is still served from memory.
    expect(await b.lookup(s)).toMatchObject({ source: 'memory', owner: { replicaId: 'pg-a', epoch: 1 } });

    await pgServer.start();
    await waitFor('B to see postgres again', async () => (await b.health()).postgres === true);
    // The LISTEN connection comes back on its own; until it does, a change may go unheard, so
    // claim until B hears one (each attempt bounded), then check B's view.
    let epoch = 1;
    await waitFor(
      'B to hear a claim made by A',
      async () => {
        const heard = nextChange(b, s, 500);
        epoch = (await a.claim(s)).owner.epoch;
        return heard.then(
          () => true,
          () => false,
        );
      },
      10_000,
      0,
    );
    expect((await b.lookup(s)).owner).toMatchObject({ replicaId: 'pg-a', epoch });
    expect(logB.messages('info')).toContain('postgres LISTEN connection recovered');
    await waitFor('heartbeat to recover', () => logA.messages('info').includes('heartbeat recovered'), 3000);
    expect(logA.messages('warn').filter((m) => m.startsWith('heartbeat failed'))).toHaveLength(1);
  });

  it('start fails cleanly when postgres is unreachable', async () => {
    await pgServer.stop('immediate');
    try {
      const store = createPostgresOwnershipStore({
        databaseUrl: pgServer.url,
        replicaId: 'pg-down',
        peerUrl: 'https://pg-down:8443',
        version: 'test',
        heartbeatIntervalMs: 100,
        leaseTtlMs: 30_000,
        cacheTtlMs: 1000,
        pgConnectTimeoutMs: 500,
        logger: captureLogger().logger,
      });
      await expect(store.start()).rejects.toMatchObject({ code: 'OHS_ERR_STORE_UNAVAILABLE' });
      expect(await store.health()).toEqual({ postgres: false, redis: null });
      await store.close();
    } finally {
      await pgServer.start();
    }
  });
});
