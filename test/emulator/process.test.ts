// emulator/process.ts: the processes a test starts do not outlive it, also when it is ended by a
// signal (vitest ends a worker whose test hung with SIGTERM).
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { waitUntil } from '../helpers/wait.ts';

const FIXTURE = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'process-parent.ts');

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Starts the fixture, waits for its child's pid, sends SIGTERM; resolves with what happened. */
async function sigtermParent(args: string[]): Promise<{ childPid: number; exit: { code: number | null; signal: NodeJS.Signals | null }; lines: string[] }> {
  const parent = spawn(process.execPath, ['--import', 'tsx', FIXTURE, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines: string[] = [];
  let buffered = '';
  const childPid = await new Promise<number>((resolve, reject) => {
    parent.on('exit', (code) => reject(new Error(`fixture exited (${code}) before its child was up`)));
    parent.stdout.on('data', (d: Buffer) => {
      buffered += d.toString();
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        lines.push(line);
        const msg = JSON.parse(line) as { event: string; pid?: number };
        if (msg.event === 'child') resolve(msg.pid as number);
      }
    });
  });
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => parent.on('exit', (code, signal) => resolve({ code, signal })));
  parent.kill('SIGTERM');
  return { childPid, exit: await exit, lines };
}

describe('startProcess', () => {
  it('kills its children when its process is ended by SIGTERM, which then ends it as SIGTERM would', async () => {
    const { childPid, exit } = await sigtermParent([]);
    expect(exit).toEqual({ code: null, signal: 'SIGTERM' });
    await waitUntil('the child gone', async () => alive(childPid), (a) => !a, { timeoutMs: 5000 });
  });

  it('leaves SIGTERM to a process that handles it itself, and still kills its children when it exits', async () => {
    const { childPid, exit, lines } = await sigtermParent(['--own-sigterm']);
    expect(lines.map((l) => (JSON.parse(l) as { event: string }).event)).toContain('own-stop');
    expect(exit).toEqual({ code: 0, signal: null });
    await waitUntil('the child gone', async () => alive(childPid), (a) => !a, { timeoutMs: 5000 });
  });
});
