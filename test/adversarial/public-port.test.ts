// Adversarial clients on one replica's public port (issue 10 item 7): slow headers, a 10,000-stream
// flood on one HTTP/2 connection, lying and oversized gRPC length prefixes, an RST flood, clients that
// stop reading and clients that half-close. During each attack, legitimate traffic on the same
// replica (exec through the sidecar, and CONNECT tunnels) runs and is measured; the sidecar's RSS is
// sampled from /proc. Pass criteria per case: the sidecar process stays up, its peak RSS stays under
// baseline + the stated bound, at least 95 % of legitimate attempts succeed with p99 under LEGIT_P99_MS, nothing
// leaks once the attacker leaves, and nothing from the attacker reaches the gateway that should not.
// What today's sidecar does that it should not (e.g. slow headers never time out) is printed as a
// figure here and asserted in known-failures.test.ts.
import http2 from 'node:http2';
import net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster } from '../../emulator/cluster.ts';
import { GatewayStore } from '../../emulator/gateway/store.ts';
import { encodeMessage } from '../../emulator/proto.ts';
import { openConnectTunnel } from '../../emulator/ssh-client.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { exec, gatewayClient, type OpenShellClient } from '../helpers/grpc-client.ts';
import { grpcFrame } from '../helpers/raw.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { LegitProbe, metric, printReports, RssSampler, sleep, type CaseReport } from './support.ts';

/**
 * Legitimate traffic during every attack: every attempt succeeds, and p99 stays under 10 s (well
 * inside the CLI's own timeouts; the printed figures are the real measure, and on a loaded 2-core
 * machine floods that reach the gateway's single shared upstream connection cost seconds today).
 */
const LEGIT_P99_MS = 10_000;

let db: TestDatabase;
let store: GatewayStore;
let cluster: Cluster;
let fleet: SupervisorFleet;
let client: OpenShellClient;
let port: number;
let adminPort: number;
let pid: number;
const sandboxes: string[] = [];
const tokens: string[] = [];
const reports: CaseReport[] = [];

beforeAll(async () => {
  db = await createTestDatabase('adversarial_public');
  store = new GatewayStore(db.url);
  await store.migrate();
  cluster = await Cluster.start({
    replicas: 1,
    databaseUrl: db.url,
    sidecars: { redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix('adversarial-public') },
  });
  const r = cluster.replica(0);
  port = r.publicPort;
  adminPort = r.sidecarPorts?.admin as number;
  pid = r.sidecar?.child.pid as number;
  for (let i = 0; i < 3; i++) sandboxes.push((await store.createSandbox()).id);
  fleet = await startSupervisorFleet({ endpoint: `127.0.0.1:${port}`, sandboxIds: sandboxes });
  await fleet.waitAllConnected(15_000);
  for (let i = 0; i < 4; i++) tokens.push((await store.createSshSession(sandboxes[0] as string, 3600)).token);
  client = gatewayClient(`127.0.0.1:${port}`);
}, 60_000);

afterAll(async () => {
  printReports('adversarial: public port (1 replica, seed gateway emulator)', reports);
  client?.close();
  await fleet?.stop();
  await cluster?.close();
  await store?.close();
  await db?.drop();
});

/** Legitimate traffic: an exec through the sidecar, and a CONNECT tunnel opened and closed. */
function legit(): LegitProbe {
  return new LegitProbe(
    async (n) => {
      const sb = sandboxes[1 + (n % 2)] as string;
      if (n % 3 === 0) {
        const t = await openConnectTunnel({ host: '127.0.0.1', port, sandboxId: sandboxes[0], token: tokens[n % 2], timeoutMs: 10_000 });
        t.socket?.destroy();
        if (t.status !== 200) throw new Error(`tunnel ${t.status} ${t.body.trim()}`);
        return;
      }
      const out = await exec(client, sb, ['sandbox-id']);
      if (out.stdout.trim() !== sb) throw new Error(`exec answered '${out.stdout.trim()}'`);
    },
    { concurrency: 2, gapMs: 50 },
  );
}

async function expectHealthyAfter(name: string, today: string, rss: RssSampler, probe: LegitProbe, boundMiB: number): Promise<void> {
  const legitStats = await probe.stop();
  // Nothing the attacker opened is left behind once it is gone (the probe's own streams and tunnels are done).
  await expect.poll(activeStreams, { timeout: 15_000, interval: 200 }).toBe(0);
  await expect.poll(activeTunnels, { timeout: 15_000, interval: 200 }).toBe(0);
  const r = rss.stop();
  reports.push({ case: name, today, rss: r, rssBoundMiB: boundMiB, legit: legitStats });
  expect(cluster.replica(0).sidecar?.alive()).toBe(true);
  // At least 95 % of legitimate attempts succeed (on a loaded 2-core machine a flood that reaches
  // the gateway's single shared upstream connection can stall one for seconds; the report shows it).
  expect(legitStats.ok).toBeGreaterThan(0);
  expect(legitStats.failed, legitStats.errors.join(' | ')).toBeLessThanOrEqual(Math.floor((legitStats.ok + legitStats.failed) * 0.05));
  expect(legitStats.p99Ms).toBeLessThan(LEGIT_P99_MS);
  expect(r.growthMiB).toBeLessThan(boundMiB);
  expect(cluster.replica(0).sidecar?.output.filter((l) => /unhandled|uncaught/i.test(l))).toEqual([]);
}

/** Exec streams the sidecar holds (supervisor streams are always there; the probe is stopped first). */
async function activeStreams(): Promise<number> {
  return (await metric(adminPort, 'ohs_active_streams', { class: 'exec' })).sum;
}

/** CONNECT tunnels the sidecar holds (this file keeps none open between cases). */
async function activeTunnels(): Promise<number> {
  return (await metric(adminPort, 'ohs_active_tunnels')).sum;
}

/** Opens an h2c connection to the public port and waits for the server's SETTINGS. */
async function h2(): Promise<http2.ClientHttp2Session> {
  // An attacker queues as much as it likes (Node's client would refuse its own streams past 10 MB).
  const s = http2.connect(`http://127.0.0.1:${port}`, { peerMaxConcurrentStreams: 100_000, maxSessionMemory: 1024 });
  s.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    s.once('remoteSettings', () => resolve());
    s.once('error', reject);
  });
  return s;
}

function grpcHeaders(method: string): http2.OutgoingHttpHeaders {
  return { ':method': 'POST', ':path': `/openshell.v1.OpenShell/${method}`, 'content-type': 'application/grpc', te: 'trailers' };
}

describe('adversarial clients on the public port', () => {
  it('slow headers: 300 connections trickling header bytes do not hurt anyone else', async () => {
    const rss = new RssSampler(pid);
    const probe = legit();
    const attackers: net.Socket[] = [];
    for (let i = 0; i < 300; i++) {
      const s = net.connect(port, '127.0.0.1');
      s.on('error', () => undefined);
      s.write(`GET / HTTP/1.1\r\nHost: x\r\nX-Slow-${i}: `);
      attackers.push(s);
    }
    const trickle = setInterval(() => {
      for (const s of attackers) if (!s.destroyed) s.write('a');
    }, 500);
    await sleep(8_000);
    clearInterval(trickle);
    const stillOpen = attackers.filter((s) => !s.destroyed && !s.readableEnded).length;
    await expectHealthyAfter('slow headers (300 conns, 1 byte / 500 ms, 8 s)', `${stillOpen}/300 still open after 8 s (each is cut at the headers timeout, 30 s by default, with 408: fixed-weaknesses.test.ts)`, rss, probe, 100);
    for (const s of attackers) s.destroy();
  }, 60_000);

  it('a 10,000-stream flood on one HTTP/2 connection: none forwarded, nothing leaks when it goes', async () => {
    const rss = new RssSampler(pid);
    const probe = legit();
    const s = await h2();
    const advertised = s.remoteSettings.maxConcurrentStreams;
    let refused = 0;
    let answered = 0;
    const body = grpcFrame(encodeMessage('ExecSandboxRequest', { sandbox_id: sandboxes[1] as string, command: ['sandbox-id'] }));
    for (let i = 0; i < 10_000; i++) {
      let req: http2.ClientHttp2Stream;
      try {
        req = s.request(grpcHeaders('ExecSandbox'));
      } catch {
        refused++;
        continue;
      }
      req.on('error', () => refused++);
      req.on('response', () => answered++);
      // Only part of the first message: nothing can be routed, so nothing may be forwarded.
      req.write(body.subarray(0, body.length - 3));
      if (i % 500 === 0) await sleep(1);
    }
    await sleep(4000);
    const during = await activeStreams();
    s.destroy();
    await expectHealthyAfter(
      '10,000-stream flood on one h2 connection',
      `server advertises max_concurrent_streams=${advertised ?? 'unlimited'}; at most ${advertised ?? 'unlimited'} open at once (the client queues the rest), ${refused} refused, ${answered} answered within 4 s (each waits for the 10 s first-message timeout; ohs_active_streams{exec} shows ${during}: streams awaiting a first message are not counted)`,
      rss,
      probe,
      250,
    );
  }, 90_000);

  it('lying length prefixes: 4 GiB claims are refused at once; short claims never confuse routing', async () => {
    const rss = new RssSampler(pid);
    const probe = legit();
    const s = await h2();
    const huge = Buffer.from([0, 0xff, 0xff, 0xff, 0xff]);
    const statuses = new Map<string, number>();
    const started = Date.now();
    await Promise.all(
      Array.from({ length: 2000 }, (_, i) => {
        return new Promise<void>((resolve) => {
          const req = s.request(grpcHeaders(i % 2 === 0 ? 'ExecSandbox' : 'ConnectSupervisor'));
          req.on('error', () => resolve());
          req.on('response', (h) => {
            if (h['grpc-status'] !== undefined) statuses.set(String(h['grpc-status']), (statuses.get(String(h['grpc-status'])) ?? 0) + 1);
          });
          req.on('trailers', (h) => statuses.set(String(h['grpc-status']), (statuses.get(String(h['grpc-status'])) ?? 0) + 1));
          req.on('close', () => resolve());
          req.resume();
          req.write(huge); // the stream stays open: an answer proves nobody waited for 4 GiB
        });
      }),
    );
    const refusedMs = Date.now() - started;
    await sleep(2000); // legitimate traffic keeps running on the same connection's replica
    // A prefix that claims fewer bytes than follow: the first message is what the prefix says, the
    // rest is the next message (the gateway's business); the key comes from the real first message.
    const msg = encodeMessage('ExecSandboxRequest', { sandbox_id: sandboxes[1] as string, command: ['sandbox-id'] });
    const short = Buffer.concat([grpcFrame(msg), Buffer.from([0, 0, 0, 0, 200, 1, 2, 3])]);
    const shortStatus = await new Promise<string>((resolve) => {
      const req = s.request(grpcHeaders('ExecSandbox'));
      let status = 'none';
      req.on('response', (h) => (status = String(h['grpc-status'] ?? status)));
      req.on('trailers', (h) => (status = String(h['grpc-status'])));
      req.on('error', () => resolve('error'));
      req.on('close', () => resolve(status));
      req.resume();
      req.end(short);
    });
    s.destroy();
    expect(statuses.get(String(grpc.status.INVALID_ARGUMENT))).toBe(2000);
    expect(refusedMs).toBeLessThan(15_000);
    expect(shortStatus).not.toBe('none');
    await expectHealthyAfter(
      'lying length prefixes (2,000 x 4 GiB claims; short claims)',
      `all 2,000 refused INVALID_ARGUMENT in ${refusedMs} ms; short claim answered grpc-status ${shortStatus}`,
      rss,
      probe,
      100,
    );
  }, 60_000);

  it('first messages stalled just under the cap: a connection buffers up to its budget, the rest are refused, all are answered', async () => {
    const rss = new RssSampler(pid);
    const probe = legit();
    const s = await h2();
    const claim = 64_000;
    const prefix = Buffer.alloc(5);
    prefix.writeUInt32BE(claim, 1);
    const payload = Buffer.concat([prefix, Buffer.alloc(claim - 1000, 0x0a)]);
    const deadlines: string[] = [];
    const n = 800;
    const done = Array.from({ length: n }, () => {
      return new Promise<void>((resolve) => {
        const req = s.request(grpcHeaders('ExecSandbox'));
        req.on('error', () => resolve());
        req.on('response', (h) => h['grpc-status'] !== undefined && deadlines.push(String(h['grpc-status'])));
        req.on('trailers', (h) => deadlines.push(String(h['grpc-status'])));
        req.on('close', () => resolve());
        req.resume();
        req.write(payload);
      });
    });
    await sleep(3000);
    const heldMiB = Math.round(rss.sample() - rss.baseline);
    await Promise.race([Promise.all(done), sleep(20_000)]);
    s.destroy();
    const deadlineExceeded = deadlines.filter((d) => d === String(grpc.status.DEADLINE_EXCEEDED)).length;
    const overBudget = deadlines.filter((d) => d === String(grpc.status.RESOURCE_EXHAUSTED)).length;
    // The connection's buffer budget (8 MiB) holds ~130 of them until the first-message timeout;
    // the rest are refused at once. Every stream gets an answer.
    expect(deadlineExceeded + overBudget).toBe(n);
    expect(overBudget).toBeGreaterThan(0);
    expect(deadlineExceeded).toBeGreaterThan(0);
    expect(heldMiB).toBeLessThan(64);
    await expectHealthyAfter(
      `stalled first messages (${n} x ${claim - 1000} of ${claim} bytes on one connection)`,
      `~${Math.round((n * (claim - 1000)) / 1048576)} MiB offered, RSS +${heldMiB} MiB while held; ${deadlineExceeded} held until DEADLINE_EXCEEDED at the first-message timeout, ${overBudget} refused RESOURCE_EXHAUSTED over the connection's buffer budget`,
      rss,
      probe,
      400,
    );
  }, 90_000);

  it('an RST flood (rapid reset) leaves no stream or relay behind', async () => {
    const rss = new RssSampler(pid);
    const probe = legit();
    const body = grpcFrame(encodeMessage('ExecSandboxRequest', { sandbox_id: sandboxes[2] as string, command: ['sleep', '5'] }));
    const started = Date.now();
    const total = 5000;
    // The attacker reconnects whenever the sidecar drops its connection, until it sent `total` resets.
    let connections = 0;
    let s = await h2();
    connections++;
    for (let i = 0; i < total; i++) {
      if (s.destroyed || s.closed) {
        s = await h2();
        connections++;
      }
      try {
        const req = s.request(grpcHeaders('ExecSandbox'));
        req.on('error', () => undefined);
        req.write(body);
        req.close(http2.constants.NGHTTP2_CANCEL);
      } catch {
        s.destroy();
      }
      if (i % 100 === 99) await sleep(5);
    }
    const floodMs = Date.now() - started;
    await sleep(1000);
    s.destroy();
    const member = fleet.supervisors.get(sandboxes[2] as string);
    await expect.poll(() => member?.supervisor.activeRelays, { timeout: 15_000, interval: 200 }).toBe(0);
    await expectHealthyAfter(`RST flood (${total} exec streams reset at once)`, `${total} resets in ${floodMs} ms over ${connections} client connection(s) (the attacker reconnects when dropped); no stream or relay left behind (other clients' streams survive it: fixed-weaknesses.test.ts)`, rss, probe, 150);
  }, 90_000);

  it('clients that stop reading an exec that produces 300 MB: flow control holds, memory stays bounded', async () => {
    const rss = new RssSampler(pid);
    const probe = legit();
    const s = await h2();
    const body = grpcFrame(encodeMessage('ExecSandboxRequest', { sandbox_id: sandboxes[1] as string, command: ['yes-bytes', String(300 * 1024 * 1024)] }));
    const reqs: http2.ClientHttp2Stream[] = [];
    for (let i = 0; i < 10; i++) {
      const req = s.request(grpcHeaders('ExecSandbox'));
      req.on('error', () => undefined);
      req.pause(); // never read: the response piles up wherever flow control lets it
      req.end(body);
      reqs.push(req);
    }
    await sleep(6000);
    const heldMiB = Math.round(rss.sample() - rss.baseline);
    s.destroy();
    await expectHealthyAfter('10 non-reading clients of a 300 MB exec', `RSS +${heldMiB} MiB after 6 s (flow control propagates)`, rss, probe, 100);
  }, 60_000);

  it('half-closed tunnels: clients that send FIN after CONNECT and vanish', async () => {
    const rss = new RssSampler(pid);
    const probe = legit();
    const socks: net.Socket[] = [];
    const sb = sandboxes[1] as string;
    for (let i = 0; i < 15; i++) {
      const { token } = await store.createSshSession(sb, 3600);
      const t = await openConnectTunnel({ host: '127.0.0.1', port, sandboxId: sb, token, timeoutMs: 10_000 });
      expect(t.status).toBe(200);
      if (t.socket) {
        t.socket.end(); // half-close, then stop reading
        t.socket.pause();
        socks.push(t.socket);
      }
    }
    await sleep(5000);
    // The probe may hold a tunnel of its own at this moment; the figure counts the 15 only.
    const left = Math.min(15, await activeTunnels());
    for (const x of socks) x.destroy();
    // Once the probe stops, no tunnel is left: none of the 15 outlives its client.
    await expectHealthyAfter('15 half-closed, non-reading tunnels', `${left}/15 tunnels still open 5 s after the clients' FIN`, rss, probe, 100);
  }, 60_000);

  it('after every attack, an exec stream and a tunnel still work and nothing is left open', async () => {
    expect(await exec(client, sandboxes[1] as string, ['sandbox-id'])).toEqual({ stdout: `${sandboxes[1]}\n`, stderr: '', exitCode: 0 });
    const t = await openConnectTunnel({ host: '127.0.0.1', port, sandboxId: sandboxes[0], token: tokens[3] });
    expect(t.status).toBe(200);
    t.socket?.destroy();
    expect(await activeStreams()).toBe(0);
  });
});
