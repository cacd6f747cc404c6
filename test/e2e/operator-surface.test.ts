// What an operator sees of a running 3-replica 2026-08 cluster: `status`, `explain` for an owned, a
// forwarded and a held sandbox, and the live page on the admin port in headless Chromium.
import { mkdirSync } from 'node:fs';
import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ClusterStatus } from '../../src/admin/cluster-status.ts';
import type { Explanation } from '../../src/admin/explain.ts';
import { runExplain } from '../../src/cli/explain.ts';
import { runStatus } from '../../src/cli/status.ts';
import { Cluster, type Replica } from '../../emulator/cluster.ts';
import { sshViaForwardTcp } from '../../emulator/forward-tcp-client.ts';
import { Gen2Store } from '../../emulator/gateway/gen2/store.ts';
import { Phase } from '../../emulator/proto.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { findChromium, launchChromium } from '../helpers/browser.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { waitUntil } from '../helpers/wait.ts';

const OWNER_WAIT_MS = 8_000;

let db: TestDatabase;
let store: Gen2Store;
let cluster: Cluster;
let fleet: SupervisorFleet;
const sandboxes: Array<{ id: string; name: string; token: string }> = [];

async function ownerOf(sandboxId: string): Promise<string | undefined> {
  const res = await store.pool.query<{ replica_id: string }>('SELECT replica_id FROM ohs_owners WHERE sandbox_id = $1', [sandboxId]);
  return res.rows[0]?.replica_id;
}
const replicaNamed = (name: string): Replica => cluster.replicas.find((r) => r.name === name) as Replica;
const adminOf = (r: Replica): string => `http://127.0.0.1:${r.sidecarPorts?.admin}`;

async function cli(run: typeof runStatus, argv: string[]): Promise<{ code: number; out: string }> {
  let out = '';
  const code = await run(argv, {}, (s) => {
    out += s;
    return true;
  });
  return { code, out };
}

async function explain(via: Replica, sandboxId: string): Promise<Explanation> {
  const res = await fetch(`${adminOf(via)}/v1/explain?sandbox=${sandboxId}`);
  expect(res.status).toBe(200);
  return (await res.json()) as Explanation;
}

beforeAll(async () => {
  db = await createTestDatabase('operator_surface');
  store = new Gen2Store(db.url);
  await store.migrate();
  cluster = await Cluster.start({
    replicas: 3,
    databaseUrl: db.url,
    protocol: '2026-08',
    sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix('operator_surface'), extraArgs: ['--owner-wait-ms', String(OWNER_WAIT_MS)] },
  });
  for (let i = 0; i < 4; i++) {
    const row = await store.createSandbox({ name: `ops-${i}` });
    sandboxes.push({ id: row.id, name: row.name, token: '' });
  }
  fleet = await startSupervisorFleet({ endpoint: cluster.endpoint, sandboxIds: sandboxes.map((s) => s.id), protocol: '2026-08', jwtKeyDir: cluster.jwtKeyDir });
  await fleet.waitAllConnected(30_000);
  for (const s of sandboxes) {
    await waitUntil(`sandbox ${s.name} Ready and owned`, async () => ((await store.getSandbox(s.id))?.phase === Phase.READY ? await ownerOf(s.id) : undefined), (o) => o !== undefined, { timeoutMs: 15_000 });
    s.token = (await store.createSshSession(s.id, 3600)).token;
  }
}, 90_000);

afterAll(async () => {
  await fleet?.stop();
  await cluster?.close();
  await store?.close();
  await db?.drop();
});

describe('operator surface', () => {
  it('status shows every replica, its sessions and the lease holder, and exits 0 on a healthy cluster', async () => {
    const { code, out } = await cli(runStatus, ['--admin', adminOf(cluster.replica(0))]);
    expect(code).toBe(0);
    expect(out).toMatch(/^cluster: HEALTHY \(3\/3 replicas live, 4 sandboxes owned; seen from r0\)/);
    for (const name of ['r0', 'r1', 'r2']) expect(out).toMatch(new RegExp(`^${name}\\s+active\\s`, 'm'));
    const json = await cli(runStatus, ['--admin', adminOf(cluster.replica(1)), '--json']);
    const st = JSON.parse(json.out) as ClusterStatus;
    expect(st.replicas.map((r) => r.replicaId)).toEqual(['r0', 'r1', 'r2']);
    expect(st.replicas.every((r) => r.runtime !== null && r.runtime.limitPolicy === 'global')).toBe(true);
    expect(st.replicas.reduce((a, r) => a + (r.runtime?.sessions ?? 0), 0)).toBe(4);
    expect(st.totals.ownedSandboxes).toBe(4);
    // The same table straight from the stores, every replica asked over its peer port.
    const direct = await cli(runStatus, ['--database-url', db.url, '--redis-url', TEST_REDIS_URL, '--peer-secret', 'test-peer-secret-0123456789']);
    expect(direct.code).toBe(0);
    expect(direct.out).toMatch(/^r2\s+active\s.*global/m);
  });

  it('explain: the owner serves locally, every other replica forwards to it', async () => {
    const s = sandboxes[0]!;
    const owner = (await ownerOf(s.id))!;
    const other = cluster.replicas.find((r) => r.name !== owner)!;
    // A forwarded SSH first, so the non-owner has routed this sandbox.
    const ssh = await sshViaForwardTcp({ endpoint: `127.0.0.1:${other.publicPort}`, sandboxId: s.id, token: s.token, command: 'sandbox-id' });
    expect(ssh.stdout.trim()).toBe(s.id);
    const e = await explain(other, s.name);
    expect(e.sandboxId).toBe(s.id);
    expect(e.owner).toMatchObject({ replicaId: owner, live: true, ownerHoldsSession: true });
    expect(e.gateway.row).toMatchObject({ phase: 'Ready', layout: 'head' });
    for (const r of e.replicas) {
      if (r.replicaId === owner) expect(r.view?.decision.action).toBe('local');
      else expect(r.view?.decision).toMatchObject({ action: 'forward', to: { replicaId: owner } });
    }
    expect(e.replicas.find((r) => r.replicaId === other.name)?.view?.lastKnown?.target).toMatch(new RegExp(`^${owner}@`));
    // The slot of the SSH just made is released when its stream closes, a moment after the client saw the end.
    expect(e.slots).toEqual([{ rule: 'ssh-per-sandbox', max: 20, held: expect.any(Number), scope: 'cluster' }]);
    const text = await cli(runExplain, [s.id, '--admin', adminOf(other)]);
    expect(text.code).toBe(0);
    expect(text.out).toContain(`summary: owned by ${owner} at epoch`);
    expect(text.out).toMatch(new RegExp(`^${other.name}\\s.*forward → ${owner}@\\d+$`, 'm'));
  });

  it('explain: a sandbox whose supervisor left is held by the replica that owned it, and status counts the held request', async () => {
    const s = sandboxes[1]!;
    const owner = replicaNamed((await ownerOf(s.id))!);
    // An SSH through the owner first: it now knows the sandbox as its own (routing memory).
    expect((await sshViaForwardTcp({ endpoint: `127.0.0.1:${owner.publicPort}`, sandboxId: s.id, token: s.token, command: 'sandbox-id' })).stdout.trim()).toBe(s.id);
    await fleet.supervisors.get(s.id)!.supervisor.stop();
    await waitUntil('owner row released', () => ownerOf(s.id), (o) => o === undefined, { timeoutMs: 10_000 });
    // Through the former owner: it knew the session, so the request waits for an ownership event.
    const held = sshViaForwardTcp({ endpoint: `127.0.0.1:${owner.publicPort}`, sandboxId: s.id, token: s.token, command: 'sandbox-id', timeoutMs: 30_000 }).catch((err: unknown) => err);
    await waitUntil(
      'request held',
      async () => (await (await fetch(`${adminOf(owner)}/v1/status`)).json()) as ClusterStatus,
      (st) => st.totals.heldRequests === 1,
      { timeoutMs: 5_000 },
    );
    const e = await explain(owner, s.id);
    expect(e.owner).toBeNull();
    expect(e.replicas.find((r) => r.replicaId === owner.name)?.view?.decision.action).toBe('hold');
    expect(e.summary).toContain(`${owner.name} would hold`);
    const st = await cli(runStatus, ['--admin', adminOf(owner)]);
    expect(st.out).toMatch(/held requests 1/);
    // The held SSH holds its limit slots: the sandbox by id, the token only as a digest.
    expect(st.out).toMatch(new RegExp(`ssh-per-sandbox\\s+${s.id}\\s+1 slot`));
    expect(st.out).toMatch(/ssh-per-token\s+token sha256-\S+…\s+1 slot/);
    expect(st.out).not.toContain(s.token);
    await held;
  }, 30_000);

  it('the live page on the admin port shows the replicas, forwards by class and result, and updates without reloading', async (ctx) => {
    const executable = findChromium();
    if (!executable) {
      ctx.skip(true, 'no system chromium (apt-get install chromium; .ci/run installs it)');
      return;
    }
    const s = sandboxes[2]!;
    const owner = (await ownerOf(s.id))!;
    const via = cluster.replicas.find((r) => r.name !== owner)!;
    const browser = await launchChromium(executable);
    try {
      const page = await browser.context.newPage();
      let reloads = 0;
      page.on('load', () => reloads++);
      await page.goto(`${adminOf(via)}/ui`);
      await page.getByTestId('health').filter({ hasText: 'healthy' }).waitFor({ timeout: 10_000 });
      const rows = page.locator('#replicas tbody tr');
      await expect.poll(() => rows.count(), { timeout: 10_000 }).toBe(3);
      expect(await page.locator('#replicas tbody tr td:first-child').allTextContents()).toEqual(['r0', 'r1', 'r2']);
      expect(await page.getByTestId('live-replicas').textContent()).toBe('3 / 3');
      const firstUpdate = await page.getByTestId('updated').textContent();
      // Traffic through a non-owner while the page is open: forwarded ForwardTcp streams appear.
      for (let i = 0; i < 5; i++) {
        const r = await sshViaForwardTcp({ endpoint: `127.0.0.1:${via.publicPort}`, sandboxId: s.id, token: s.token, command: 'sandbox-id' });
        expect(r.stdout.trim()).toBe(s.id);
      }
      const fwdRow = page.locator('#forwards tbody tr[data-key="tcp-forward/ok"]');
      await fwdRow.waitFor({ timeout: 10_000 });
      await expect.poll(async () => Number(await fwdRow.locator('td').nth(3).textContent()), { timeout: 10_000 }).toBeGreaterThanOrEqual(5);
      await expect.poll(() => page.getByTestId('updated').textContent(), { timeout: 10_000 }).not.toBe(firstUpdate);
      expect(reloads).toBe(1);
      const dir = resolve('test-results');
      mkdirSync(dir, { recursive: true });
      const shot = resolve(dir, 'operator-ui.png');
      await page.screenshot({ path: shot, fullPage: true });
      console.log(`live page screenshot: ${shot}`);
    } finally {
      await browser.close();
    }
  }, 60_000);
});
