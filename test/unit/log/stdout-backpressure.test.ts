// A stdout that is not read (a stalled log collector) must not make the sidecar hold every line in
// memory: lines wait in a bounded buffer, the rest are dropped and counted, a warning tells how many,
// and what was buffered is written out in order when the process exits.
import { fork } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const FIXTURE = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'flood-stdout.ts');

function next<T>(child: ReturnType<typeof fork>, what: string, pick: (m: Record<string, unknown>) => T | undefined, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.off('message', onMessage);
      reject(new Error(`no ${what} from the child within ${ms} ms`));
    }, ms);
    const onMessage = (m: unknown): void => {
      const v = pick(m as Record<string, unknown>);
      if (v === undefined) return;
      clearTimeout(timer);
      child.off('message', onMessage);
      resolve(v);
    };
    child.on('message', onMessage);
  });
}

describe('logging to a stdout nobody reads', () => {
  it('buffers up to the bound, drops and counts past it, warns, and flushes the rest in order at exit', async () => {
    const child = fork(FIXTURE, [], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
    try {
      // Nothing reads stdout yet: the pipe fills after ~64 KiB, long before the child is done.
      child.stdout!.pause();
      const flood = await next(child, 'report of the flood', (m) => (typeof m['flooded'] === 'number' ? (m as { flooded: number; dropped: number }) : undefined), 20_000);
      expect(flood.dropped).toBeGreaterThan(0);
      expect(flood.dropped).toBeLessThan(flood.flooded);
      child.send('metrics'); // while stdout is still full
      const metrics = await next(child, 'metrics', (m) => (typeof m['metrics'] === 'string' ? m['metrics'] : undefined), 10_000);
      expect(metrics).toMatch(new RegExp(`^ohs_log_lines_dropped_total ${flood.dropped}$`, 'm'));

      // Now stdout is read: the buffered lines come out, then (a second after the drops) the warning.
      let text = '';
      child.stdout!.setEncoding('utf8');
      child.stdout!.on('data', (chunk: string) => {
        text += chunk;
      });
      child.stdout!.resume();
      const deadline = Date.now() + 15_000;
      while (!text.includes('log lines dropped') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      child.send('exit');
      expect(await exited).toBe(0);
      await new Promise((r) => setTimeout(r, 100)); // the last chunk of the pipe

      const parsed = text
        .split('\n')
        .filter((l) => l.length > 0)
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      const floods = parsed.filter((l) => l['msg'] === 'flood').map((l) => l['i'] as number);
      const warning = parsed.find((l) => l['msg'] === 'log lines dropped: stdout was not read fast enough');
      expect(warning).toMatchObject({ level: 'warn', droppedLines: flood.dropped });
      // Every line not counted as dropped arrived, in the order written: the first ones, up to the buffer.
      expect(floods.length).toBe(flood.flooded - flood.dropped);
      expect(floods).toEqual(Array.from({ length: floods.length }, (_, i) => i));
    } finally {
      child.kill('SIGKILL');
    }
  }, 60_000);
});
