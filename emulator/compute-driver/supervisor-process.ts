// Starts upstream's real supervisor (`openshell-sandbox`) as a plain host process for one sandbox,
// the way upstream's container and VM drivers start it inside theirs (same env names), but with
// every path it writes to inside the sandbox's own scratch directory.
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, closeSync, mkdirSync, openSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface SupervisorSandbox {
  id: string;
  name: string;
  /** The gateway-minted sandbox JWT (DriverSandboxSpec.sandbox_token). */
  token: string;
  command: string[];
  tty: boolean;
  logLevel: string;
  /** template.environment ∪ spec.environment (spec wins), also set as plain env. */
  userEnvironment: Record<string, string>;
}

export interface SupervisorLaunchOptions {
  bin: string;
  /** OPENSHELL_ENDPOINT: the gateway as the sandbox sees it (the Service in front of the replicas). */
  endpoint: string;
  /** This sandbox's own scratch directory; created if missing. */
  dir: string;
  /**
   * Run the supervisor as this user instead of the driver's. As root the supervisor drops its
   * children to a `sandbox` user that must exist (or rewrites /etc/passwd when
   * OPENSHELL_SANDBOX_UID/GID are set); as an ordinary user it needs neither.
   */
  runAs?: { uid: number; gid: number };
  /** Extra environment for the supervisor (e.g. OPENSHELL_SUPERVISOR_TOPOLOGY). */
  extraEnv?: Record<string, string>;
}

export interface SandboxPaths {
  dir: string;
  /** --workdir: the sandbox's workspace root. Never a shared directory (see docs/interop.md). */
  workdir: string;
  home: string;
  /**
   * OPENSHELL_SSH_SOCKET_PATH. Its parent directory is the supervisor's own: in full enforcement
   * mode the supervisor chmods the socket's parent to 0700 (upstream ssh.rs), so a socket directly
   * in /tmp turns /tmp into 0700 for the whole machine.
   */
  sshSocket: string;
  /** OPENSHELL_SANDBOX_TOKEN_FILE, mode 0600, like upstream's container drivers. */
  tokenFile: string;
  log: string;
}

export function sandboxPaths(dir: string): SandboxPaths {
  return {
    dir,
    workdir: join(dir, 'workdir'),
    home: join(dir, 'home'),
    sshSocket: join(dir, 'run', 'ssh.sock'),
    tokenFile: join(dir, 'sandbox.jwt'),
    log: join(dir, 'supervisor.log'),
  };
}

/** Environment names from upstream's `openshell_core::sandbox_env`. */
export function supervisorEnvironment(
  sandbox: SupervisorSandbox,
  opts: Pick<SupervisorLaunchOptions, 'endpoint' | 'extraEnv'>,
  paths: SandboxPaths,
): Record<string, string> {
  return {
    PATH: process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: paths.home,
    XDG_CONFIG_HOME: join(paths.home, '.config'),
    XDG_STATE_HOME: join(paths.home, '.local', 'state'),
    XDG_DATA_HOME: join(paths.home, '.local', 'share'),
    XDG_CACHE_HOME: join(paths.home, '.cache'),
    TMPDIR: join(paths.dir, 'tmp'),
    TERM: 'xterm',
    NO_COLOR: '1',
    ...sandbox.userEnvironment,
    OPENSHELL_USER_ENVIRONMENT: JSON.stringify(sandbox.userEnvironment),
    OPENSHELL_SANDBOX_ID: sandbox.id,
    OPENSHELL_SANDBOX: sandbox.name,
    OPENSHELL_ENDPOINT: opts.endpoint,
    OPENSHELL_SSH_SOCKET_PATH: paths.sshSocket,
    OPENSHELL_SANDBOX_TOKEN_FILE: paths.tokenFile,
    OPENSHELL_MAIN_PROCESS_SPEC: JSON.stringify({ version: 1, command: sandbox.command, tty: sandbox.tty }),
    OPENSHELL_LOG_LEVEL: sandbox.logLevel,
    OPENSHELL_TELEMETRY_ENABLED: 'false',
    ...opts.extraEnv,
  };
}

/**
 * Prepares the scratch directory and starts the supervisor as the leader of a new session, which
 * is how stop and delete find the workload it starts (see sandboxProcesses). Output goes to
 * `<dir>/supervisor.log`.
 */
export function launchSupervisor(sandbox: SupervisorSandbox, opts: SupervisorLaunchOptions): { child: ChildProcess; paths: SandboxPaths } {
  const paths = sandboxPaths(opts.dir);
  for (const d of [paths.dir, paths.workdir, paths.home, join(paths.dir, 'run'), join(paths.dir, 'tmp')]) {
    mkdirSync(d, { recursive: true });
    if (opts.runAs) chownSync(d, opts.runAs.uid, opts.runAs.gid);
  }
  writeFileSync(paths.tokenFile, sandbox.token, { mode: 0o600 });
  chmodSync(paths.tokenFile, 0o600);
  if (opts.runAs) chownSync(paths.tokenFile, opts.runAs.uid, opts.runAs.gid);
  const logFd = openSync(paths.log, 'a');
  try {
    const child = spawn(opts.bin, ['--mode', 'process', '--workdir', paths.workdir], {
      cwd: paths.workdir,
      env: supervisorEnvironment(sandbox, opts, paths),
      stdio: ['ignore', logFd, logFd],
      detached: true,
      ...(opts.runAs ? { uid: opts.runAs.uid, gid: opts.runAs.gid } : {}),
    });
    return { child, paths };
  } finally {
    closeSync(logFd);
  }
}

interface ProcStat {
  pid: number;
  ppid: number;
  pgid: number;
  sid: number;
  /** `R`, `S`, … `Z` (a zombie: dead, not yet reaped). */
  state: string;
}

function readProcStats(): ProcStat[] {
  const out: ProcStat[] = [];
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return out;
  }
  for (const name of entries) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue; // gone meanwhile
    }
    // "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    out.push({ pid: Number(name), state: fields[0] ?? '', ppid: Number(fields[1]), pgid: Number(fields[2]), sid: Number(fields[3]) });
  }
  return out;
}

/**
 * Every process that belongs to a sandbox whose supervisor was started as session leader `rootPid`:
 * its session and process group (the supervisor moves the workload into a process group of its own,
 * but it stays in the session, also once the supervisor is gone), and their descendants (an SSH
 * session with a terminal starts a session of its own). Linux /proc; empty elsewhere.
 */
export function sandboxProcesses(rootPid: number, rootAlive = true): number[] {
  // Once the supervisor is gone its pid may be reused: then only its session's members count.
  const all = readProcStats().filter((p) => rootAlive || p.pid !== rootPid);
  const found = new Set<number>(all.filter((p) => p.pid === rootPid || p.sid === rootPid || p.pgid === rootPid).map((p) => p.pid));
  for (let grew = true; grew; ) {
    grew = false;
    for (const p of all) {
      if (!found.has(p.pid) && found.has(p.ppid)) {
        found.add(p.pid);
        grew = true;
      }
    }
  }
  return [...found];
}

/**
 * Resolves once no process of the sandbox runs any more (zombies count as gone: where PID 1 does not
 * reap orphans they linger), or after `timeoutMs`. SIGKILL is delivered asynchronously, so a stop
 * answers only after this.
 */
export async function waitSandboxGone(child: ChildProcess, timeoutMs = 2_000): Promise<boolean> {
  if (child.pid === undefined) return true;
  const rootPid = child.pid;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const live = new Set(sandboxProcesses(rootPid, false));
    const running = readProcStats().filter((p) => live.has(p.pid) && p.state !== 'Z');
    if (running.length === 0) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Sends `signal` to the supervisor only (a graceful stop lets it end its workload itself). */
export function signalSupervisor(child: ChildProcess, signal: NodeJS.Signals): boolean {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return false;
  try {
    return child.kill(signal);
  } catch {
    return false;
  }
}

/** SIGKILLs everything of the sandbox (see sandboxProcesses); the number of processes signalled. */
export function killSandbox(child: ChildProcess): number {
  if (child.pid === undefined) return 0;
  const alive = child.exitCode === null && child.signalCode === null;
  let n = 0;
  for (const pid of sandboxProcesses(child.pid, alive)) {
    try {
      process.kill(pid, 'SIGKILL');
      n++;
    } catch {
      // already gone
    }
  }
  // Without /proc: at least the supervisor's own process group.
  if (n === 0 && alive) {
    try {
      process.kill(-child.pid, 'SIGKILL');
      n++;
    } catch {
      // already gone
    }
  }
  return n;
}
