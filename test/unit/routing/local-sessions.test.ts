// What a shed waits for (DESIGN §6): requests on their way to the gateway for a session held here,
// and a moment after each answer, while its RelayOpen may still be on its way up the control stream.
import { describe, expect, it } from 'vitest';
import { LocalSessions } from '../../../src/routing/router.ts';

describe('LocalSessions: requests a shed waits for', () => {
  it('counts a request from its start until its end, once however often it ends', () => {
    const local = new LocalSessions();
    local.set('sb', 4);
    const a = local.beginRequest('sb');
    const b = local.beginRequest('sb');
    expect(local.inflightRequests('sb')).toBe(2);
    a();
    a();
    expect(local.inflightRequests('sb')).toBe(1);
    b();
    expect(local.inflightRequests('sb')).toBe(0);
  });

  it('remembers the last answer for a held session for the settle window, and forgets it with the session', () => {
    const local = new LocalSessions();
    const id = local.set('sb', 4);
    expect(local.answeredWithin('sb', 300)).toBe(false);
    const end = local.beginRequest('sb');
    expect(local.answeredWithin('sb', 300)).toBe(false);
    end();
    const now = Date.now();
    expect(local.answeredWithin('sb', 300, now)).toBe(true);
    expect(local.answeredWithin('sb', 300, now + 301)).toBe(false);
    local.removeSession('sb', id);
    expect(local.answeredWithin('sb', 300, now)).toBe(false);
  });

  it('an answer for a sandbox with no session here is not remembered', () => {
    const local = new LocalSessions();
    local.beginRequest('gone')();
    expect(local.answeredWithin('gone', 300)).toBe(false);
  });
});

describe('LocalSessions: held counts sessions not being shed', () => {
  it('follows registrations, sheds, replacements and removals', () => {
    const local = new LocalSessions();
    const shed = (): void => undefined;
    const a = local.set('sb-a', 1, undefined, { shed });
    local.set('sb-b', 1, undefined, { shed });
    const c = local.set('sb-c', 1);
    expect([local.size, local.held]).toEqual([3, 3]);

    expect(local.shed('sb-a', 'drain')).toBe(true);
    expect(local.shed('sb-a', 'drain')).toBe(false); // a second shed of the same session counts nothing
    expect(local.shed('sb-c', 'drain')).toBe(false); // no shed control: not shed
    expect([local.size, local.held]).toEqual([3, 2]);

    // The supervisor reconnected here: the new session replaces the shed one and is held.
    const a2 = local.set('sb-a', 2, undefined, { shed });
    expect([local.size, local.held]).toEqual([3, 3]);
    expect(local.removeSession('sb-a', a)).toBeUndefined(); // the replaced stream's removal is a no-op
    expect([local.size, local.held]).toEqual([3, 3]);

    expect(local.shed('sb-b', 'rebalance')).toBe(true);
    expect([local.size, local.held]).toEqual([3, 2]);
    expect(local.removeSession('sb-b', local.current('sb-b')!)).toBe(1);
    expect(local.removeSession('sb-a', a2)).toBe(2);
    expect(local.removeSession('sb-c', c)).toBe(1);
    expect([local.size, local.held]).toEqual([0, 0]);
  });
});
