// Starts harness and sidecar entry points as real OS processes (so kill -9 and SIGTERM are
// real) and waits for their one-line JSON "ready" announcement on stdout.
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync, readdirSync, statSync, type WriteStream } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

export interface ReadyInfo {
  event: 'ready';
  pid: number;
  [key: string]: unknown;
}

export interface ManagedProcess {
  readonly name: string;
  readonly child: ChildProcess;
  readonly ready: ReadyInfo;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** stderr/stdout lines kept for diagnosis (bounded). */
  readonly output: string[];
  alive(): boolean;
  /** Sends `signal`, then SIGKILL if the process has not exited after `graceMs` (default 10 s). */
  kill(signal?: NodeJS.Signals, graceMs?: number): Promise<void>;
}

const here = dirname(fileURLToPath(import.meta.url));
/** Repository root: the parent of emulator/ (source) or of dist/ (bundle). */
export const repoRoot = resolve(here, '..');

/** Command prefix that runs a TypeScript entry from this repository with tsx. */
export function tsEntry(relPath: string): string[] {
  return [process.execPath, '--import', 'tsx', join(repoRoot, relPath)];
}

// The bundles `make build` writes (scripts/build.mjs), with the source folders each is made from.
const BUNDLES = {
  sidecar: { bundle: 'dist/main.js', source: 'src/main.ts', from: ['src'] },
  emulator: { bundle: 'dist/emulator.js', source: 'emulator/main.ts', from: ['src', 'emulator'] },
} as const;
const freshness = new Map<keyof typeof BUNDLES, boolean>();

/** Newest modification time (ms) of a file under `dir`, 0 when there is none. */
function newestUnder(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) newest = Math.max(newest, statSync(join(entry.parentPath, entry.name)).mtimeMs);
  }
  return newest;
}

/**
 * Whether `make build`'s bundle was written after every file it is made from was last changed. The
 * suite then starts the bundle, what the image runs, and each process starts in about half the CPU
 * time tsx takes to load the sources (0.7 s against 2 s; hundreds of sidecars and gateways per run).
 * A source changed since the build, a missing bundle, or OHS_TEST_FROM_SOURCE=1: the sources through
 * tsx, so a test never runs older code than the tree's.
 */
function bundleIsFresh(which: keyof typeof BUNDLES): boolean {
  const known = freshness.get(which);
  if (known !== undefined) return known;
  const { bundle, from } = BUNDLES[which];
  let fresh = false;
  if (process.env.OHS_TEST_FROM_SOURCE !== '1') {
    try {
      const built = statSync(join(repoRoot, bundle)).mtimeMs;
      fresh = from.every((dir) => newestUnder(join(repoRoot, dir)) <= built);
    } catch {
      fresh = false;
    }
  }
  freshness.set(which, fresh);
  return fresh;
}

/** Command prefix that starts the sidecar: its bundle when up to date with the sources, else the sources (tsx). */
export function sidecarCommand(): string[] {
  const { bundle, source } = BUNDLES.sidecar;
  return bundleIsFresh('sidecar') ? [process.execPath, join(repoRoot, bundle)] : tsEntry(source);
}

/** Command prefix that starts the emulator CLI (emulator/main.ts: gateway, dev-cluster, ...), bundled or from source. */
export function emulatorCommand(): string[] {
  const { bundle, source } = BUNDLES.emulator;
  return bundleIsFresh('emulator') ? [process.execPath, join(repoRoot, bundle)] : tsEntry(source);
}

/** Command prefix that starts the gateway emulator. */
export function gatewayEmulatorCommand(): string[] {
  return [...emulatorCommand(), 'gateway'];
}

// Children must not outlive a test run that dies or is interrupted.
const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  const killAll = (): void => {
    for (const c of live) c.kill('SIGKILL');
  };
  process.once('exit', killAll);
  // A signal ends a process without 'exit': vitest ends a worker whose test hung with SIGTERM, which
  // left that test's sidecars and gateways running. When nothing else here handles SIGTERM (a CLI's
  // own graceful stop does), the children go first, then the signal does what it would have done.
  const onSigterm = (): void => {
    if (process.listenerCount('SIGTERM') > 1) return;
    killAll();
    process.removeListener('SIGTERM', onSigterm);
    process.kill(process.pid, 'SIGTERM');
  };
  process.on('SIGTERM', onSigterm);
}

/**
 * With OHS_TEST_PROCESS_LOG_DIR set, every process's whole output also goes to `<dir>/<name>-<pid>.log`
 * (for diagnosing a failed run; `output` keeps only the last lines).
 */
function processLogFile(name: string, pid: number | undefined): WriteStream | undefined {
  const dir = process.env.OHS_TEST_PROCESS_LOG_DIR;
  if (!dir) return undefined;
  mkdirSync(dir, { recursive: true });
  const stream = createWriteStream(join(dir, `${name.replace(/[^\w.-]+/g, '_')}-${pid ?? 'nopid'}.log`));
  stream.on('error', () => undefined);
  return stream;
}

export async function startProcess(
  name: string,
  command: string[],
  opts: { env?: Record<string, string>; readyTimeoutMs?: number; echo?: boolean } = {},
): Promise<ManagedProcess> {
  const [exe, ...args] = command;
  if (!exe) throw new Error('empty command');
  installExitHook();
  const child = spawn(exe, args, {
    cwd: repoRoot,
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  child.once('exit', () => live.delete(child));
  const output: string[] = [];
  const file = processLogFile(name, child.pid);
  child.once('exit', () => file?.end());
  const keep = (line: string): void => {
    file?.write(`${line}\n`);
    output.push(line);
    if (output.length > 400) output.shift();
    if (opts.echo) console.log(`[${name}] ${line}`);
  };
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) =>
    child.once('exit', (code, signal) => res({ code, signal })),
  );
  const ready = await new Promise<ReadyInfo>((resolveReady, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${name} not ready within ${opts.readyTimeoutMs ?? 20_000} ms:\n${output.join('\n')}`));
    }, opts.readyTimeoutMs ?? 20_000);
    timer.unref();
    const rl = createInterface({ input: child.stdout! });
    rl.on('line', (line) => {
      keep(line);
      if (!line.startsWith('{')) return;
      try {
        const msg = JSON.parse(line) as { event?: string };
        if (msg.event === 'ready') {
          clearTimeout(timer);
          resolveReady(msg as ReadyInfo);
        }
      } catch {
        // not JSON: ordinary output
      }
    });
    createInterface({ input: child.stderr! }).on('line', keep);
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited before ready (code ${code}, signal ${signal}):\n${output.join('\n')}`));
    });
  });
  return {
    name,
    child,
    ready,
    exited,
    output,
    alive: () => child.exitCode === null && child.signalCode === null,
    async kill(signal: NodeJS.Signals = 'SIGTERM', graceMs = 10_000) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      timer.unref();
      await exited;
      clearTimeout(timer);
    },
  };
}
