// Traces across the peer hop: an exec sent to a non-owner sidecar is one trace spanning both
// sidecars (classify, owner lookup and forward on the ingress; the peer span and its gateway call on
// the owner), the client's traceparent honoured; with tracing off no span, context or header is made.
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { context, trace } from '@opentelemetry/api';
import { InMemorySpanExporter, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { loadConfig } from '../../src/config/load.ts';
import { startSidecar, VERSION, type Sidecar } from '../../src/sidecar.ts';
import { ATTR_SANDBOX, startTracing, type TracingHandle } from '../../src/tracing/tracing.ts';
import { createJwtKeyDir } from '../../emulator/gateway/gen2/jwt.ts';
import { Gen2Store } from '../../emulator/gateway/gen2/store.ts';
import { startGateway, type Gateway } from '../../emulator/gateway/server.ts';
import type { ExecSandboxEvent } from '../../emulator/proto.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { gatewayClient, type OpenShellClient } from '../helpers/grpc-client.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/services.ts';
import { waitUntil } from '../helpers/wait.ts';

let db: TestDatabase;
let store: Gen2Store;
let jwtKeyDir: string;
const gateways: Gateway[] = [];
const sidecars: Sidecar[] = [];
let fleet: SupervisorFleet;
let sandboxId: string;
let client: OpenShellClient;

function execWith(md: grpc.Metadata): Promise<string> {
  return new Promise((resolve, reject) => {
    const call = (client.ExecSandbox as (r: unknown, md: grpc.Metadata) => grpc.ClientReadableStream<ExecSandboxEvent>).call(client, { sandbox_id: sandboxId, command: ['echo', 'traced'] }, md);
    let out = '';
    call.on('data', (ev: ExecSandboxEvent) => {
      if (ev.stdout) out += ev.stdout.data.toString();
    });
    call.on('error', reject);
    call.on('end', () => resolve(out));
  });
}

beforeAll(async () => {
  db = await createTestDatabase('tracing');
  store = new Gen2Store(db.url);
  await store.migrate();
  jwtKeyDir = createJwtKeyDir();
  for (const id of ['ta', 'tb']) {
    gateways.push(await startGateway({ databaseUrl: db.url, replica: `gateway-${id}`, replicaId: id, protocol: '2026-08', jwtKeyDir }));
  }
  const secret = randomBytes(16).toString('hex');
  for (const [i, id] of ['ta', 'tb'].entries()) {
    const config = loadConfig({
      argv: ['--replica-id', id, '--listen', '127.0.0.1:0', '--peer-listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--gateway', `http://127.0.0.1:${gateways[i]!.port}`, '--database-url', db.url, '--peer-secret', secret, '--readiness-mode', 'off'],
      env: {},
    });
    sidecars.push(await startSidecar(config, pino({ level: 'silent' })));
  }
  sandboxId = (await store.createSandbox({ name: 'traced' })).id;
  // The supervisor connects to sidecar A: A owns the sandbox, B forwards to it.
  fleet = await startSupervisorFleet({ endpoint: `127.0.0.1:${sidecars[0]!.ports.public}`, sandboxIds: [sandboxId], protocol: '2026-08', jwtKeyDir });
  await fleet.waitAllConnected(20_000);
  await waitUntil('owned by ta', async () => (await store.pool.query<{ replica_id: string }>('SELECT replica_id FROM ohs_owners WHERE sandbox_id = $1', [sandboxId])).rows[0]?.replica_id, (r) => r === 'ta', { timeoutMs: 10_000 });
  client = gatewayClient(`127.0.0.1:${sidecars[1]!.ports.public}`);
}, 60_000);

afterAll(async () => {
  client?.close();
  await fleet?.stop();
  for (const s of sidecars) await s.close();
  for (const g of gateways) await g.close();
  await store?.close();
  await db?.drop();
  if (jwtKeyDir) rmSync(jwtKeyDir, { recursive: true, force: true });
});

describe('traces', () => {
  it('with tracing off, a forwarded exec touches no tracer, no context and no span', async () => {
    const probe = trace.getTracer('probe');
    const startSpan = vi.spyOn(Object.getPrototypeOf(probe) as { startSpan: () => unknown }, 'startSpan');
    const getTracer = vi.spyOn(trace, 'getTracer');
    const active = vi.spyOn(context, 'active');
    const withCtx = vi.spyOn(context, 'with');
    try {
      expect(await execWith(new grpc.Metadata())).toBe('traced\n');
      expect(startSpan).not.toHaveBeenCalled();
      expect(getTracer).not.toHaveBeenCalled();
      expect(active).not.toHaveBeenCalled();
      expect(withCtx).not.toHaveBeenCalled();
    } finally {
      vi.restoreAllMocks();
    }
  });

  it("an exec through a non-owner is one trace over both sidecars, under the client's traceparent", async () => {
    const exporter = new InMemorySpanExporter();
    const tracing: TracingHandle = await startTracing({ serviceInstanceId: 'test', version: VERSION, exporter, simple: true });
    try {
      const traceId = randomBytes(16).toString('hex');
      const clientSpanId = randomBytes(8).toString('hex');
      const md = new grpc.Metadata();
      md.set('traceparent', `00-${traceId}-${clientSpanId}-01`);
      expect(await execWith(md)).toBe('traced\n');
      const byName = (name: string, replica: string): ReadableSpan => {
        const s = exporter.getFinishedSpans().find((x) => x.name === name && x.attributes['ohs.replica'] === replica);
        if (!s) throw new Error(`no ${name} span on ${replica}: ${exporter.getFinishedSpans().map((x) => `${x.name}@${String(x.attributes['ohs.replica'])}`).join(', ')}`);
        return s;
      };
      await waitUntil('both sidecars ended their spans', async () => exporter.getFinishedSpans().filter((s) => s.name === 'ohs.request' || s.name === 'ohs.peer').length, (n) => n >= 2, { timeoutMs: 5_000 });
      const request = byName('ohs.request', 'tb');
      const classify = byName('ohs.classify', 'tb');
      const lookup = byName('ohs.owner_lookup', 'tb');
      const forward = byName('ohs.forward', 'tb');
      const peer = byName('ohs.peer', 'ta');
      const spans = [request, classify, lookup, forward, peer];
      for (const s of spans) expect(s.spanContext().traceId).toBe(traceId);
      // The client's span is the parent of the ingress request; the peer span hangs off the forward
      // span, through the traceparent header on the peer hop (two sidecars, one trace).
      expect(request.parentSpanContext?.spanId).toBe(clientSpanId);
      for (const s of [classify, lookup, forward]) expect(s.parentSpanContext?.spanId).toBe(request.spanContext().spanId);
      expect(peer.parentSpanContext?.spanId).toBe(forward.spanContext().spanId);
      expect(peer.parentSpanContext?.isRemote).toBe(true);
      for (const s of [classify, lookup, forward, peer, request]) expect(s.attributes[ATTR_SANDBOX]).toBe(sandboxId);
      expect(forward.attributes['ohs.target']).toBe('ta');
      expect(lookup.attributes['ohs.target']).toMatch(/^ta@\d+$/);
      const tree = spans.map((s) => `${s.attributes['ohs.replica']} ${s.name} ${s.spanContext().spanId} ← ${s.parentSpanContext?.spanId ?? '-'}`);
      console.log(`trace ${traceId}:\n  ${tree.join('\n  ')}`);
    } finally {
      await tracing.shutdown();
    }
  });

  it('a handoff between the two sidecars is traced with the sandbox id and how the previous owner was fenced', async () => {
    const exporter = new InMemorySpanExporter();
    const tracing = await startTracing({ serviceInstanceId: 'test', version: VERSION, exporter, simple: true });
    try {
      // The supervisor reconnects through B: B claims, fences A, then lets the Hello through.
      const member = fleet.supervisors.get(sandboxId)!;
      await member.supervisor.stop();
      const moved = await startSupervisorFleet({ endpoint: `127.0.0.1:${sidecars[1]!.ports.public}`, sandboxIds: [sandboxId], protocol: '2026-08', jwtKeyDir });
      try {
        await moved.waitAllConnected(20_000);
        await waitUntil('handoff span', async () => exporter.getFinishedSpans().find((s) => s.name === 'ohs.handoff'), (s) => s !== undefined, { timeoutMs: 10_000 });
        const handoff = exporter.getFinishedSpans().find((s) => s.name === 'ohs.handoff')!;
        expect(handoff.attributes[ATTR_SANDBOX]).toBe(sandboxId);
        expect(handoff.attributes['ohs.replica']).toBe('tb');
        expect(String(handoff.attributes['ohs.fence'])).toMatch(/^(none|acknowledged|peer-refused|lease-expired)$/);
      } finally {
        await moved.stop();
      }
    } finally {
      await tracing.shutdown();
    }
  }, 30_000);
});
