// `openshell-emulator dev-cluster --json`: the local cluster an operator (and `make demo`)
// starts. It must come up, describe itself in one JSON document, route SSH through its
// balancer, and clean up after SIGTERM.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import pg from 'pg';
import { afterAll, expect, it } from 'vitest';
import { emulatorCommand } from '../../emulator/process.ts';
import { TEST_DATABASE_URL } from '../helpers/services.ts';
import { sshViaGateway } from '../../emulator/ssh-client.ts';
import { sshViaForwardTcp } from '../../emulator/forward-tcp-client.ts';
import { httpGet } from '../helpers/gen2.ts';
import { metric } from '../adversarial/support.ts';

interface DevClusterDoc {
  database: string;
  protocol: string;
  balancer: string;
  replicas: Array<{ name: string; public: string; peer: string; admin: string; gateway: string }>;
  sandboxes: Array<{ id: string; name: string; workspace: string; token: string; services: string[] }>;
}

const [exe, ...args] = emulatorCommand();
const child = spawn(exe!, [...args, 'dev-cluster', '--replicas', '2', '--sandboxes', '2', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));

afterAll(() => {
  if (child.exitCode === null) child.kill('SIGKILL');
});

it('dev-cluster --json (2026-08 by default) describes a working cluster and cleans up on SIGTERM', async () => {
  const doc = await new Promise<DevClusterDoc>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('dev-cluster printed no JSON in time')), 60_000);
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (line.startsWith('{')) {
        clearTimeout(timer);
        resolve(JSON.parse(line) as DevClusterDoc);
      }
    });
    child.once('exit', (code) => reject(new Error(`dev-cluster exited early (${code})`)));
  });
  expect(doc.replicas).toHaveLength(2);
  expect(doc.sandboxes).toHaveLength(2);
  expect(doc.protocol).toBe('2026-08');
  const [host, port] = doc.balancer.split(':');
  for (const s of doc.sandboxes) {
    expect(s).toMatchObject({ workspace: 'default', name: expect.stringMatching(/^demo-\d$/) });
    expect(s.services).toEqual([`default--${s.name}--web.openshell.localhost`]);
    for (let i = 0; i < 2; i++) {
      const res = await sshViaForwardTcp({ endpoint: doc.balancer, sandboxId: s.id, token: s.token, command: 'sandbox-id' });
      expect(res.grpcCode).toBeNull();
      expect(res.stdout.trim()).toBe(s.id);
      const page = await httpGet(Number(port), s.services[0]!, '/hello');
      expect(page.status).toBe(200);
      expect((JSON.parse(page.body) as { sandboxId: string }).sandboxId).toBe(s.id);
    }
  }
  expect(host).toBe('127.0.0.1');
  const metrics = await (await fetch(`http://${doc.replicas[0]!.admin}/metrics`)).text();
  expect(metrics).toContain('ohs_requests_total');
  // The per-stream accounting (kept in cells, handed to prom-client at a scrape) adds up across the
  // replicas: each of the 4 ForwardTcp streams ended once on its owner's gateway (its client's
  // cancel or the gateway's OK, whichever came first: outcome "reset" or "grpc_0"), with a duration; every attempt that reached another replica first
  // was forwarded and accepted there. Attempts that nothing answered for good are sent again and
  // counted by what stopped them: a gateway's "not ready" for a live session (a readiness repair a
  // moment away, reference §10: `not_ready` at the sender, the refusal's status at the owner), a
  // stream refused unprocessed, a closing connection, a peer that was not the owner.
  const admins = doc.replicas.map((r) => Number(r.admin.split(':')[1]));
  const total = async (name: string, labels: Record<string, string>): Promise<number> => {
    let sum = 0;
    for (const port of admins) sum += (await metric(port, name, labels)).sum;
    return sum;
  };
  const tcp = { class: 'tcp-forward' };
  await expect.poll(() => total('ohs_active_streams', tcp), { timeout: 5_000 }).toBe(0);
  const lines = (await Promise.all(admins.map(async (p) => (await (await fetch(`http://127.0.0.1:${p}/metrics`)).text()).split('\n')))).flat();
  const series = lines.filter((l) => l.includes('class="tcp-forward"') && !l.includes('_bucket')).join('\n');
  const outcomes = (target: string): Record<string, number> => {
    const out: Record<string, number> = {};
    for (const l of lines) {
      const m = new RegExp(`^ohs_requests_total\\{class="tcp-forward",target="${target}",outcome="([^"]+)"\\} (\\S+)$`).exec(l);
      if (m) out[m[1]!] = (out[m[1]!] ?? 0) + Number(m[2]);
    }
    return out;
  };
  const sum = (o: Record<string, number>): number => Object.values(o).reduce((a, b) => a + b, 0);
  const ENDED = ['reset', 'grpc_0'];
  const SENT_AGAIN = ['not_ready', 'refused', 'OHS_ERR_UPSTREAM', 'not_owner', 'grpc_9'];
  const ended = (o: Record<string, number>): number => ENDED.reduce((a, k) => a + (o[k] ?? 0), 0);
  const local = outcomes('local');
  const peer = outcomes('peer');
  expect(ended(local), series).toBe(4);
  expect(Object.keys(local).filter((k) => !ENDED.includes(k) && !SENT_AGAIN.includes(k)), series).toEqual([]);
  expect(Object.keys(peer).filter((k) => !ENDED.includes(k) && !SENT_AGAIN.includes(k)), series).toEqual([]);
  expect(await total('ohs_request_duration_seconds_count', { ...tcp, target: 'local' })).toBe(sum(local));
  expect(await total('ohs_request_duration_seconds_count', { ...tcp, target: 'peer' })).toBe(sum(peer));
  expect(await total('ohs_forwards_total', { ...tcp, outcome: 'ok' }), series).toBe(ended(peer));
  expect(await total('ohs_forwards_total', { ...tcp, peer: 'inbound', outcome: 'accepted' }), series).toBe(sum(peer) - (peer.not_owner ?? 0) - (peer.refused ?? 0) - (peer.OHS_ERR_UPSTREAM ?? 0));
  if (sum(local) > 4) console.log(`dev-cluster: ForwardTcp attempts sent again: ${series}`);
  expect(await total('ohs_owner_lookups_total', {})).toBeGreaterThanOrEqual(4);

  child.kill('SIGTERM');
  expect(await exited).toBe(0);
  // Its throwaway database is gone.
  const c = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await c.connect();
  try {
    const name = new URL(doc.database).pathname.slice(1);
    const res = await c.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
    expect(res.rowCount).toBe(0);
  } finally {
    await c.end();
  }
}, 120_000);

it('dev-cluster --protocol 2026-04 runs the seed generation: CONNECT tunnels through the Service', async () => {
  const [e, ...a] = emulatorCommand();
  const proc = spawn(e!, [...a, 'dev-cluster', '--protocol', '2026-04', '--replicas', '2', '--sandboxes', '2', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const done = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  try {
    const doc = await new Promise<DevClusterDoc>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no JSON in time')), 60_000);
      createInterface({ input: proc.stdout! }).on('line', (line) => {
        if (line.startsWith('{')) {
          clearTimeout(timer);
          resolve(JSON.parse(line) as DevClusterDoc);
        }
      });
    });
    expect(doc.protocol).toBe('2026-04');
    const [host, port] = doc.balancer.split(':');
    for (const s of doc.sandboxes) {
      expect(s.services).toEqual([]);
      const res = await sshViaGateway({ host: host!, port: Number(port), sandboxId: s.id, token: s.token, command: 'sandbox-id' });
      expect(res.status).toBe(200);
      expect(res.stdout.trim()).toBe(s.id);
    }
    proc.kill('SIGTERM');
    expect(await done).toBe(0);
  } finally {
    if (proc.exitCode === null) proc.kill('SIGKILL');
  }
}, 120_000);

it('without Postgres (forced with --embedded) it runs one embedded replica that still routes SSH', async () => {
  const [e, ...a] = emulatorCommand();
  const proc = spawn(e!, [...a, 'dev-cluster', '--embedded', '--sandboxes', '2', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  const done = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  try {
    const doc = await new Promise<DevClusterDoc & { mode: string }>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no JSON in time')), 60_000);
      createInterface({ input: proc.stdout! }).on('line', (line) => {
        if (line.startsWith('{')) {
          clearTimeout(timer);
          resolve(JSON.parse(line) as DevClusterDoc & { mode: string });
        }
      });
    });
    expect(doc.mode).toBe('embedded');
    const [host, port] = doc.balancer.split(':');
    for (const s of doc.sandboxes) {
      const res = await sshViaGateway({ host: host!, port: Number(port), sandboxId: s.id, token: s.token, command: 'sandbox-id' });
      expect(res.stdout.trim()).toBe(s.id);
    }
    proc.kill('SIGTERM');
    expect(await done).toBe(0);
  } finally {
    if (proc.exitCode === null) proc.kill('SIGKILL');
  }
}, 120_000);
