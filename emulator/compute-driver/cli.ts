// The compute driver as a process: `openshell-emulator compute-driver ...` (dist/emulator.js, or
// emulator/main.ts through tsx). Prints one JSON line {"event":"ready",...} on stdout once the socket is served; then
// one JSON line per driver event on stderr. SIGTERM/SIGINT kill every supervisor it started.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { startComputeDriver } from './driver.ts';

const USAGE = `usage: openshell-emulator compute-driver --socket PATH --endpoint http://HOST:PORT
         [--supervisor-bin PATH] [--state-dir DIR] [--log-level LEVEL] [--run-as UID:GID]
         [--process-only] [--keep-deleted]

  --socket          Unix socket the gateways are given with --compute-driver-socket
  --endpoint        OPENSHELL_ENDPOINT for the supervisors: the Service in front of the replicas
  --supervisor-bin  upstream's openshell-sandbox (default: $OPENSHELL_SANDBOX_BIN)
  --state-dir       scratch root; one subdirectory per sandbox (default: a fresh dir under $TMPDIR,
                    removed on exit)
  --log-level       supervisor log level when the create request has none (default info)
  --run-as          start supervisors as this user (root drivers only), e.g. 65534:65534
  --process-only    OPENSHELL_SUPERVISOR_TOPOLOGY=sidecar: the supervisor skips the root-only
                    process setup (no 'sandbox' user needed, children keep the supervisor's user)
  --keep-deleted    keep a deleted sandbox's scratch directory (its supervisor.log)`;

function parseRunAs(value: string | undefined): { uid: number; gid: number } | undefined {
  if (!value) return undefined;
  const m = /^(\d+):(\d+)$/.exec(value);
  if (!m) throw new Error(`--run-as expects UID:GID, got ${value}`);
  return { uid: Number(m[1]), gid: Number(m[2]) };
}

export async function runComputeDriver(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      socket: { type: 'string' },
      endpoint: { type: 'string' },
      'supervisor-bin': { type: 'string' },
      'state-dir': { type: 'string' },
      'log-level': { type: 'string', default: 'info' },
      'run-as': { type: 'string' },
      'process-only': { type: 'boolean', default: false },
      'keep-deleted': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const supervisorBin = values['supervisor-bin'] ?? process.env.OPENSHELL_SANDBOX_BIN;
  if (!values.socket || !values.endpoint || !supervisorBin) {
    console.error(`compute-driver: --socket, --endpoint and --supervisor-bin (or OPENSHELL_SANDBOX_BIN) are required\n${USAGE}`);
    process.exit(2);
  }
  const ownStateDir = values['state-dir'] === undefined;
  const stateDir = values['state-dir'] ? resolve(values['state-dir']) : mkdtempSync(join(tmpdir(), 'ohs-compute-driver-'));
  mkdirSync(stateDir, { recursive: true });
  const runAs = parseRunAs(values['run-as']);
  const driver = await startComputeDriver({
    socketPath: resolve(values.socket),
    supervisorBin,
    endpoint: values.endpoint,
    stateDir,
    supervisorLogLevel: values['log-level'] ?? 'info',
    keepDeleted: values['keep-deleted'] ?? false,
    ...(runAs ? { runAs } : {}),
    ...(values['process-only'] ? { extraEnv: { OPENSHELL_SUPERVISOR_TOPOLOGY: 'sidecar' } } : {}),
    onEvent: (e) => process.stderr.write(`${JSON.stringify({ t: new Date().toISOString(), ...e })}\n`),
  });
  process.stdout.write(`${JSON.stringify({ event: 'ready', role: 'compute-driver', socket: driver.socketPath, stateDir, pid: process.pid })}\n`);
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    void driver.close().finally(() => {
      if (ownStateDir) rmSync(stateDir, { recursive: true, force: true });
      process.exit(0);
    });
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
