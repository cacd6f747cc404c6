// A throwaway PKI for TLS tests, made with the `openssl` CLI: a CA (EC P-256, one day), a server
// certificate for 127.0.0.1 / localhost and a client certificate, both signed by that CA.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestPki {
  /** The temporary directory holding every file below. */
  dir: string;
  /** CA certificate (PEM); trust anchor for both sides. */
  ca: string;
  /** Server certificate (CN=server, SAN IP:127.0.0.1, DNS:localhost) and its key. */
  serverCert: string;
  serverKey: string;
  /** Client certificate (CN=client) and its key. */
  clientCert: string;
  clientKey: string;
  /** Removes the directory. */
  cleanup(): void;
}

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];

export function makeTestPki(): TestPki {
  const dir = mkdtempSync(join(tmpdir(), 'ohs-pki-'));
  const f = (n: string): string => join(dir, n);
  try {
    openssl(['req', '-x509', ...EC_KEY, '-keyout', f('ca.key'), '-out', f('ca.crt'), '-days', '1', '-subj', '/CN=ohs-test-ca']);
    // Extensions go through an extfile (works on OpenSSL 1.1 and 3.x alike).
    writeFileSync(
      f('server.ext'),
      'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n',
    );
    writeFileSync(f('client.ext'), 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n');
    for (const who of ['server', 'client']) {
      openssl(['req', ...EC_KEY, '-keyout', f(`${who}.key`), '-out', f(`${who}.csr`), '-subj', `/CN=${who}`]);
      openssl([
        'x509', '-req', '-in', f(`${who}.csr`), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial',
        '-out', f(`${who}.crt`), '-days', '1', '-extfile', f(`${who}.ext`),
      ]);
    }
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    dir,
    ca: f('ca.crt'),
    serverCert: f('server.crt'),
    serverKey: f('server.key'),
    clientCert: f('client.crt'),
    clientKey: f('client.key'),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}
