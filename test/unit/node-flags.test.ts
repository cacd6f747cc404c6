// The node flags the image starts the sidecar with, how a process tells which it lacks, and why
// --no-allocation-site-pretenuring is one of them.
import { execFile } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { NODE_FLAGS, missingNodeFlags } from '../../src/node-flags.ts';

const FIXTURE = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'young-survivors.ts');

/** MB of 1,000 closed HTTP/2 streams (and what each reached) that survive a scavenge. */
async function survivingStreams(nodeArgs: string[]): Promise<{ released_mb: number; survived_mb: number }> {
  const args = ['--expose-gc', '--min-semi-space-size=128', '--max-semi-space-size=128', ...nodeArgs, '--import', 'tsx', FIXTURE, 'streams', '--patch'];
  const { stdout } = await promisify(execFile)(process.execPath, args, { timeout: 60_000 });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as { released_mb: number; survived_mb: number };
}

describe('node flags', () => {
  it('names the flags a process was started without, and none when it has them all', () => {
    expect(NODE_FLAGS).toContain('--initial-old-space-size=64');
    expect(NODE_FLAGS).toContain('--no-allocation-site-pretenuring');
    expect(NODE_FLAGS).toContain('--max-semi-space-size=16');
    expect(missingNodeFlags([])).toEqual([...NODE_FLAGS]);
    expect(missingNodeFlags(['--inspect', ...NODE_FLAGS])).toEqual([]);
    expect(missingNodeFlags(['--initial-old-space-size=32', '--no-allocation-site-pretenuring', '--max-semi-space-size=16'])).toEqual(['--initial-old-space-size=64']);
  });

  it('keep the young generation at two 16 MB semi-spaces, whatever size this Node would give it', async () => {
    // 400 MB of short-lived garbage lets V8 grow the young generation to its largest.
    const script =
      "let keep = [];for (let i = 0; i < 400_000; i++) { keep.push(new Array(128).fill(i)); if (keep.length > 2000) keep = []; }" +
      "const v8 = require('node:v8');console.log(JSON.stringify(v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')))";
    const newSpace = async (flags: readonly string[]): Promise<{ space_size: number }> => {
      const { stdout } = await promisify(execFile)(process.execPath, [...flags, '-e', script], { timeout: 60_000 });
      return JSON.parse(stdout.trim()) as { space_size: number };
    };
    const [withFlags, without] = await Promise.all([newSpace(NODE_FLAGS), newSpace([])]);
    expect(withFlags.space_size).toBeGreaterThan(0);
    expect(withFlags.space_size).toBeLessThanOrEqual(32 * 1048576);
    // Node 20 grows it to the same 32 MB; Node 24 on a machine with several GB further (64 MB here,
    // 128 MB in a sidecar holding 20,000 sessions).
    expect(without.space_size).toBeGreaterThanOrEqual(withFlags.space_size);
  });

  it('with thousands of streams held, closed short streams die young only without allocation-site pretenuring', async () => {
    // Node's own bind patch applied in both runs (src/node-patches.ts), so what differs is the flag.
    const [pretenuring, without] = await Promise.all([survivingStreams([]), survivingStreams(['--no-allocation-site-pretenuring'])]);
    // Both let go of the same ~75 MB; with pretenuring V8 had learnt from the held streams to
    // allocate stream state old, and the old dead state kept its young payloads alive.
    expect(pretenuring.released_mb).toBeGreaterThan(40);
    expect(without.released_mb).toBeGreaterThan(40);
    expect(without.survived_mb).toBeLessThan(3);
    expect(pretenuring.survived_mb).toBeGreaterThan(10 * without.survived_mb);
  });
});
