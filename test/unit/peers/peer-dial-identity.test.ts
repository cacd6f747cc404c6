// The dialling side of peer mTLS with SPIFFE identities: a connection to a peer URL accepts only the
// certificate of the replica registered there, whatever other valid certificate of the CA answers.
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPeerTlsMaterial, type PeerTlsMaterial } from '../../../src/peers/peer-tls.ts';
import { issueCert, makeTestPki, type IssuedCert, type TestPki } from '../../helpers/certs.ts';

const TEMPLATE = 'spiffe://ohs.test/ns/openshell/replica/{replica}';
const spiffe = (id: string): string => TEMPLATE.replace('{replica}', id);
let pki: TestPki;
let r0: IssuedCert;
let r1: IssuedCert;
let material: PeerTlsMaterial;
let server: tls.Server;
let port = 0;

beforeAll(async () => {
  pki = makeTestPki();
  r0 = issueCert(pki, 'r0', { uri: [spiffe('r0')] });
  r1 = issueCert(pki, 'r1', { uri: [spiffe('r1')] });
  // The server answering here holds r0's valid certificate.
  server = tls.createServer({ cert: readFileSync(r0.cert), key: readFileSync(r0.key), ca: readFileSync(pki.ca), requestCert: true, ALPNProtocols: ['h2'] }, (s) => s.end());
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
  // The dialling sidecar is r1.
  material = createPeerTlsMaterial({
    config: { certFile: r1.cert, keyFile: r1.key, caFile: pki.ca, identity: 'spiffe', spiffeIdTemplate: TEMPLATE },
    logger: pino({ level: 'silent' }),
  });
});

afterAll(async () => {
  material?.close();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  pki?.cleanup();
});

function dial(expected: string | undefined): Promise<string> {
  return new Promise((resolve) => {
    const sock = tls.connect({ ...material.clientOptions(expected), host: '127.0.0.1', port, ALPNProtocols: ['h2'] });
    sock.once('secureConnect', () => {
      sock.destroy();
      resolve('connected');
    });
    sock.once('error', (err: Error & { code?: string }) => resolve(`${err.code ?? ''}: ${err.message}`));
  });
}

describe('dialling a peer with SPIFFE identities', () => {
  it('connects when the server presents the SPIFFE id of the replica meant', async () => {
    expect(await dial('r0')).toBe('connected');
  });

  it("refuses a peer presenting another replica's valid certificate", async () => {
    expect(await dial('r1')).toBe(`ERR_OHS_PEER_IDENTITY: peer at 127.0.0.1 presented ${spiffe('r0')}, not ${spiffe('r1')} (the replica registered there)`);
    expect(await dial('r2')).toMatch(/^ERR_OHS_PEER_IDENTITY: .* not spiffe:\/\/ohs\.test\/ns\/openshell\/replica\/r2 /);
  });

  it('refuses every server at an address where no replica is known to be registered', async () => {
    expect(await dial(undefined)).toMatch(/^ERR_OHS_PEER_IDENTITY: no replica is known to be registered at 127\.0\.0\.1/);
  });
});
