// One 2026-08 gateway emulator replica, used directly: ForwardTcp SSH and TCP forwards in
// upstream's order of checks, exec, supervisor authentication, JWKS, service subdomains
// (reference §2.1 HEAD, §2.3 HEAD, §2.4, §2.7, §8).
import { randomUUID } from 'node:crypto';
import { status as Status, type ClientDuplexStream, type ClientReadableStream, type ClientWritableStream } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { forwardClient, openForwardTcp, sshViaForwardTcp } from '../../emulator/forward-tcp-client.ts';
import { mintSandboxToken } from '../../emulator/gateway/gen2/jwt.ts';
import type { Gen2Store } from '../../emulator/gateway/gen2/store.ts';
import { startGateway, type Gateway } from '../../emulator/gateway/server.ts';
import { Phase, type ExecSandboxEvent } from '../../emulator/proto.ts';
import { startSupervisorFleet, type SupervisorFleet } from '../../emulator/supervisor/fleet.ts';
import { bearer, bidiStatus, failure, httpGet, unaryMd, wsEcho } from '../helpers/gen2.ts';
import { gatewayClient, unary, type OpenShellClient } from '../helpers/grpc-client.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/services.ts';
import { waitUntil } from '../helpers/wait.ts';

let db: TestDatabase;
let gw: Gateway;
let store: Gen2Store;
let fleet: SupervisorFleet;
let client: OpenShellClient;
let endpoint: string;
let a: { id: string; name: string };
let b: { id: string; name: string };
let notReady: { id: string; name: string };

async function token(sandboxId: string): Promise<string> {
  return (await unary<{ token: string }>(client, 'CreateSshSession', { sandbox_id: sandboxId })).token;
}

function forwardStatus(init: Record<string, unknown>, md?: ReturnType<typeof bearer>): Promise<{ code: number; details: string }> {
  return bidiStatus(client, 'ForwardTcp', [{ init }], { ...(md ? { md } : {}), timeoutMs: 40_000 }).then((r) => ({ code: r.status.code, details: r.status.details }));
}

beforeAll(async () => {
  db = await createTestDatabase('gen2_gateway');
  gw = await startGateway({ databaseUrl: db.url, replica: 'gw-gen2', protocol: '2026-08' });
  store = gw.gen2!.store;
  endpoint = `127.0.0.1:${gw.port}`;
  a = await store.createSandbox({ name: 'alpha' });
  b = await store.createSandbox({ name: 'beta' });
  notReady = await store.createSandbox({ name: 'gamma' });
  fleet = await startSupervisorFleet({
    endpoint,
    sandboxIds: [a.id, b.id],
    protocol: '2026-08',
    jwtKeyDir: gw.gen2!.jwtKeyDir,
    echoService: true,
    backoff: { initialMs: 100, maxMs: 400 },
  });
  await fleet.waitAllConnected(15_000);
  client = gatewayClient(endpoint);
  for (const id of [a.id, b.id]) {
    await waitUntil('Ready', async () => (await store.sandboxById(id))?.phase, (p) => p === Phase.READY, { timeoutMs: 5000 });
  }
});

afterAll(async () => {
  client?.close();
  await fleet?.stop();
  await gw?.close();
  await db?.drop();
});

describe('2026-08 gateway emulator, one replica', () => {
  it('a supervisor with its sandbox JWT makes the sandbox Ready in status.phase', async () => {
    // SessionAccepted is queued first but the response stream only goes out after the Ready write
    // (supervisor_session.rs@v0.0.111:735-778): a connected supervisor finds its sandbox Ready.
    expect(fleet.supervisors.get(a.id)!.supervisor.connected).toBe(true);
    expect((await store.sandboxById(a.id))?.phase).toBe(Phase.READY);
    const s = await store.sandboxById(a.id);
    expect(s?.message.status?.main_process_instance_id).toBe(fleet.supervisors.get(a.id)!.supervisor.instanceId);
    expect((await store.sandboxById(notReady.id))?.phase).toBe(Phase.PROVISIONING);
  });

  it('ssh over ForwardTcp reaches the sandbox it asked for', async () => {
    for (const s of [a, b]) {
      const res = await sshViaForwardTcp({ endpoint, sandboxId: s.id, token: await token(s.id), command: 'sandbox-id' });
      expect(res.grpcCode).toBeNull();
      expect(res.stdout.trim()).toBe(s.id);
      expect(res.code).toBe(0);
    }
  });

  it('ForwardTcp answers in upstream order: init, target, sandbox, Ready, token, then relay', async () => {
    const tokA = await token(a.id);
    const ssh = { ssh: {} };
    expect((await bidiStatus(client, 'ForwardTcp', [{ data: Buffer.from('x') }])).status.code).toBe(Status.INVALID_ARGUMENT);
    expect(await forwardStatus({ sandbox_id: '', ...ssh, authorization_token: tokA })).toMatchObject({ code: Status.INVALID_ARGUMENT });
    expect(await forwardStatus({ sandbox_id: a.id, authorization_token: tokA })).toMatchObject({
      code: Status.INVALID_ARGUMENT,
      details: 'tcp forward target is required',
    });
    // Target validation comes before the sandbox lookup: an unknown sandbox with a bad host is INVALID_ARGUMENT.
    expect(await forwardStatus({ sandbox_id: randomUUID(), tcp: { host: '10.0.0.1', port: 80 }, authorization_token: tokA })).toMatchObject({
      code: Status.INVALID_ARGUMENT,
      details: 'tcp target host must be loopback',
    });
    expect(await forwardStatus({ sandbox_id: a.id, tcp: { host: '127.0.0.1', port: 70000 }, authorization_token: tokA })).toMatchObject({
      code: Status.INVALID_ARGUMENT,
      details: 'tcp target port must be between 1 and 65535',
    });
    expect(await forwardStatus({ sandbox_id: randomUUID(), ...ssh, authorization_token: tokA })).toMatchObject({ code: Status.NOT_FOUND });
    expect(await forwardStatus({ sandbox_id: notReady.id, ...ssh, authorization_token: tokA })).toMatchObject({
      code: Status.FAILED_PRECONDITION,
      details: 'sandbox is not ready',
    });
    expect(await forwardStatus({ sandbox_id: a.id, ...ssh })).toMatchObject({
      code: Status.UNAUTHENTICATED,
      details: 'authorization_token is required for ForwardTcp',
    });
    expect(await forwardStatus({ sandbox_id: a.id, ...ssh, authorization_token: 'nope' })).toMatchObject({
      code: Status.UNAUTHENTICATED,
      details: 'SSH session token not found',
    });
    expect(await forwardStatus({ sandbox_id: b.id, ...ssh, authorization_token: tokA })).toMatchObject({
      code: Status.UNAUTHENTICATED,
      details: 'SSH session token is not valid',
    });
    const expired = await store.createSshSession(a.id, 3600);
    await store.updateSshSession(expired.token, { expiresAtMs: Date.now() - 1000 });
    expect(await forwardStatus({ sandbox_id: a.id, ...ssh, authorization_token: expired.token })).toMatchObject({
      code: Status.UNAUTHENTICATED,
      details: 'SSH session token expired',
    });
  });

  it('a sandbox whose supervisor never connects gets UNAVAILABLE after the 15 s session wait', async () => {
    await store.writePhase(notReady.id, Phase.READY, 'test', 'pretend ready');
    const tok = await store.createSshSession(notReady.id, 3600);
    const started = Date.now();
    const res = await forwardStatus({ sandbox_id: notReady.id, ssh: {}, authorization_token: tok.token });
    expect(res.code).toBe(Status.UNAVAILABLE);
    expect(res.details).toBe(`supervisor relay failed: code: 'The service is currently unavailable', message: "supervisor session not connected"`);
    // Upstream polls 100 ms doubling to 2 s and gives up when the next sleep would cross 15 s:
    // about 13.1 s (docs/interop.md, difference 1), never the full 15 s.
    const elapsed = Date.now() - started;
    expect(elapsed).toBeGreaterThan(12_000);
    expect(elapsed).toBeLessThan(15_000);
    await store.writePhase(notReady.id, Phase.PROVISIONING, 'test', 'back');
  }, 40_000);

  it('limits ForwardTcp to 3 per token and 20 per sandbox in this process', async () => {
    const fc = forwardClient(endpoint);
    const open: Array<ReturnType<typeof openForwardTcp>> = [];
    try {
      const tok = await token(b.id);
      for (let i = 0; i < 3; i++) open.push(openForwardTcp(fc, { sandboxId: b.id, token: tok }));
      await new Promise((r) => setTimeout(r, 500));
      const fourth = await forwardStatus({ sandbox_id: b.id, ssh: {}, authorization_token: tok });
      expect(fourth).toEqual({ code: Status.RESOURCE_EXHAUSTED, details: 'SSH session connection limit reached' });
      for (let i = 0; i < 17; i++) open.push(openForwardTcp(fc, { sandboxId: b.id, token: await token(b.id) }));
      await new Promise((r) => setTimeout(r, 500));
      const over = await forwardStatus({ sandbox_id: b.id, ssh: {}, authorization_token: await token(b.id) });
      expect(over).toEqual({ code: Status.RESOURCE_EXHAUSTED, details: 'sandbox SSH connection limit reached' });
    } finally {
      for (const o of open) {
        o.socket.on('error', () => undefined);
        o.socket.destroy();
      }
      fc.close();
    }
    // Slots are released when the streams go.
    await expect.poll(() => gw.slots.held().sandboxes[b.id] ?? 0, { timeout: 5000 }).toBe(0);
  });

  it('ForwardTcp to a tcp target reaches the sandbox service port', async () => {
    const fc = forwardClient(endpoint);
    try {
      const fwd = openForwardTcp(fc, { sandboxId: a.id, token: await token(a.id), target: { tcp: { host: 'localhost', port: 8080 } }, serviceId: 'test' });
      fwd.socket.write('GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
      const chunks: Buffer[] = [];
      for await (const c of fwd.socket) chunks.push(c as Buffer);
      const text = Buffer.concat(chunks).toString('utf8');
      expect(text.startsWith('HTTP/1.1 200')).toBe(true);
      expect(text).toContain(`"sandboxId":"${a.id}"`);
      expect((await fwd.status).code).toBe(Status.OK);
    } finally {
      fc.close();
    }
  });

  it('a tcp target the supervisor cannot dial fails at once with UNAVAILABLE (RelayOpenResult)', async () => {
    const started = Date.now();
    const res = await forwardStatus({ sandbox_id: a.id, tcp: { host: '127.0.0.1', port: 1 }, authorization_token: await token(a.id) });
    expect(res.code).toBe(Status.UNAVAILABLE);
    // The supervisor's io::Error text, as upstream's reports it (docs/interop.md).
    expect(res.details).toBe('Connection refused (os error 111)');
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it('exec honours env and workdir, rejects an empty command before the lookup, and reports exit codes', async () => {
    const run = (req: Record<string, unknown>): Promise<{ out: string; exit: number | null; code: number }> =>
      new Promise((resolve) => {
        const call = (client.ExecSandbox as (r: unknown) => ClientReadableStream<ExecSandboxEvent>).call(client, req);
        let out = '';
        let exit: number | null = null;
        call.on('data', (ev: ExecSandboxEvent) => {
          if (ev.stdout) out += ev.stdout.data.toString();
          if (ev.exit) exit = ev.exit.exit_code;
        });
        call.on('error', () => undefined);
        call.on('status', (st) => resolve({ out, exit, code: st.code }));
      });
    expect(await run({ sandbox_id: randomUUID(), command: [] })).toMatchObject({ code: Status.INVALID_ARGUMENT });
    expect(await run({ sandbox_id: randomUUID(), command: ['echo'] })).toMatchObject({ code: Status.NOT_FOUND });
    expect(await run({ sandbox_id: notReady.id, command: ['echo'] })).toMatchObject({ code: Status.FAILED_PRECONDITION });
    expect(await run({ sandbox_id: a.id, command: ['echo', 'hello world'] })).toEqual({ out: 'hello world\n', exit: 0, code: Status.OK });
    expect(await run({ sandbox_id: a.id, command: ['printenv', 'GREETING'], environment: { GREETING: "it's here" } })).toEqual({
      out: "it's here\n",
      exit: 0,
      code: Status.OK,
    });
    expect(await run({ sandbox_id: a.id, command: ['pwd'], workdir: '/tmp/work dir' })).toEqual({ out: '/tmp/work dir\n', exit: 0, code: Status.OK });
    expect(await run({ sandbox_id: a.id, command: ['exit', '3'] })).toMatchObject({ exit: 3, code: Status.OK });
  });

  it('interactive exec streams stdin to the command and reports its exit code while the input stays open', async () => {
    const call = (client.ExecSandboxInteractive as () => ClientDuplexStream<unknown, ExecSandboxEvent>).call(client);
    let out = '';
    let exit: number | null = null;
    const done = new Promise<number>((resolve) => {
      call.on('data', (ev: ExecSandboxEvent) => {
        if (ev.stdout) out += ev.stdout.data.toString();
        if (ev.exit) {
          exit = ev.exit.exit_code;
          call.end();
        }
      });
      call.on('error', () => undefined);
      call.on('status', (st) => resolve(st.code));
    });
    call.write({ start: { sandbox_id: a.id, command: ['head', '-n', '2'] } });
    call.write({ resize: { cols: 100, rows: 40 } });
    call.write({ stdin: Buffer.from('first line\n') });
    call.write({ stdin: Buffer.from('second line\n') });
    expect(await done).toBe(Status.OK);
    expect(out).toBe('first line\nsecond line\n');
    expect(exit).toBe(0);
  });

  it('interactive exec: ending the input before the command exits closes the channel, and the call fails (upstream v0.0.111)', async () => {
    const res = await bidiStatus<ExecSandboxEvent>(client, 'ExecSandboxInteractive', [{ start: { sandbox_id: a.id, command: ['sleep', '2'] } }], { endAfterWrite: true });
    expect(res.status).toMatchObject({ code: Status.UNAVAILABLE, details: 'exec relay closed before the command reported an exit status' });
    expect(res.messages.some((m) => m.exit)).toBe(false);
  });

  it('ConnectSupervisor needs the sandbox JWT: none, another sandbox, garbage, expired', async () => {
    const hello = { hello: { sandbox_id: a.id, instance_id: 'x' } };
    const keyDir = gw.gen2!.jwtKeyDir;
    const noToken = await bidiStatus(client, 'ConnectSupervisor', [hello]);
    expect(noToken.status).toMatchObject({ code: Status.PERMISSION_DENIED, details: 'this method requires a sandbox principal' });
    const other = await bidiStatus(client, 'ConnectSupervisor', [hello], { md: bearer(await mintSandboxToken(keyDir, b.id)) });
    expect(other.status).toMatchObject({ code: Status.PERMISSION_DENIED, details: 'cross-sandbox access denied: principal does not own this sandbox' });
    const garbage = await bidiStatus(client, 'ConnectSupervisor', [hello], { md: bearer('not-a-jwt') });
    expect(garbage.status).toMatchObject({ code: Status.UNAUTHENTICATED, details: 'invalid token' });
    const expiredTok = await (await import('../../emulator/gateway/gen2/jwt.ts')).SandboxJwt.load(keyDir).then((j) =>
      j.mint(a.id, { ttlSecs: 10, nowSecs: Math.floor(Date.now() / 1000) - 3600 }),
    );
    const expired = await bidiStatus(client, 'ConnectSupervisor', [hello], { md: bearer(expiredTok) });
    expect(expired.status).toMatchObject({ code: Status.UNAUTHENTICATED, details: 'invalid token: ExpiredSignature' });
    // Users (no bearer) may not push logs or relay either.
    const push = await failure(unaryMdPush(a.id));
    expect(push?.code).toBe(Status.PERMISSION_DENIED);
    const relay = await bidiStatus(client, 'RelayStream', [{ init: { channel_id: randomUUID() } }]);
    expect(relay.status.code).toBe(Status.PERMISSION_DENIED);
    // A sandbox token may not call user methods.
    const list = await failure(unaryMd(client, 'ListSandboxes', {}, bearer(await mintSandboxToken(keyDir, a.id))));
    expect(list).toEqual({ code: Status.PERMISSION_DENIED, details: 'sandbox principals may not call this method' });
  });

  it('serves the JWT public key as JWKS on the main port', async () => {
    const res = await httpGet(gw.port, `127.0.0.1:${gw.port}`, '/.well-known/jwks.json');
    expect(res.status).toBe(200);
    const doc = JSON.parse(res.body) as { keys: Array<Record<string, string>> };
    expect(doc.keys).toHaveLength(1);
    expect(doc.keys[0]).toMatchObject({ kty: 'OKP', crv: 'Ed25519', alg: 'EdDSA', use: 'sig', kid: gw.gen2!.jwt.kid });
  });

  it('service subdomains: HTTP GET and WebSocket echo by Host, 404 and 412 otherwise', async () => {
    const exposed = await unary<{ url: string }>(client, 'ExposeService', { sandbox: 'alpha', service: 'web', target_port: 8080, domain: true });
    expect(exposed.url).toBe(`http://default--alpha--web.openshell.localhost:${gw.port}/`);
    const host = `default--alpha--web.openshell.localhost:${gw.port}`;
    const res = await httpGet(gw.port, host, '/path?q=1', { authorization: 'Bearer secret' });
    expect(res.status).toBe(200);
    const body = JSON.parse(res.body) as { sandboxId: string; path: string; host: string; authorization: string | null };
    expect(body).toMatchObject({ sandboxId: a.id, path: '/path?q=1', host: '127.0.0.1:8080', authorization: null });
    const ws = await wsEcho(gw.port, host, ['one', 'two']);
    expect(ws).toEqual({ status: 101, replies: ['one', 'two'] });

    expect((await httpGet(gw.port, `default--alpha--nothing.openshell.localhost:${gw.port}`)).status).toBe(404);
    await unary(client, 'ExposeService', { sandbox: 'alpha', service: 'hidden', target_port: 8080, domain: false });
    const hidden = await httpGet(gw.port, `default--alpha--hidden.openshell.localhost:${gw.port}`);
    expect(hidden).toMatchObject({ status: 404, body: 'Service endpoint is not available' });
    await unary(client, 'ExposeService', { sandbox: 'gamma', service: 'web', target_port: 8080, domain: true });
    const nr = await httpGet(gw.port, `default--gamma--web.openshell.localhost:${gw.port}`);
    expect(nr).toMatchObject({ status: 412, body: 'Sandbox is not ready' });
    // A port nothing listens on inside the sandbox: the supervisor's failed RelayOpenResult is a 502.
    await unary(client, 'ExposeService', { sandbox: 'alpha', service: 'dead', target_port: 1, domain: true });
    const dead = await httpGet(gw.port, `default--alpha--dead.openshell.localhost:${gw.port}`);
    expect(dead).toMatchObject({ status: 502, body: 'Service endpoint is not reachable' });
    // Not a service host: the ordinary routes answer.
    expect((await httpGet(gw.port, 'example.com', '/')).status).toBe(404);
  });
});

function unaryMdPush(sandboxId: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const call = (client.PushSandboxLogs as (cb: (e: Error | null) => void) => ClientWritableStream<unknown>).call(client, (err) =>
      err ? reject(err) : resolve(),
    );
    call.write({ sandbox_id: sandboxId, logs: [{ message: 'x' }] });
    call.end();
  });
}
