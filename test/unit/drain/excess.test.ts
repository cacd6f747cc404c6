import { describe, expect, it } from 'vitest';
import { excessSessions } from '../../../src/drain/rebalance.ts';

describe('excessSessions', () => {
  it('sheds down to the fair share only when over the margin', () => {
    // 40 over 4: fair 10, margin 20 % → over above 12.
    expect(excessSessions(20, 40, 4, 20, 0)).toBe(10);
    expect(excessSessions(13, 40, 4, 20, 9)).toBe(3);
    expect(excessSessions(12, 40, 4, 20, 9)).toBe(0);
  });

  it('also sheds from a replica above fair share when another is under the margin', () => {
    // r0 7 (under 8), r1 12: r1 is within its own margin yet holds 2 over fair.
    expect(excessSessions(12, 40, 4, 20, 7)).toBe(2);
    expect(excessSessions(11, 40, 4, 20, 7)).toBe(1);
    // At fair share (or less than one over it) nothing is shed: it would only move the imbalance.
    expect(excessSessions(10, 40, 4, 20, 7)).toBe(0);
    expect(excessSessions(10, 39, 4, 20, 7)).toBe(0);
  });

  it('never sheds alone or with nothing to balance', () => {
    expect(excessSessions(30, 30, 1, 20, 30)).toBe(0);
    expect(excessSessions(0, 0, 3, 20, 0)).toBe(0);
  });
});
