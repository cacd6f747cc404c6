// Pods with their own addresses, here, without containers (issue 12 item 5). Three "pods", each a
// network namespace with its own IP on a bridge, run the gateway emulator (2026-08) and the sidecar
// with exactly the commands, args and env of the injected manifest (the post-renderer's output for
// the HEAD HA fixture; see support/kubelet.ts for how images are stood in for). Postgres and Redis
// are reached through the node's bridge address, a round-robin Service on the bridge balances
// over the Ready pods (readiness from the manifest's own probes), supervisors and clients dial the
// Service. SSH (ForwardTcp) and exec reach every sandbox with peer forwarding over the pod IPs; then
// one pod's link goes down like a dead node, and the test records what happens.
//
// Requests forwarded to the cut pod before its sessions moved: the ingress PINGs the peer connection
// they went on, finds it silent and holds them for the sandbox's next owner (src/proxy/liveness.ts);
// one still in flight with time left on its client's clock when the session moves is served there.
// (Before, they stayed open on the dead connection until their clients gave up: 0 held and served,
// 6 ran into the client timeout, the retry loops served at 42 s instead of 29 s.)
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBalancer, type Balancer } from '../../emulator/balancer.ts';
import { sshViaForwardTcp } from '../../emulator/forward-tcp-client.ts';
import { createJwtKeyDir } from '../../emulator/gateway/gen2/jwt.ts';
import { Gen2Store } from '../../emulator/gateway/gen2/store.ts';
import { Phase, type ExecSandboxEvent } from '../../emulator/proto.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { injectManifests } from '../../src/deploy/inject.ts';
import { gatewayClient } from '../helpers/grpc-client.ts';
import { startOwnRedis, type OwnRedis } from '../helpers/own-redis.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/services.ts';
import { startPod, type RunningPod } from './support/kubelet.ts';
import { docsOf, fixture, injectedWorkload, options, podSpecOf } from './support/manifests.ts';
import { createPodNetwork, namespaceSupport, type PodNet, type PodNetwork } from './support/netns.ts';

type Json = Record<string, unknown>;
const PODS = 3;
const SANDBOXES = 9;
const SERVICE_PORT = 8080;
const support = namespaceSupport();
if (!support.ok) console.log(`SKIPPED: pod network-namespace test: ${support.reason}`);

let net: PodNetwork;
let db: TestDatabase;
let redis: OwnRedis;
let store: Gen2Store;
let service: Balancer;
const relays: Balancer[] = [];
let fleet: SupervisorFleet | undefined;
let root: string;
let jwtDir: string;
const pods: Array<{ net: PodNet; pod: RunningPod; name: string; ready: boolean }> = [];
const sandboxes: Array<{ id: string; name: string; token: string }> = [];
let endpointTimer: NodeJS.Timeout | undefined;
const events: string[] = [];
/** When each pod last left the Service endpoints (ms since the epoch). */
const removedAt = new Map<string, number>();
const t0 = Date.now();
const stamp = (): string => `${((Date.now() - t0) / 1000).toFixed(1)}s`;

/** The endpoints controller: a pod is in the Service while every container's readiness probe passes. */
function watchEndpoints(): void {
  const failures = new Map<string, number>();
  let busy = false;
  endpointTimer = setInterval(() => {
    if (busy) return;
    busy = true;
    void Promise.all(
      pods.map(async (p) => {
        const ok = await p.pod.ready();
        const n = ok ? 0 : (failures.get(p.name) ?? 0) + 1;
        failures.set(p.name, n);
        // failureThreshold of the sidecar's readinessProbe (2), probing every periodSeconds (2 s).
        const ready = ok ? true : n >= 2 ? false : p.ready;
        if (ready !== p.ready) {
          p.ready = ready;
          if (!ready) removedAt.set(p.name, Date.now());
          events.push(`${stamp()} ${p.name} ${ready ? 'added to' : 'removed from'} the Service endpoints`);
        }
      }),
    )
      .then(() => service.setBackends(pods.filter((p) => p.ready).map((p) => ({ host: p.net.ip, port: SERVICE_PORT }))))
      .finally(() => {
        busy = false;
      });
  }, 2000);
  endpointTimer.unref();
}

async function ownerOf(id: string): Promise<string | undefined> {
  const r = await store.pool.query<{ replica_id: string }>('SELECT replica_id FROM ohs_owners WHERE sandbox_id = $1', [id]);
  return r.rows[0]?.replica_id;
}

function execVia(endpoint: string, sandboxId: string, deadlineMs: number): Promise<{ ok: boolean; detail: string }> {
  const client = gatewayClient(endpoint);
  return new Promise((resolve) => {
    const call = (client.ExecSandbox as (r: unknown, md: grpc.Metadata, o: grpc.CallOptions) => grpc.ClientReadableStream<ExecSandboxEvent>).call(
      client,
      { sandbox_id: sandboxId, command: ['sandbox-id'], stdin: Buffer.alloc(0) },
      new grpc.Metadata(),
      { deadline: Date.now() + deadlineMs },
    );
    let out = '';
    let exit: number | null = null;
    call.on('data', (ev: ExecSandboxEvent) => {
      if (ev.stdout) out += ev.stdout.data.toString();
      if (ev.exit) exit = ev.exit.exit_code;
    });
    call.on('error', (err: grpc.ServiceError) => {
      client.close();
      resolve({ ok: false, detail: `${grpc.status[err.code]} ${err.details}` });
    });
    call.on('end', () => {
      client.close();
      resolve({ ok: out.trim() === sandboxId && exit === 0, detail: `exit ${String(exit)} ${JSON.stringify(out.trim())}` });
    });
  });
}

async function sshVia(endpoint: string, s: { id: string; token: string }, timeoutMs: number): Promise<{ ok: boolean; detail: string }> {
  try {
    const r = await sshViaForwardTcp({ endpoint, sandboxId: s.id, token: s.token, command: 'sandbox-id', timeoutMs });
    return { ok: r.grpcCode === null && r.stdout.trim() === s.id, detail: r.grpcCode === null ? JSON.stringify(r.stdout.trim()) : `${grpc.status[r.grpcCode]} ${r.grpcDetails}` };
  } catch (err) {
    return { ok: false, detail: (err as Error).message };
  }
}

async function metric(ip: string, name: string): Promise<number> {
  const res = await fetch(`http://${ip}:9091/metrics`, { signal: AbortSignal.timeout(2000) }).catch(() => null);
  if (!res) return NaN;
  let sum = 0;
  for (const line of (await res.text()).split('\n')) if (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  return sum;
}

describe.skipIf(!support.ok)('pods with their own addresses (network namespaces) running the injected manifest', () => {
  let injectedPodSpec: Json;
  let endpoint: string;

  beforeAll(async () => {
    root = mkdtempSync(path.join(os.tmpdir(), 'ohs-pods-'));
    net = createPodNetwork();
    db = await createTestDatabase('pods_netns');
    redis = await startOwnRedis();
    store = new Gen2Store(db.url);
    await store.migrate();
    // Postgres and Redis as the pods see them: on the node's address (relays to the local servers).
    const pgRelay = await startBalancer([{ host: '127.0.0.1', port: Number(new URL(db.url).port || 5432) }], net.hostIp);
    const redisRelay = await startBalancer([{ host: '127.0.0.1', port: redis.port }], net.hostIp);
    relays.push(pgRelay, redisRelay);
    service = await startBalancer([], net.hostIp, SERVICE_PORT);
    endpoint = `${net.hostIp}:${service.port}`;

    // The manifest: the post-renderer's output for upstream's HA values (Deployment, external DB
    // Secret), plaintext like the chart's server.disableTls=true (the emulator speaks h2c, and the
    // sidecar has no TLS towards its gateway yet).
    const image = 'openshell-ha-sidecar:pod-test';
    const injected = injectManifests(fixture('head-ha.helm3-input.yaml'), options({ tls: 'off', image })).output;
    const workload = injectedWorkload(injected);
    injectedPodSpec = podSpecOf(workload);
    const docs = docsOf(injected);
    const secrets: Record<string, Record<string, string>> = {};
    const configMaps: Record<string, Record<string, string>> = {};
    for (const d of docs) {
      const name = String((d['metadata'] as Json)['name']);
      if (d['kind'] === 'Secret') secrets[name] = Object.fromEntries(Object.entries((d['data'] as Record<string, string>) ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64').toString()]));
      if (d['kind'] === 'ConfigMap') configMaps[name] = (d['data'] as Record<string, string>) ?? {};
    }
    // What the cluster holds outside the upstream release: the DB Secret the HA values name, the own
    // chart's Secret, and the JWT keys the certgen hook would have created.
    const dbName = new URL(db.url).pathname.slice(1);
    secrets['openshell-ha-pg'] = { uri: `postgres://postgres@${net.hostIp}:${pgRelay.port}/${dbName}` };
    secrets['openshell-ha'] = { 'peer-secret': randomBytes(24).toString('hex'), 'redis-url': `redis://${net.hostIp}:${redisRelay.port}` };
    // The fixture masks the KEK as zero bytes (not an environment value); the real chart holds base64 text.
    secrets['openshell-credential-storage-key-encryption-key'] = { 'key-encryption-key': randomBytes(32).toString('base64') };
    jwtDir = createJwtKeyDir();
    secrets['openshell-jwt-keys'] = Object.fromEntries(['signing.pem', 'public.pem', 'kid'].map((f) => [f, readFileSync(path.join(jwtDir, f), 'utf8')]));

    for (let i = 0; i < PODS; i++) net.addPod();
    const started = await Promise.all(
      net.pods.map(async (pn) => {
        const name = `openshell-7f9c4-${pn.index}`;
        const pod = await startPod(injectedPodSpec, {
          podName: name,
          namespace: 'openshell',
          podIp: pn.ip,
          netns: pn.ns,
          secrets,
          configMaps,
          root: path.join(root, name),
          sidecarImage: image,
        });
        return { net: pn, pod, name, ready: false };
      }),
    );
    pods.push(...started);
    watchEndpoints();
    const deadline = Date.now() + 30_000;
    while (pods.some((p) => !p.ready) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 250));
    expect(pods.map((p) => p.ready)).toEqual(pods.map(() => true));

    for (let i = 0; i < SANDBOXES; i++) {
      const row = await store.createSandbox({ name: `pod-box-${i}` });
      const ssh = await store.createSshSession(row.id, 3600);
      sandboxes.push({ id: row.id, name: row.name, token: ssh.token });
    }
    // Supervisors dial the Service, like sandbox pods elsewhere in the cluster. The reconnect backoff
    // is the real one (1 s doubling) capped at 8 s instead of 30 s to keep the test short.
    fleet = await startSupervisorFleet({ endpoint, sandboxIds: sandboxes.map((s) => s.id), protocol: '2026-08', jwtKeyDir: jwtDir, backoff: { initialMs: 1000, maxMs: 8000 } });
    await fleet.waitAllConnected(30_000);
    for (const s of sandboxes) {
      const deadline2 = Date.now() + 15_000;
      while (Date.now() < deadline2 && ((await store.getSandbox(s.id))?.phase !== Phase.READY || !(await ownerOf(s.id)))) await new Promise((r) => setTimeout(r, 200));
    }
  }, 120_000);

  afterAll(async () => {
    if (endpointTimer) clearInterval(endpointTimer);
    await fleet?.stop().catch(() => undefined);
    await Promise.all(pods.map((p) => p.pod.stop().catch(() => undefined)));
    await service?.close();
    for (const r of relays) await r.close();
    await store?.close().catch(() => undefined);
    await redis?.stop().catch(() => undefined);
    await db?.drop().catch(() => undefined);
    net?.close();
    if (root) rmSync(root, { recursive: true, force: true });
    if (jwtDir) rmSync(jwtDir, { recursive: true, force: true });
  }, 60_000);

  it('each pod runs the manifest’s processes on its own address; SSH and exec through the Service reach every sandbox, with peer forwarding between pod IPs', async () => {
    // The commands the kubelet ran, from the manifest.
    for (const p of pods) {
      const sc = p.pod.containers.find((c) => c.name === 'ohs-sidecar');
      expect(sc?.nativeSidecar).toBe(true);
      expect(sc?.env['OHS_PEER_HOST']).toBe(p.net.ip);
      expect(sc?.env['OHS_REPLICA_ID']).toBe(p.name);
      expect(p.pod.containers.find((c) => c.name === 'openshell-gateway')?.env['OPENSHELL_BIND_ADDRESS']).toBe('127.0.0.1');
    }
    const replicas = await store.pool.query<{ replica_id: string; peer_url: string }>('SELECT replica_id, peer_url FROM ohs_replicas ORDER BY replica_id');
    expect(replicas.rows.map((r) => `${r.replica_id}=${r.peer_url}`)).toEqual(pods.map((p) => `${p.name}=http://${p.net.ip}:8443`));
    // The gateway listens on the pod's loopback only: not reachable on the pod IP.
    const direct = await fetch(`http://${pods[0]?.net.ip}:18080/`, { signal: AbortSignal.timeout(1500) }).then(
      () => 'reachable',
      (err: Error) => (err.cause as { code?: string } | undefined)?.code ?? err.name,
    );
    expect(direct).toBe('ECONNREFUSED');

    const owners = new Map<string, number>();
    for (const s of sandboxes) owners.set((await ownerOf(s.id)) ?? '?', (owners.get((await ownerOf(s.id)) ?? '?') ?? 0) + 1);
    const forwardsBefore = await Promise.all(pods.map((p) => metric(p.net.ip, 'ohs_forwards_total')));
    let sshOk = 0;
    let execOk = 0;
    const failures: string[] = [];
    const rounds = 3;
    for (let round = 0; round < rounds; round++) {
      await Promise.all(
        sandboxes.map(async (s) => {
          const a = await sshVia(endpoint, s, 20_000);
          if (a.ok) sshOk++;
          else failures.push(`ssh ${s.name}: ${a.detail}`);
          const b = await execVia(endpoint, s.id, 20_000);
          if (b.ok) execOk++;
          else failures.push(`exec ${s.name}: ${b.detail}`);
        }),
      );
    }
    const forwardsAfter = await Promise.all(pods.map((p) => metric(p.net.ip, 'ohs_forwards_total')));
    const forwarded = forwardsAfter.map((v, i) => v - (forwardsBefore[i] ?? 0));
    console.log(
      `pods: ${pods.map((p) => `${p.name}@${p.net.ip}`).join(', ')}; Service ${endpoint}; sandbox owners ${[...owners].map(([k, v]) => `${k}:${v}`).join(' ')}; ` +
        `SSH ${sshOk}/${rounds * SANDBOXES}, exec ${execOk}/${rounds * SANDBOXES} through the Service; peer forwards per pod ${forwarded.join('/')}` +
        (failures.length ? `; failures: ${failures.slice(0, 4).join('; ')}` : ''),
    );
    expect(failures).toEqual([]);
    expect(forwarded.reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
    expect(owners.size).toBeGreaterThan(1);
  }, 120_000);

  it('a pod whose link goes down leaves the Service, its sessions move, every sandbox is served again, and it rejoins without split brain', async () => {
    // Cut the pod that owns the most sandboxes.
    const count = new Map<string, number>();
    for (const s of sandboxes) {
      const o = (await ownerOf(s.id)) ?? '?';
      count.set(o, (count.get(o) ?? 0) + 1);
    }
    const victim = [...pods].sort((a, b) => (count.get(b.name) ?? 0) - (count.get(a.name) ?? 0))[0] as (typeof pods)[number];
    const affected: Array<(typeof sandboxes)[number]> = [];
    for (const s of sandboxes) if ((await ownerOf(s.id)) === victim.name) affected.push(s);
    const others = sandboxes.filter((s) => !affected.includes(s));
    expect(affected.length).toBeGreaterThan(0);

    const cutAt = Date.now();
    net.setLink(victim.net, false);
    events.push(`${stamp()} link of ${victim.name} (${victim.net.ip}) set down; it owned ${affected.length} sandboxes`);
    const since = (): number => (Date.now() - cutAt) / 1000;

    // Clients keep trying, like a user retrying: per affected sandbox one SSH and one exec loop, each
    // attempt with a 20 s client timeout and 1 s between attempts, until it succeeds; meanwhile one
    // SSH a second to the sandboxes of the healthy pods.
    const attempts: Array<{ kind: string; sandbox: string; start: number; end: number; ok: boolean; detail: string }> = [];
    const moved = new Map<string, number>();
    const deadline = Date.now() + 90_000;
    const attempt = async (kind: 'ssh' | 'exec', s: (typeof sandboxes)[number]): Promise<boolean> => {
      const start = since();
      const r = kind === 'ssh' ? await sshVia(endpoint, s, 20_000) : await execVia(endpoint, s.id, 20_000);
      attempts.push({ kind, sandbox: s.name, start, end: since(), ok: r.ok, detail: r.detail });
      return r.ok;
    };
    const retryLoop = async (kind: 'ssh' | 'exec', s: (typeof sandboxes)[number]): Promise<number | undefined> => {
      while (Date.now() < deadline) {
        if (await attempt(kind, s)) return since();
        await new Promise((r) => setTimeout(r, 1000));
      }
      return undefined;
    };
    let watching = true;
    const watchOwners = (async () => {
      while (watching) {
        for (const s of affected) {
          const o = await ownerOf(s.id);
          if (o && o !== victim.name && !moved.has(s.name)) moved.set(s.name, since());
        }
        await new Promise((r) => setTimeout(r, 250));
      }
    })();
    // A fine-grained probe: one SSH with an 8 s timeout every second to one affected sandbox (an SSH
    // handshake in JavaScript takes seconds on a loaded 2-core machine).
    let firstProbeOk: number | undefined;
    let probing = true;
    const probe = (async () => {
      const s = affected[0] as (typeof sandboxes)[number];
      while (probing && firstProbeOk === undefined && Date.now() < deadline) {
        if ((await sshVia(endpoint, s, 8000)).ok) firstProbeOk = since();
        else await new Promise((r) => setTimeout(r, 1000));
      }
    })();
    let othersRunning = true;
    const otherTraffic = (async () => {
      for (let i = 0; othersRunning && others.length > 0; i++) {
        await attempt('ssh', others[i % others.length] as (typeof sandboxes)[number]);
        await new Promise((r) => setTimeout(r, 1000));
      }
    })();
    const servedAt = await Promise.all(affected.flatMap((s) => [retryLoop('ssh', s), retryLoop('exec', s)]));
    othersRunning = false;
    // The probe runs to its first success (or the deadline): held requests may now be served before
    // any 8 s probe gets through, and the probe's own figure is still wanted.
    await Promise.all([otherTraffic, probe]);
    probing = false;
    watching = false;
    await watchOwners;

    const isAffected = (a: { sandbox: string }): boolean => affected.some((s) => s.name === a.sandbox);
    const onAffected = attempts.filter(isAffected);
    const onOthers = attempts.filter((a) => !isAffected(a));
    // Held then served: in flight when its sandbox's session moved, and answered after that.
    const movedAt = (name: string): number => moved.get(name) ?? Infinity;
    const held = onAffected.filter((a) => a.ok && a.start < movedAt(a.sandbox) && a.end > movedAt(a.sandbox));
    const lost = onAffected.filter((a) => !a.ok && a.start < movedAt(a.sandbox) && a.end > movedAt(a.sandbox));
    const failed = onAffected.filter((a) => !a.ok);
    const fmt = (x: number): string => `${x.toFixed(1)}s`;
    console.log(
      [
        `link cut: ${victim.name} (${victim.net.ip}) owned ${affected.length}/${SANDBOXES} sandboxes`,
        `it left the Service endpoints ${fmt(((removedAt.get(victim.name) ?? NaN) - cutAt) / 1000)} after the cut (readiness probe: period 2 s, failureThreshold 2)`,
        `sessions moved (owner row changed) after ${[...moved.values()].sort((a, b) => a - b).map(fmt).join(', ')}`,
        `first SSH to one of its sandboxes served again at ${firstProbeOk === undefined ? 'never' : fmt(firstProbeOk)} (8 s probes); the 20 s retry loops succeeded at ${servedAt.map((t) => (t === undefined ? 'never' : fmt(t))).join(', ')}`,
        `requests for its sandboxes (20 s client timeout): ${onAffected.length} attempts, ${onAffected.length - failed.length} ok, ${failed.length} failed ` +
          `(started ${failed.map((a) => fmt(a.start)).join(', ')}); in flight when the session moved: ${held.length} held and served, ${lost.length} ran into the client timeout`,
        `failures: ${[...new Set(failed.map((a) => a.detail.replace(/[0-9a-f-]{36}/g, '<id>').replace(/,name resolution.*$/, '')))].slice(0, 5).join(' | ') || 'none'}`,
        `other sandboxes meanwhile: ${onOthers.filter((a) => a.ok).length}/${onOthers.length} SSH ok` +
          (onOthers.some((a) => !a.ok) ? ` (failed: ${onOthers.filter((a) => !a.ok).map((a) => `at ${fmt(a.start)} ${a.detail.replace(/,name resolution.*$/, '')}`).join('; ')})` : ''),
      ].join('\n  '),
    );
    if (process.env.OHS_POD_TEST_VERBOSE === '1') for (const a of onAffected) console.log(`  ${a.kind} ${a.sandbox} ${fmt(a.start)}→${fmt(a.end)} ${a.ok ? 'ok' : a.detail}`);
    // What must hold: the pod leaves the Service, every session moves, every sandbox is served again.
    expect(pods.find((p) => p === victim)?.ready).toBe(false);
    expect(moved.size).toBe(affected.length);
    expect(servedAt.every((t) => t !== undefined)).toBe(true);
    expect(firstProbeOk).toBeDefined();
    // In flight when its session moved with 5 s or more left before its client's 20 s timeout: held
    // and served on the next owner, not lost on the dead connection.
    const lostWithTimeLeft = lost.filter((a) => a.start + 20 - movedAt(a.sandbox) >= 5);
    expect(lostWithTimeLeft.map((a) => `${a.kind} ${a.sandbox} started ${fmt(a.start)}: ${a.detail}`)).toEqual([]);

    // Afterwards everything works through the Service again, over the two remaining pods.
    let ok = 0;
    for (const s of sandboxes) {
      if ((await sshVia(endpoint, s, 20_000)).ok) ok++;
      if ((await execVia(endpoint, s.id, 20_000)).ok) ok++;
    }
    console.log(`after the cut: SSH+exec ${ok}/${SANDBOXES * 2} through the Service (2 pods)`);
    expect(ok).toBe(SANDBOXES * 2);

    // The link comes back: the pod turns Ready again and rejoins; it owns nothing now, and requests
    // it receives for the moved sandboxes go to their new owners (no split brain).
    net.setLink(victim.net, true);
    const back = Date.now();
    while (!victim.ready && Date.now() - back < 30_000) await new Promise((r) => setTimeout(r, 250));
    expect(victim.ready).toBe(true);
    events.push(`${stamp()} ${victim.name} Ready again ${((Date.now() - back) / 1000).toFixed(1)}s after its link came back`);
    let healed = 0;
    const healFailures: string[] = [];
    const tally = (what: string, r: { ok: boolean; detail: string }): void => {
      if (r.ok) healed++;
      else healFailures.push(`${what}: ${r.detail}`);
    };
    for (const s of sandboxes) {
      tally(`ssh ${s.name} via Service`, await sshVia(endpoint, s, 20_000));
      tally(`exec ${s.name} via Service`, await execVia(endpoint, s.id, 20_000));
      tally(`exec ${s.name} via ${victim.name}`, await execVia(`${victim.net.ip}:8080`, s.id, 20_000));
    }
    if (healFailures.length > 0) console.log(`after the heal, failed: ${healFailures.join(' | ')}`);
    const stillOwned = (await Promise.all(sandboxes.map((s) => ownerOf(s.id)))).filter((o) => o === victim.name).length;
    console.log(`${events.at(-1) ?? ''}; then SSH+exec through the Service and exec via its own address: ${healed}/${SANDBOXES * 3} ok; sandboxes it owns: ${stillOwned}`);
    expect(healed).toBe(SANDBOXES * 3);
  }, 180_000);
});
