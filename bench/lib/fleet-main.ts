// Supervisor fleet in its own process for benches: the sandbox's SSH server and the supervisor's relay
// then do their work (ciphers, gRPC framing) on their own core, as in a real sandbox, instead of
// sharing the bench client's event loop.
// Usage: fleet-main.ts --endpoint host:port --sandbox-id <id> [--sandbox-id <id> ...]
//        [--protocol 2026-08 --jwt-key-dir DIR]   (the 2026-08 generation: supervisors with sandbox JWTs)
// Prints {"event":"ready"} once every supervisor holds a session; SIGTERM stops the fleet.
import { startSupervisorFleet } from '../../emulator/supervisor/fleet.ts';

const CONNECT_TIMEOUT_MS = 30_000;

function parseArgs(argv: string[]): Parameters<typeof startSupervisorFleet>[0] {
  let endpoint = '';
  const sandboxIds: string[] = [];
  let protocol: '2026-04' | '2026-08' = '2026-04';
  let jwtKeyDir: string | undefined;
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`missing value for ${flag}`);
    if (flag === '--endpoint') endpoint = value;
    else if (flag === '--sandbox-id') sandboxIds.push(value);
    else if (flag === '--protocol' && (value === '2026-04' || value === '2026-08')) protocol = value;
    else if (flag === '--jwt-key-dir') jwtKeyDir = value;
    else throw new Error(`unknown flag ${flag}`);
  }
  if (!endpoint || sandboxIds.length === 0) throw new Error('usage: fleet-main.ts --endpoint host:port --sandbox-id <id>...');
  return { endpoint, sandboxIds, protocol, ...(jwtKeyDir ? { jwtKeyDir } : {}) };
}

const parentPid = process.ppid;
const fleet = await startSupervisorFleet(parseArgs(process.argv.slice(2)));
let stopping = false;
const stop = (code: number): void => {
  if (stopping) return;
  stopping = true;
  void fleet.stop().finally(() => process.exit(code));
};
process.on('SIGTERM', () => stop(0));
process.on('SIGINT', () => stop(0));
// The bench may die without signalling us; do not outlive it.
setInterval(() => {
  if (process.ppid !== parentPid) stop(0);
}, 1000).unref();

try {
  await fleet.waitAllConnected(CONNECT_TIMEOUT_MS);
} catch (err) {
  console.error(err instanceof Error ? err.message : String(err));
  stop(1);
}
if (!stopping) console.log(JSON.stringify({ event: 'ready', pid: process.pid }));
