// Runs upstream's CLI and system `ssh` with the CLI as ProxyCommand, bounded in time, with the
// CLI's HOME/XDG_* inside the run directory.
import { spawn } from 'node:child_process';

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
  timedOut: boolean;
}

const MAX_OUTPUT = 256 * 1024;

/** Runs a program to completion or until `timeoutMs` (then SIGKILL). Never rejects. */
export function run(bin: string, args: string[], opts: { env: Record<string, string>; timeoutMs: number; cwd?: string; input?: string }): Promise<RunResult> {
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(bin, args, { env: opts.env, cwd: opts.cwd, stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout?.on('data', (d: Buffer) => {
      if (stdout.length < MAX_OUTPUT) stdout += d.toString('utf8');
    });
    child.stderr?.on('data', (d: Buffer) => {
      if (stderr.length < MAX_OUTPUT) stderr += d.toString('utf8');
    });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs);
    child.on('error', (err) => {
      stderr += String(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: Date.now() - started, timedOut });
    });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

export class Cli {
  constructor(
    readonly bin: string,
    readonly env: Record<string, string>,
  ) {}

  /** `openshell --gateway-endpoint <url> <args...>` */
  run(gatewayUrl: string, args: string[], timeoutMs = 60_000): Promise<RunResult> {
    return run(this.bin, ['--gateway-endpoint', gatewayUrl, ...args], { env: this.env, timeoutMs });
  }

  /**
   * System ssh through `openshell ssh-proxy` (token mode: one ForwardTcp per session), the way
   * `openshell sandbox connect` builds it (upstream cli/src/ssh.rs), minus the user's ssh config.
   */
  ssh(gatewayUrl: string, sandboxId: string, token: string, command: string, timeoutMs = 60_000): Promise<RunResult> {
    const proxy = `${this.bin} ssh-proxy --gateway ${gatewayUrl} --sandbox-id ${sandboxId} --token ${token}`;
    return run(
      'ssh',
      [
        '-F', '/dev/null',
        '-o', `ProxyCommand=${proxy}`,
        '-o', 'StrictHostKeyChecking=no',
        '-o', 'UserKnownHostsFile=/dev/null',
        '-o', 'GlobalKnownHostsFile=/dev/null',
        '-o', 'LogLevel=ERROR',
        '-o', 'BatchMode=yes',
        '-o', `ConnectTimeout=${Math.ceil(timeoutMs / 1000)}`,
        '-T',
        'sandbox@openshell',
        command,
      ],
      { env: this.env, timeoutMs },
    );
  }
}

/** Runs `jobs` with at most `limit` in flight; results in input order. */
export async function pool<T>(limit: number, jobs: Array<() => Promise<T>>): Promise<T[]> {
  const out: T[] = new Array<T>(jobs.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    for (;;) {
      const i = next++;
      if (i >= jobs.length) return;
      out[i] = await (jobs[i] as () => Promise<T>)();
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, jobs.length) }, worker));
  return out;
}
