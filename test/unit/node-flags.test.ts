// The node flags the image starts the sidecar with, and how a process tells which it lacks.
import { describe, expect, it } from 'vitest';
import { NODE_FLAGS, missingNodeFlags } from '../../src/node-flags.ts';

describe('node flags', () => {
  it('names the flags a process was started without, and none when it has them all', () => {
    expect(NODE_FLAGS).toContain('--initial-old-space-size=64');
    expect(missingNodeFlags([])).toEqual([...NODE_FLAGS]);
    expect(missingNodeFlags(['--inspect', ...NODE_FLAGS])).toEqual([]);
    expect(missingNodeFlags(['--initial-old-space-size=32'])).toEqual(['--initial-old-space-size=64']);
  });
});
