// Starts harness and sidecar entry points as real OS processes (so kill -9 and SIGTERM are
// real) and waits for their one-line JSON "ready" announcement on stdout.
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync, type WriteStream } from 'node:fs';
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
