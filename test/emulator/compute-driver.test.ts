// The compute driver against a stand-in supervisor (a shell script): what the gateway sees on the
// socket (reference §9; field numbers of upstream's compute_driver.proto) and what a sandbox leaves
// behind (nothing). The real supervisor is exercised by test/interop/.
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startComputeDriver, type ComputeDriver } from '../../emulator/compute-driver/driver.ts';
import { computeDriverClient, type DriverSandbox, type WatchSandboxesEvent } from '../../emulator/compute-driver/proto.ts';
import { waitUntil } from '../helpers/wait.ts';

// Records its argv and environment, starts a workload in a process group of its own (as the real
// supervisor does) and waits; a sandbox named exit-* ends at once with status 3.
const FAKE_SUPERVISOR = `#!/bin/sh
d=$(dirname "$OPENSHELL_SANDBOX_TOKEN_FILE")
{ echo "args=$*"; echo "cwd=$(pwd)"; env | grep -E '^(OPENSHELL_|HOME=|TMPDIR=|GREETING=)' | sort; } > "$d/fake.txt"
case "$OPENSHELL_SANDBOX" in exit-*) exit 3;; esac
set -m
sleep 1000 &
echo $! > "$d/workload.pid"
wait
`;

type Client = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

let dir: string;
let driver: ComputeDriver;
let client: Client;
const events: WatchSandboxesEvent[] = [];
let watch: grpc.ClientReadableStream<WatchSandboxesEvent>;

function call<T>(method: string, req: unknown): Promise<T> {
  return new Promise((resolve, reject) => {
    const fn = client[method] as (r: unknown, cb: (e: grpc.ServiceError | null, v: T) => void) => void;
    fn.call(client, req, (err, v) => (err ? reject(err) : resolve(v)));
  });
}

async function code(p: Promise<unknown>): Promise<number | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    return (err as grpc.ServiceError).code;
  }
}

function sandbox(id: string, name: string, overrides: Partial<DriverSandbox['spec'] & object> = {}): { sandbox: unknown } {
  return {
    sandbox: {
      id,
      name,
      workspace: 'default',
      spec: {
        log_level: 'debug',
        environment: { GREETING: 'hi' },
        sandbox_token: `jwt-for-${id}`,
        command: ['/bin/sh', '-c', 'sleep 1000'],
        tty: false,
        ...overrides,
      },
    },
  };
}

/** Running, not a zombie: an orphan's zombie lingers where PID 1 does not reap (some containers/VMs). */
const alive = (pid: number): boolean => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
};

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ohs-compute-driver-'));
  const fake = join(dir, 'fake-supervisor.sh');
  writeFileSync(fake, FAKE_SUPERVISOR);
  chmodSync(fake, 0o755);
  driver = await startComputeDriver({
    socketPath: join(dir, 'driver.sock'),
    supervisorBin: fake,
    endpoint: 'http://127.0.0.1:9',
    stateDir: join(dir, 'sandboxes'),
    stopTimeoutMs: 2_000,
    holdStart: (sb) => sb.name.startsWith('held-'),
  });
  const Ctor = computeDriverClient();
  client = new Ctor(`unix:${driver.socketPath}`, grpc.credentials.createInsecure()) as unknown as Client;
  watch = (client.WatchSandboxes as (r: unknown) => grpc.ClientReadableStream<WatchSandboxesEvent>).call(client, {});
  watch.on('data', (e: WatchSandboxesEvent) => events.push(e));
  watch.on('error', () => undefined);
  await waitUntil('watch registered', async () => driver.watcherCount(), (n) => n === 1, { timeoutMs: 5_000 });
});

afterAll(async () => {
  watch?.cancel();
  client?.close();
  await driver?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

it('answers GetCapabilities and listener requirements the way the gateway needs at startup', async () => {
  const caps = await call<{ driver_name: string; gateway_manages_lifecycle: boolean }>('GetCapabilities', {});
  expect(caps.driver_name).toBe('ohs-process');
  // Like the Kubernetes driver: one replica's graceful shutdown must not stop every sandbox.
  expect(caps.gateway_manages_lifecycle).toBe(false);
  expect(await call('GetGatewayListenerRequirements', {})).toEqual({ requirements: [] });
});

it('ValidateSandboxCreate accepts a plain sandbox and refuses GPUs; CreateSandbox refuses a spec without a sandbox token', async () => {
  expect(await call('ValidateSandboxCreate', sandbox('v-1', 'v'))).toEqual({});
  expect(await code(call('ValidateSandboxCreate', sandbox('v-2', 'v', { resource_requirements: { gpu: { count: 1 } } })))).toBe(grpc.status.FAILED_PRECONDITION);
  expect(await code(call('CreateSandbox', sandbox('v-3', 'v', { sandbox_token: '' })))).toBe(grpc.status.FAILED_PRECONDITION);
  expect(driver.sandboxes()).toEqual([]);
});

it('CreateSandbox starts the supervisor with its token, endpoint and a scratch directory of its own, and the watch reports it Ready', async () => {
  await call('CreateSandbox', sandbox('sb-1', 'one'));
  const view = driver.sandbox('sb-1');
  expect(view?.state).toBe('running');
  const fake = join(view!.paths.dir, 'fake.txt');
  await waitUntil('fake supervisor wrote its environment', async () => existsSync(join(view!.paths.dir, 'workload.pid')), Boolean, { timeoutMs: 5_000 });
  const seen = readFileSync(fake, 'utf8');
  expect(seen).toContain(`args=--mode process --workdir ${view!.paths.workdir}`);
  expect(seen).toContain(`cwd=${view!.paths.workdir}`);
  expect(seen).toContain('OPENSHELL_SANDBOX_ID=sb-1\n');
  expect(seen).toContain('OPENSHELL_SANDBOX=one\n');
  expect(seen).toContain('OPENSHELL_ENDPOINT=http://127.0.0.1:9\n');
  expect(seen).toContain(`OPENSHELL_SSH_SOCKET_PATH=${join(view!.paths.dir, 'run', 'ssh.sock')}\n`);
  expect(seen).toContain(`OPENSHELL_SANDBOX_TOKEN_FILE=${view!.paths.tokenFile}\n`);
  expect(seen).toContain('OPENSHELL_MAIN_PROCESS_SPEC={"version":1,"command":["/bin/sh","-c","sleep 1000"],"tty":false}\n');
  expect(seen).toContain('OPENSHELL_LOG_LEVEL=debug\n');
  expect(seen).toContain('GREETING=hi\n');
  expect(seen).toContain(`HOME=${view!.paths.home}\n`);
  expect(seen).not.toContain('OPENSHELL_SANDBOX_TOKEN=');
  expect(readFileSync(view!.paths.tokenFile, 'utf8')).toBe('jwt-for-sb-1');
  expect(statSync(view!.paths.tokenFile).mode & 0o777).toBe(0o600);

  const ready = events.find((e) => 'sandbox' in e && e.sandbox.sandbox.id === 'sb-1');
  expect(ready && 'sandbox' in ready ? ready.sandbox.sandbox.status?.conditions[0] : undefined).toMatchObject({ type: 'Ready', status: 'True' });
  expect(events.some((e) => 'platform_event' in e && e.platform_event.sandbox_id === 'sb-1' && e.platform_event.event.reason === 'Started')).toBe(true);
  expect(await code(call('CreateSandbox', sandbox('sb-1', 'one')))).toBe(grpc.status.ALREADY_EXISTS);
});

it('ListSandboxes and GetSandbox return what the driver created, with status and without the token', async () => {
  const list = await call<{ sandboxes: DriverSandbox[] }>('ListSandboxes', {});
  expect(list.sandboxes.map((s) => s.id)).toEqual(['sb-1']);
  const [s] = list.sandboxes;
  expect(s?.spec?.sandbox_token).toBe('');
  expect(s?.status?.conditions.map((c) => `${c.type}=${c.status}`)).toEqual(['Ready=True']);
  const byName = await call<{ sandbox: DriverSandbox }>('GetSandbox', { sandbox_id: '', sandbox_name: 'one' });
  expect(byName.sandbox.id).toBe('sb-1');
  expect(await code(call('GetSandbox', { sandbox_id: 'nope', sandbox_name: '' }))).toBe(grpc.status.NOT_FOUND);
});

it('StopSandbox stops the supervisor and its workload (Suspended); StartSandbox starts a new instance', async () => {
  const before = driver.sandbox('sb-1')!;
  const workload = Number(readFileSync(join(before.paths.dir, 'workload.pid'), 'utf8'));
  expect(alive(workload)).toBe(true);
  await call('StopSandbox', { sandbox_id: 'sb-1', sandbox_name: 'one' });
  expect(driver.sandbox('sb-1')?.state).toBe('stopped');
  // The kill is delivered at once; a busy machine may take a moment to finish the process.
  await expect.poll(() => alive(workload), { timeout: 5000 }).toBe(false);
  const stopped = await call<{ sandbox: DriverSandbox }>('GetSandbox', { sandbox_id: 'sb-1', sandbox_name: '' });
  expect(stopped.sandbox.status?.conditions.map((c) => `${c.type}=${c.status}`)).toEqual(['Suspended=True']);
  await call('StartSandbox', { sandbox_id: 'sb-1', sandbox_name: 'one' });
  const after = driver.sandbox('sb-1')!;
  expect(after.state).toBe('running');
  expect(after.instance).toBe(before.instance + 1);
});

it('a supervisor that exits on its own is reported Ready=False ProcessExited (a terminal reason: phase Error)', async () => {
  await call('CreateSandbox', sandbox('sb-2', 'exit-now'));
  await waitUntil('exit seen', async () => driver.sandbox('sb-2')?.state, (s) => s === 'exited', { timeoutMs: 5_000 });
  expect(driver.sandbox('sb-2')?.exitCode).toBe(3);
  const got = await call<{ sandbox: DriverSandbox }>('GetSandbox', { sandbox_id: 'sb-2', sandbox_name: '' });
  expect(got.sandbox.status?.conditions[0]).toMatchObject({ type: 'Ready', status: 'False', reason: 'ProcessExited' });
  await waitUntil('exit event', async () => events.some((e) => 'sandbox' in e && e.sandbox.sandbox.id === 'sb-2' && e.sandbox.sandbox.status?.conditions[0]?.reason === 'ProcessExited'), Boolean, { timeoutMs: 5_000 });
});

it('DeleteSandbox kills the supervisor and its workload, removes the scratch directory and sends a deleted event', async () => {
  const view = driver.sandbox('sb-1')!;
  await waitUntil('workload started', async () => existsSync(join(view.paths.dir, 'workload.pid')), Boolean, { timeoutMs: 5_000 });
  const workload = Number(readFileSync(join(view.paths.dir, 'workload.pid'), 'utf8'));
  expect(await call('DeleteSandbox', { sandbox_id: 'sb-1', sandbox_name: '' })).toEqual({ deleted: true });
  // SIGKILL is delivered asynchronously: on a busy machine the workload can still be running for a moment.
  await expect.poll(() => alive(workload), { timeout: 3_000 }).toBe(false);
  expect(existsSync(view.paths.dir)).toBe(false);
  expect(events.some((e) => 'deleted' in e && e.deleted.sandbox_id === 'sb-1')).toBe(true);
  expect(await call('DeleteSandbox', { sandbox_id: 'sb-1', sandbox_name: '' })).toEqual({ deleted: false });
  expect(driver.sandboxes().map((s) => s.id)).toEqual(['sb-2']);
  expect(driver.calls.CreateSandbox).toBeGreaterThanOrEqual(2);
});

it('a held sandbox stays Ready=False (a transient reason: Provisioning) until release starts its supervisor at the endpoint given', async () => {
  await call('CreateSandbox', sandbox('sb-3', 'held-one'));
  const held = driver.sandbox('sb-3')!;
  expect(held.state).toBe('held');
  expect(held.pid).toBeUndefined();
  const got = await call<{ sandbox: DriverSandbox }>('GetSandbox', { sandbox_id: 'sb-3', sandbox_name: '' });
  expect(got.sandbox.status?.conditions[0]).toMatchObject({ type: 'Ready', status: 'False', reason: 'DependenciesNotReady' });
  await driver.release('sb-3', { endpoint: 'http://127.0.0.1:10' });
  expect(driver.sandbox('sb-3')?.state).toBe('running');
  await waitUntil('released supervisor wrote its environment', async () => existsSync(join(held.paths.dir, 'workload.pid')), Boolean, { timeoutMs: 5_000 });
  expect(readFileSync(join(held.paths.dir, 'fake.txt'), 'utf8')).toContain('OPENSHELL_ENDPOINT=http://127.0.0.1:10\n');
  await expect(driver.release('sb-3')).rejects.toThrow(/not held/);
  expect(await call('DeleteSandbox', { sandbox_id: 'sb-3', sandbox_name: '' })).toEqual({ deleted: true });
});
