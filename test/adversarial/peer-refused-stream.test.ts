// A forwarded stream the owner's gateway refuses unprocessed (RST_STREAM REFUSED_STREAM, what a
// gateway sends for streams past the last stream id of its shutdown GOAWAY) is sent again by the
// owner's sidecar, body and all, instead of coming back to the client as UNAVAILABLE: the ingress
// cannot tell such a refusal from a failure once the owner answered it. Two sidecars (cluster mode,
// real Postgres and Redis) in front of one in-test h2c gateway that refuses the first ForwardTcp
// stream it sees and echoes every later one. A watch the gateway refuses the same way is sent again by
// the sidecar that follows the owner for it (the whole request is kept for such a replay); a log push
// the same way, with the batches it had written to the refused leg sent first on the next one.
import http2 from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FORWARD_TCP, connectH2, forwardInitFrame, frameData, grpcFrame } from '../../bench/lib/raw-clients.ts';
import { holdSupervisor, startBenchSidecar, waitForOwner, type BenchSidecar, type HeldSupervisor } from '../../bench/lib/sidecars.ts';
import { GatewayStore } from '../../emulator/gateway/store.ts';
import { createTestDatabase, TEST_REDIS_URL, testRedisPrefix, type TestDatabase } from '../helpers/services.ts';
import { answerWhenEnded, echoAfterInit, grpcCall, startScriptedGateway, type ScriptedGateway } from './scripted-gateway.ts';
import { metric } from './support.ts';

const SANDBOX = 'refused-stream-sandbox';

describe('streams a gateway refuses unprocessed (REFUSED_STREAM)', () => {
  let db: TestDatabase;
  let store: GatewayStore;
  let gateway: ScriptedGateway;
  let forwardsSeen = 0;
  let watchesSeen = 0;
  let pushesSeen = 0;
  let owner: BenchSidecar;
  let ingress: BenchSidecar;
  let supervisor: HeldSupervisor;
  let client: http2.ClientHttp2Session;
  let token: string;

  beforeAll(async () => {
    db = await createTestDatabase('peer_refused_stream');
    store = new GatewayStore(db.url);
    await store.migrate();
    await store.createSandbox({ id: SANDBOX, name: SANDBOX });
    token = (await store.createSshSession(SANDBOX, 3600)).token;

    gateway = await startScriptedGateway((stream, path) => {
      if (path === FORWARD_TCP) {
        if (++forwardsSeen === 1) stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
        else echoAfterInit(stream);
        return true;
      }
      if (path.endsWith('/WatchSandbox')) {
        if (++watchesSeen === 1) {
          stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
          return true;
        }
        // One event carrying the request it answers, then the end (a stop-on-terminal watch).
        answerWhenEnded(stream, (request) => Buffer.concat([Buffer.from('event for '), request]));
        return true;
      }
      if (path.endsWith('/PushSandboxLogs')) {
        if (++pushesSeen === 1) {
          stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
          return true;
        }
        // Client streaming: every batch it got, answered once the push ends.
        answerWhenEnded(stream, (batches) => batches);
        return true;
      }
      return false;
    });
    const gatewayPort = gateway.port;

    const common = { gatewayPort, databaseUrl: db.url, redisUrl: TEST_REDIS_URL, redisKeyPrefix: testRedisPrefix('peer-refused'), peerSecret: 'peer-refused-secret-0123456789' };
    [owner, ingress] = await Promise.all([startBenchSidecar('owner', common), startBenchSidecar('ingress', common)]);
    supervisor = await holdSupervisor(owner.publicPort, SANDBOX);
    await waitForOwner(db.url, SANDBOX, 'owner');
    client = await connectH2(ingress.publicPort);
  }, 60_000);

  afterAll(async () => {
    client?.destroy();
    supervisor?.close();
    await Promise.all([owner?.stop(), ingress?.stop()]);
    await gateway?.close();
    await store?.close();
    await db?.drop();
  });

  it('a forwarded ForwardTcp is sent again by the owner’s sidecar: the client gets its echo and grpc-status 0', async () => {
    const ping = frameData(Buffer.from('ping through a refusal'));
    const result = await grpcCall(client, FORWARD_TCP, Buffer.concat([forwardInitFrame(SANDBOX, token), ping]), false, (got) => got.length >= ping.length);
    expect(result).toEqual({ status: '0', body: ping });
    // The gateway saw the refused stream and the one sent again, both from the owner's sidecar.
    expect(forwardsSeen).toBe(2);
    // The sidecar's log arrives over its stdout pipe, which may trail the answer on the socket.
    await expect.poll(() => owner.proc.output.some((l) => l.includes('sending it again on another connection') && l.includes('refused stream')), { timeout: 5_000 }).toBe(true);
    expect((await metric(ingress.adminPort, 'ohs_requests_total', { class: 'tcp-forward', target: 'peer', outcome: 'grpc_0' })).sum).toBe(1);
  }, 30_000);

  it('a watch on the owner’s sidecar that its gateway refused unprocessed is sent again and answered', async () => {
    const local = await connectH2(owner.publicPort);
    try {
      // WatchSandboxRequest{ id = SANDBOX }, the whole request (a watch is server-streaming).
      const request = grpcFrame(Buffer.concat([Buffer.from([0x0a, SANDBOX.length]), Buffer.from(SANDBOX)]));
      const result = await grpcCall(local, '/openshell.v1.OpenShell/WatchSandbox', request, true);
      expect(result).toEqual({ status: '0', body: grpcFrame(Buffer.concat([Buffer.from('event for '), request])) });
      expect(watchesSeen).toBe(2);
      await expect.poll(() => owner.proc.output.some((l) => l.includes('watch refused before it was processed; sending it again')), { timeout: 5_000 }).toBe(true);
    } finally {
      local.destroy();
    }
  }, 30_000);

  it('a log push its gateway refused unprocessed is sent again with the batches written to it', async () => {
    const local = await connectH2(owner.publicPort);
    try {
      // PushSandboxLogsRequest{ sandbox_id = SANDBOX, … }: three batches, sent together, then the end.
      const batch = (n: number): Buffer => grpcFrame(Buffer.concat([Buffer.from([0x0a, SANDBOX.length]), Buffer.from(SANDBOX), Buffer.from([0x12, 7]), Buffer.from(`line ${n}\n`)]));
      const batches = [batch(1), batch(2), batch(3)];
      const result = await grpcCall(local, '/openshell.v1.OpenShell/PushSandboxLogs', Buffer.concat(batches), true);
      // The gateway that served the push got every batch once, in order.
      expect(result).toEqual({ status: '0', body: grpcFrame(Buffer.concat(batches)) });
      expect(pushesSeen).toBe(2);
      await expect.poll(() => owner.proc.output.some((l) => l.includes('log push refused before it was processed; sending its batches again')), { timeout: 5_000 }).toBe(true);
    } finally {
      local.destroy();
    }
  }, 30_000);
});
