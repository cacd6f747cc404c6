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
