import { describe, expect, it } from 'vitest';
import { tunnelHeaders } from '../../../src/proxy/tunnel.ts';

describe('tunnelHeaders', () => {
  it('reads the sandbox id and token in any case, and passes other headers over', () => {
    const raw = ['Host', 'gw', 'X-Sandbox-Id', 'sbx-1', 'content-type', 'x', 'x-request-id', 'r', 'X-SANDBOX-TOKEN', 'tok', 'x-sandbox-tokex', 'no'];
    expect(tunnelHeaders(raw)).toEqual({ sandboxId: 'sbx-1', token: 'tok' });
  });

  it('names the first duplicated one and keeps the first value', () => {
    expect(tunnelHeaders(['x-sandbox-id', 'a', 'X-Sandbox-Id', 'b', 'x-sandbox-token', 't'])).toEqual({ sandboxId: 'a', token: 't', duplicate: 'x-sandbox-id' });
    expect(tunnelHeaders(['x-sandbox-token', 't1', 'x-sandbox-id', 'a', 'x-sandbox-token', 't2', 'x-sandbox-id', 'b'])).toEqual({
      sandboxId: 'a',
      token: 't1',
      duplicate: 'x-sandbox-token',
    });
  });

  it('finds nothing in a request without them', () => {
    expect(tunnelHeaders(['Host', 'gw'])).toEqual({});
  });
});
