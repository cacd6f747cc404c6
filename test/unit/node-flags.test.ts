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
    expect(missingNodeFlags([])).toEqual([...NODE_FLAGS]);
    expect(missingNodeFlags(['--inspect', ...NODE_FLAGS])).toEqual([]);
    expect(missingNodeFlags(['--initial-old-space-size=32', '--no-allocation-site-pretenuring'])).toEqual(['--initial-old-space-size=64']);
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
