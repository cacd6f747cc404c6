import { describe, expect, it } from 'vitest';
import { PEER_AUTH, PEER_CLASS, PEER_EPOCH, PEER_HOP, PEER_ORIGIN, PEER_SANDBOX, peerSecretMatches, withPeerHeaders } from '../../../src/peers/protocol.ts';

const info = { secret: 's3cret-0123456789', origin: 'r1', sandboxId: 'sbx-1', epoch: 7, cls: 'tcp-forward', hop: 1 };

describe('peer protocol headers', () => {
  it('adds the peer headers and the extra ones to a copy, leaving the request headers untouched', () => {
    const headers = { ':path': '/openshell.v1.OpenShell/ForwardTcp', 'content-type': 'application/grpc' };
    const out = withPeerHeaders(headers, info, { traceparent: '00-abc-def-01' });
    expect(out).toEqual({
      ':path': '/openshell.v1.OpenShell/ForwardTcp',
      'content-type': 'application/grpc',
      [PEER_AUTH]: 's3cret-0123456789',
      [PEER_ORIGIN]: 'r1',
      [PEER_SANDBOX]: 'sbx-1',
      [PEER_EPOCH]: '7',
      [PEER_CLASS]: 'tcp-forward',
      [PEER_HOP]: '1',
      traceparent: '00-abc-def-01',
    });
    expect(headers).toEqual({ ':path': '/openshell.v1.OpenShell/ForwardTcp', 'content-type': 'application/grpc' });
  });

  it('sends no secret header with peer mTLS alone (empty secret)', () => {
    expect(withPeerHeaders({}, { ...info, secret: '' })).not.toHaveProperty(PEER_AUTH);
    expect(Object.keys(withPeerHeaders({}, info))).toEqual([PEER_AUTH, PEER_ORIGIN, PEER_SANDBOX, PEER_EPOCH, PEER_CLASS, PEER_HOP]);
  });

  it('matches the secret only when it is the same, and follows a changed secret', () => {
    expect(peerSecretMatches('s3cret-0123456789', 's3cret-0123456789')).toBe(true);
    expect(peerSecretMatches('s3cret-012345678', 's3cret-0123456789')).toBe(false);
    expect(peerSecretMatches(['s3cret-0123456789'], 's3cret-0123456789')).toBe(false);
    expect(peerSecretMatches('', 's3cret-0123456789')).toBe(false);
    expect(peerSecretMatches(undefined, 's3cret-0123456789')).toBe(false);
    // A rotated secret: the old one no longer matches, the new one does.
    expect(peerSecretMatches('s3cret-0123456789', 'rotated-9876543210')).toBe(false);
    expect(peerSecretMatches('rotated-9876543210', 'rotated-9876543210')).toBe(true);
  });
});
