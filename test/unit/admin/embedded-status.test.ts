// `status` of an embedded sidecar (in-memory ownership, no database): the store line says there is no
// Postgres instead of calling it up, and the cluster of one is healthy. Served by /v1/status on the
// admin port of a real embedded sidecar; no gateway is needed for it.
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ClusterStatus } from '../../../src/admin/cluster-status.ts';
import { renderStatus } from '../../../src/cli/format.ts';
import { loadConfig } from '../../../src/config/load.ts';
import { startSidecar, type Sidecar } from '../../../src/sidecar.ts';
import { freePort } from '../../helpers/own-redis.ts';

let sidecar: Sidecar;

beforeAll(async () => {
  const config = loadConfig({
    argv: ['--replica-id', 'solo', '--listen', '127.0.0.1:0', '--peer-listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--gateway', `http://127.0.0.1:${await freePort()}`],
    env: {},
  });
  expect(config.mode).toBe('embedded');
  sidecar = await startSidecar(config, pino({ level: 'silent' }));
});

afterAll(async () => {
  await sidecar?.close();
});

describe('status of an embedded sidecar', () => {
  it('reports no Postgres (not "up") and one healthy replica', async () => {
    const res = await fetch(`http://127.0.0.1:${sidecar.ports.admin}/v1/status`);
    expect(res.status).toBe(200);
    const st = (await res.json()) as ClusterStatus;
    expect(st.store).toEqual({ postgres: null, redis: null });
    expect(st.healthy).toBe(true);
    expect(st.replicas.map((r) => [r.replicaId, r.live])).toEqual([['solo', true]]);
    const text = renderStatus(st);
    expect(text).toMatch(/^store: postgres none \(embedded: in-memory store\), redis not configured/m);
    expect(text).not.toMatch(/postgres (up|DOWN)/);
  });
});
