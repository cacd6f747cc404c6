// Peer identities: which replica a peer certificate names (SPIFFE URI or the SAN of the registered
// peer address), and the per-session verifier in front of the replica registry.
import { readFileSync } from 'node:fs';
import type { Http2Session } from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { certificateNamesReplica, createPeerIdentityVerifier, uriSans } from '../../../src/peers/peer-identity.ts';
import { cleartextPeerWarning } from '../../../src/peers/peer-tls.ts';
import { issueCert, makeTestPki, type TestPki } from '../../helpers/certs.ts';

const TEMPLATE = 'spiffe://ohs.test/ns/openshell/replica/{replica}';
let pki: TestPki;
const der = (names: Parameters<typeof issueCert>[2]): Buffer => {
  const pem = readFileSync(issueCert(pki, 'id', names).cert, 'utf8');
  return Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
};

beforeAll(() => {
  pki = makeTestPki();
});
afterAll(() => pki?.cleanup());

function session(cert: Buffer | undefined, authorized = true): Http2Session {
  return { socket: { authorized, getPeerCertificate: () => (cert ? { raw: cert } : {}) } } as unknown as Http2Session;
}

describe('subjectAltName URIs', () => {
  it('lists URI entries and never splits a quoted value into two', () => {
    expect(uriSans('DNS:a.example, URI:spiffe://t/replica/r0, IP Address:10.0.0.1')).toEqual(['spiffe://t/replica/r0']);
    // Node quotes a value holding the delimiter; its inside cannot pass for a second entry.
    expect(uriSans('URI:"spiffe://t/x, URI:spiffe://t/replica/r1", DNS:b')).toEqual(['spiffe://t/x, URI:spiffe://t/replica/r1']);
    expect(uriSans(undefined)).toEqual([]);
  });
});

describe('which replica a certificate names', () => {
  it('spiffe: the URI SAN for exactly that replica', () => {
    const cert = der({ uri: ['spiffe://ohs.test/ns/openshell/replica/r0'], ip: ['127.0.0.1'] });
    expect(certificateNamesReplica(cert, 'spiffe', 'r0', 'https://127.0.0.1:1', TEMPLATE)).toBe('spiffe://ohs.test/ns/openshell/replica/r0');
    expect(certificateNamesReplica(cert, 'spiffe', 'r1', 'https://127.0.0.1:1', TEMPLATE)).toBeUndefined();
    expect(certificateNamesReplica(cert, 'spiffe', 'r0', 'https://127.0.0.1:1', 'spiffe://other.test/replica/{replica}')).toBeUndefined();
  });

  it('san: an IP SAN equal to the registered peer address (IPv6 too)', () => {
    const cert = der({ ip: ['10.0.0.7', 'fd00::7'] });
    expect(certificateNamesReplica(cert, 'san', 'r0', 'https://10.0.0.7:8443')).toBe('IP:10.0.0.7');
    expect(certificateNamesReplica(cert, 'san', 'r0', 'https://[fd00::7]:8443')).toBe('IP:fd00::7');
    expect(certificateNamesReplica(cert, 'san', 'r0', 'https://10.0.0.8:8443')).toBeUndefined();
  });

  it('san: an exact DNS SAN, never a wildcard or the subject CN', () => {
    expect(certificateNamesReplica(der({ dns: ['r0.peers.example'] }), 'san', 'r0', 'https://R0.peers.example:8443')).toBe('DNS:r0.peers.example');
    expect(certificateNamesReplica(der({ dns: ['*.peers.example'] }), 'san', 'r0', 'https://r0.peers.example:8443')).toBeUndefined();
    // CN=id, no SAN: a name in the subject does not count.
    expect(certificateNamesReplica(der({}), 'san', 'r0', 'https://id:8443')).toBeUndefined();
  });
});

describe('the per-session verifier', () => {
  it('asks the registry once per session, refuses strangers and impostors', async () => {
    const urls = new Map([['r0', 'https://10.0.0.7:8443'], ['r1', 'https://10.0.0.8:8443']]);
    let reads = 0;
    const verifier = createPeerIdentityVerifier({
      mode: 'san',
      registry: {
        registeredPeerUrl: async (id) => {
          reads++;
          return urls.get(id) ?? null;
        },
      },
    });
    const s = session(der({ ip: ['10.0.0.7'] }));
    expect(await verifier.verify(s, 'r0')).toEqual({ ok: true, identity: 'IP:10.0.0.7' });
    expect(verifier.verify(s, 'r0')).toBe(true);
    expect(reads).toBe(1);
    // The same certificate claiming r1 (registered elsewhere), or an unknown replica.
    expect(await verifier.verify(s, 'r1')).toEqual({ ok: false, reason: 'mismatch' });
    expect(await verifier.verify(s, 'r9')).toEqual({ ok: false, reason: 'unregistered' });
    expect(await verifier.verify(s, 'bad origin!')).toEqual({ ok: false, reason: 'bad-origin' });
    expect(await verifier.verify(s, undefined)).toEqual({ ok: false, reason: 'bad-origin' });
    expect(await verifier.verify(session(undefined), 'r0')).toEqual({ ok: false, reason: 'no-certificate' });
    expect(await verifier.verify(session(der({ ip: ['10.0.0.7'] }), false), 'r0')).toEqual({ ok: false, reason: 'no-certificate' });
  });

  it('reads a replica again when its certificate does not match the cached address (it moved)', async () => {
    const seen: Array<boolean | undefined> = [];
    const verifier = createPeerIdentityVerifier({
      mode: 'san',
      registry: {
        registeredPeerUrl: async (_id, o) => {
          seen.push(o?.recheck);
          return o?.recheck ? 'https://10.0.0.9:8443' : 'https://10.0.0.7:8443';
        },
      },
    });
    expect(await verifier.verify(session(der({ ip: ['10.0.0.9'] })), 'r0')).toEqual({ ok: true, identity: 'IP:10.0.0.9' });
    expect(seen).toEqual([undefined, true]);
  });

  it('a registry that cannot answer refuses (503) rather than lets through', async () => {
    const verifier = createPeerIdentityVerifier({ mode: 'san', registry: { registeredPeerUrl: () => Promise.reject(new Error('down')) } });
    expect(await verifier.verify(session(der({ ip: ['10.0.0.7'] })), 'r0')).toEqual({ ok: false, reason: 'registry-unavailable' });
  });
});

describe('the cleartext warning', () => {
  const tlsOn = { certFile: 'c', keyFile: 'k', caFile: 'a' };
  it('is given in cluster mode without peer TLS on a non-loopback listener only', () => {
    expect(cleartextPeerWarning({ mode: 'cluster', peerListen: '0.0.0.0:8443' }, '0.0.0.0')).toMatch(/cleartext h2c on 0\.0\.0\.0:8443/);
    expect(cleartextPeerWarning({ mode: 'cluster', peerListen: '10.0.0.7:8443' }, '10.0.0.7')).toBeDefined();
    expect(cleartextPeerWarning({ mode: 'cluster', peerListen: '[::]:8443' }, '::')).toBeDefined();
    expect(cleartextPeerWarning({ mode: 'cluster', peerListen: '127.0.0.1:8443' }, '127.0.0.1')).toBeUndefined();
    expect(cleartextPeerWarning({ mode: 'cluster', peerListen: '[::1]:8443' }, '::1')).toBeUndefined();
    expect(cleartextPeerWarning({ mode: 'cluster', peerListen: '0.0.0.0:8443', peerTls: tlsOn }, '0.0.0.0')).toBeUndefined();
    expect(cleartextPeerWarning({ mode: 'embedded', peerListen: '0.0.0.0:8443' }, '0.0.0.0')).toBeUndefined();
  });
});
