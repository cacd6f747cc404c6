import { randomUUID } from 'node:crypto';
import net from 'node:net';
import { Duplex } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { runSshCommand } from '../../emulator/ssh-client.ts';
import { openShellService } from '../../emulator/proto.ts';
import type { GatewayMessage, RelayFrame, SupervisorMessage } from '../../emulator/proto.ts';
import { startSupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { startSandboxSshServer } from '../../emulator/supervisor/ssh-server.ts';
import type { SandboxSshServer } from '../../emulator/supervisor/ssh-server.ts';
import { SupervisorEmulator } from '../../emulator/supervisor/supervisor.ts';

/** A port nothing listens on: bound once, then released. */
async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as net.AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

async function until(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

interface StubSession {
  sandboxId: string;
  instanceId: string;
  sessionId: string;
  peer: string;
  heartbeats: number;
  call: grpc.ServerDuplexStream<SupervisorMessage, GatewayMessage>;
  ended: boolean;
}

/**
 * Just enough of the gateway's side of §2.1/§2.2 to drive the emulator: accepts every hello, and
 * hands each RelayStream to the test as a byte Duplex. Not the gateway emulator.
 */
class StubGateway {
  readonly sessions: StubSession[] = [];
  readonly relayPeers = new Map<string, string>();
  private readonly waiters = new Map<string, (d: Duplex) => void>();
  private readonly server = new grpc.Server();
  port = 0;

  async start(): Promise<void> {
    this.server.addService(openShellService(), {
      ConnectSupervisor: (call: grpc.ServerDuplexStream<SupervisorMessage, GatewayMessage>) => {
        let session: StubSession | undefined;
        call.on('error', () => undefined);
        call.on('data', (msg: SupervisorMessage) => {
          if (msg.hello) {
            session = {
              sandboxId: msg.hello.sandbox_id,
              instanceId: msg.hello.instance_id,
              sessionId: randomUUID(),
              peer: call.getPeer(),
              heartbeats: 0,
              call,
              ended: false,
            };
            this.sessions.push(session);
            call.write({ session_accepted: { session_id: session.sessionId, heartbeat_interval_secs: 15 } });
          } else if (msg.heartbeat && session) {
            session.heartbeats++;
          }
        });
        const end = (): void => {
          if (session) session.ended = true;
        };
        call.on('end', end);
        call.on('cancelled', end);
      },
      RelayStream: (call: grpc.ServerDuplexStream<RelayFrame, RelayFrame>) => {
        call.on('error', () => undefined);
        const bytes = new Duplex({
          read() {},
          write(chunk: Buffer, _enc, cb) {
            if (call.write({ data: chunk })) cb();
            else call.once('drain', () => cb());
          },
          final(cb) {
            call.end();
            cb();
          },
        });
        bytes.on('error', () => undefined);
        bytes.on('close', () => {
          if (!call.writableEnded) call.end();
        });
        call.on('data', (frame: RelayFrame) => {
          if (frame.init) {
            this.relayPeers.set(frame.init.channel_id, call.getPeer());
            this.waiters.get(frame.init.channel_id)?.(bytes);
          } else if (frame.data && !bytes.push(frame.data)) {
            // Test-side consumer is an ssh2 client; it keeps up, so no pause bookkeeping here.
          }
        });
        call.on('end', () => bytes.push(null));
        call.on('cancelled', () => bytes.destroy());
      },
    });
    this.port = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => (err ? reject(err) : resolve(port))),
    );
  }

  /** Sends RelayOpen on the live session of `sandboxId` and resolves with the relay's byte stream. */
  openRelay(sandboxId: string): Promise<{ channelId: string; bytes: Duplex }> {
    const session = [...this.sessions].reverse().find((s) => s.sandboxId === sandboxId && !s.ended);
    if (!session) throw new Error(`no live session for ${sandboxId}`);
    const channelId = randomUUID();
    return new Promise((resolve) => {
      this.waiters.set(channelId, (bytes) => {
        this.waiters.delete(channelId);
        resolve({ channelId, bytes });
      });
      session.call.write({ relay_open: { channel_id: channelId } });
    });
  }

  endSession(session: StubSession): void {
    session.call.end();
  }

  close(): void {
    this.server.forceShutdown();
  }
}

describe('supervisor emulator reconnect backoff', () => {
  it('doubles the delay after each failed attempt and caps it', async () => {
    const sup = new SupervisorEmulator({
      endpoint: `127.0.0.1:${await closedPort()}`,
      sandboxId: 'sbx-backoff',
      sshPort: 1,
      backoff: { initialMs: 50, maxMs: 200 },
    });
    const reasons: string[] = [];
    sup.on('disconnected', ({ reason }) => reasons.push(reason));
    sup.start();
    try {
      await until(() => sup.delays.length >= 6, 10_000, 'six failed attempts');
    } finally {
      await sup.stop();
    }
    expect(sup.delays.slice(0, 6)).toEqual([50, 100, 200, 200, 200, 200]);
    expect(sup.sessionsStarted).toBe(0);
    expect(sup.connected).toBe(false);
    expect(reasons[0]).toMatch(/UNAVAILABLE/);
  });
});

describe('supervisor emulator against a stub gateway', () => {
  const SANDBOX = 'sbx-supervisor-test';
  let gw: StubGateway;
  let ssh: SandboxSshServer;
  let sup: SupervisorEmulator;

  beforeAll(async () => {
    gw = new StubGateway();
    await gw.start();
    ssh = await startSandboxSshServer({ sandboxId: SANDBOX });
    sup = new SupervisorEmulator({
      endpoint: `127.0.0.1:${gw.port}`,
      sandboxId: SANDBOX,
      sshPort: ssh.port,
      backoff: { initialMs: 50, maxMs: 400 },
      heartbeatSecsOverride: 0.05,
    });
    sup.start();
    await sup.waitConnected(10_000);
  });

  afterEach(async () => {
    await until(() => sup.activeRelays === 0, 10_000, 'relays to close');
  });

  afterAll(async () => {
    await sup?.stop();
    const relaysAfterStop = sup?.activeRelays ?? 0;
    for (let waited = 0; ssh && ssh.connections > 0 && waited < 5000; waited += 20) await new Promise((r) => setTimeout(r, 20));
    const sshLeft = ssh?.connections ?? 0;
    await ssh?.close();
    gw?.close();
    expect(relaysAfterStop).toBe(0);
    expect(sshLeft).toBe(0);
  });

  it('says hello with its sandbox id and heartbeats on the accepted session', async () => {
    const session = gw.sessions[0]!;
    expect(session.sandboxId).toBe(SANDBOX);
    expect(session.instanceId).toMatch(/^[0-9a-f-]{36}$/);
    expect(sup.connected).toBe(true);
    expect(sup.sessionId).toBe(session.sessionId);
    await until(() => session.heartbeats >= 2, 5000, 'two heartbeats');
  });

  it('ssh through a relay reaches the sandbox, on the control stream\'s connection', async () => {
    const relayEvents: string[] = [];
    sup.on('relay', ({ channelId }) => relayEvents.push(channelId));
    const { channelId, bytes } = await gw.openRelay(SANDBOX);
    expect(relayEvents).toEqual([channelId]);
    expect(gw.relayPeers.get(channelId)).toBe(gw.sessions.at(-1)!.peer);
    const res = await runSshCommand(bytes, 'sandbox-id', { timeoutMs: 10_000 });
    expect(res).toEqual({ stdout: `${SANDBOX}\n`, stderr: '', code: 0 });
  });

  it('bulk bytes and stdin cross a relay intact', async () => {
    const [a, b] = await Promise.all([gw.openRelay(SANDBOX), gw.openRelay(SANDBOX)]);
    const input = Buffer.alloc(1_000_000, 'x');
    const [bulk, echoed] = await Promise.all([
      runSshCommand(a.bytes, 'yes-bytes 4000000', { timeoutMs: 30_000 }),
      runSshCommand(b.bytes, 'cat', { stdin: input, timeoutMs: 30_000 }),
    ]);
    expect(bulk.code).toBe(0);
    expect(bulk.stdout.length).toBe(4_000_000);
    expect(echoed.stdout.length).toBe(input.length);
    expect(echoed.code).toBe(0);
  });

  it('a dropped connection reconnects on a fresh connection without resetting the backoff', async () => {
    const before = gw.sessions.length;
    const disconnects: string[] = [];
    sup.on('disconnected', ({ reason }) => disconnects.push(reason));
    const delaysBefore = sup.delays.length;

    sup.dropConnection();
    await until(() => sup.sessionsStarted === 2 && sup.connected, 10_000, 'second session');
    // The gateway ends the second session itself: reference §6 "superseded" closes the stream.
    gw.endSession(gw.sessions.at(-1)!);
    await until(() => sup.sessionsStarted === 3 && sup.connected, 10_000, 'third session');

    expect(disconnects).toHaveLength(2);
    expect(disconnects[1]).toBe('gateway closed stream');
    expect(sup.delays.slice(delaysBefore)).toEqual([50, 100]);
    expect(sup.currentAttemptDelayMs).toBe(100);
    const peers = gw.sessions.slice(before - 1).map((s) => s.peer);
    expect(new Set(peers).size).toBe(peers.length);
    const instances = gw.sessions.map((s) => s.instanceId);
    expect(new Set(instances).size).toBe(instances.length);

    // The fresh session still serves relays.
    const { bytes } = await gw.openRelay(SANDBOX);
    expect((await runSshCommand(bytes, 'echo back', { timeoutMs: 10_000 })).stdout).toBe('back\n');
  });

  it('a network drop tears down relays riding that connection', async () => {
    const { bytes } = await gw.openRelay(SANDBOX);
    const pending = runSshCommand(bytes, 'sleep 30', { timeoutMs: 20_000 });
    await until(() => sup.activeRelays === 1 && ssh.connections >= 1, 5000, 'relay to be up');
    sup.dropConnection();
    await expect(pending).rejects.toThrow();
    await until(() => sup.activeRelays === 0, 5000, 'relay to close');
    await until(() => sup.connected, 10_000, 'reconnect');
  });
});

describe('supervisor fleet', () => {
  it('connects one supervisor per sandbox and stops them all', async () => {
    const gw = new StubGateway();
    await gw.start();
    const ids = ['sbx-fleet-a', 'sbx-fleet-b', 'sbx-fleet-c'];
    const fleet = await startSupervisorFleet({ endpoint: `127.0.0.1:${gw.port}`, sandboxIds: ids, backoff: { initialMs: 50, maxMs: 200 } });
    try {
      await fleet.waitAllConnected(10_000);
      expect(gw.sessions.map((s) => s.sandboxId).sort()).toEqual(ids);
      const { bytes } = await gw.openRelay('sbx-fleet-b');
      expect((await runSshCommand(bytes, 'sandbox-id', { timeoutMs: 10_000 })).stdout).toBe('sbx-fleet-b\n');
    } finally {
      await fleet.stop();
      gw.close();
    }
    for (const { supervisor } of fleet.supervisors.values()) {
      expect(supervisor.connected).toBe(false);
      expect(supervisor.activeRelays).toBe(0);
    }
    await until(() => gw.sessions.every((s) => s.ended), 5000, 'gateway to see the sessions end');
  });

  it('waitAllConnected names the supervisors that never connected', async () => {
    const fleet = await startSupervisorFleet({
      endpoint: `127.0.0.1:${await closedPort()}`,
      sandboxIds: ['sbx-lonely'],
      backoff: { initialMs: 50, maxMs: 50 },
    });
    try {
      await expect(fleet.waitAllConnected(300)).rejects.toThrow(/sbx-lonely/);
    } finally {
      await fleet.stop();
    }
  });
});
