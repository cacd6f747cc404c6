// A private Postgres cluster for fault-injection tests: the shared Postgres must never be stopped or
// reconfigured, this one lives in a temp dir and can be stopped and started at will.
import { execFile, execFileSync } from 'node:child_process';
import { chown, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { freePort } from './own-redis.ts';

const run = promisify(execFile);
const PG_BIN = process.env.OHS_PG_BIN ?? '/usr/lib/postgresql/15/bin';

export interface OwnPostgres {
  /** postgres://postgres@127.0.0.1:<port>/postgres */
  url: string;
  port: number;
  /** Stops the server; `immediate` is a crash-like stop (no checkpoint, clients cut at once). */
  stop(mode?: 'fast' | 'immediate'): Promise<void>;
  start(): Promise<void>;
  /** Stops the server if needed and deletes its data directory. */
  destroy(): Promise<void>;
}

const live = new Set<string>(); // data dirs of running clusters, stopped if the test process exits
let exitHookInstalled = false;

function asPostgresUser(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

/** Runs a Postgres binary, as the `postgres` OS user when we are root (postgres refuses to run as root). */
function command(bin: string, args: string[]): [string, string[]] {
  const file = path.join(PG_BIN, bin);
  return asPostgresUser() ? ['runuser', ['-u', 'postgres', '--', file, ...args]] : [file, args];
}

async function pg(bin: string, args: string[]): Promise<void> {
  const [file, argv] = command(bin, args);
  try {
    await run(file, argv, { timeout: 60_000 });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message?: string };
    throw new Error(`${bin} ${args.join(' ')} failed: ${e.message ?? ''}\n${e.stdout ?? ''}\n${e.stderr ?? ''}`);
  }
}

export async function startOwnPostgres(): Promise<OwnPostgres> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ohs-pg-'));
  const dataDir = path.join(dir, 'data');
  const logFile = path.join(dir, 'postgres.log');
  if (asPostgresUser()) {
    const uid = Number(execFileSync('id', ['-u', 'postgres']).toString().trim());
    const gid = Number(execFileSync('id', ['-g', 'postgres']).toString().trim());
    await chown(dir, uid, gid);
  }
  const port = await freePort();
  let running = false;
  let destroyed = false;

  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once('exit', () => {
      for (const d of live) {
        const [file, argv] = command('pg_ctl', ['-D', d, '-m', 'immediate', 'stop']);
        try {
          execFileSync(file, argv, { stdio: 'ignore', timeout: 10_000 });
        } catch {
          // best effort at exit
        }
      }
    });
  }

  await pg('initdb', ['-D', dataDir, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8', '--locale=C']);

  async function start(): Promise<void> {
    if (destroyed) throw new Error('own postgres destroyed');
    if (running) return;
    const serverOpts = [
      `-p ${port}`,
      `-k ${dir}`,
      '-c listen_addresses=127.0.0.1',
      '-c fsync=off',
      '-c synchronous_commit=off',
      '-c full_page_writes=off',
      '-c shared_buffers=16MB',
      '-c max_connections=50',
    ].join(' ');
    await pg('pg_ctl', ['-D', dataDir, '-l', logFile, '-o', serverOpts, '-w', '-t', '30', 'start']);
    running = true;
    live.add(dataDir);
  }

  async function stop(mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    if (!running) return;
    await pg('pg_ctl', ['-D', dataDir, '-m', mode, '-w', '-t', '30', 'stop']);
    running = false;
    live.delete(dataDir);
  }

  async function destroy(): Promise<void> {
    if (destroyed) return;
    await stop('immediate').catch(() => {});
    destroyed = true;
    await rm(dir, { recursive: true, force: true });
  }

  try {
    await start();
  } catch (err) {
    await destroy();
    throw err;
  }
  return { url: `postgres://postgres@127.0.0.1:${port}/postgres`, port, stop, start, destroy };
}
