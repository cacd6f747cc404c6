// A throwaway PKI for TLS tests, made with the `openssl` CLI: a CA (EC P-256, one day), a server
// certificate for 127.0.0.1 / localhost and a client certificate, both signed by that CA; more
// certificates (per-replica peer certificates with DNS/IP SANs and SPIFFE URIs) on demand.
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
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
  /** CA private key (to issue more certificates). */
  caKey: string;
  /** Removes the directory. */
  cleanup(): void;
}

export interface CertNames {
  dns?: string[];
  ip?: string[];
  /** URI SANs, e.g. spiffe://trust.domain/replica/r0. */
  uri?: string[];
}

export interface IssuedCert {
  cert: string;
  key: string;
  /** SHA-256 fingerprint as Node prints it (AA:BB:…). */
  fingerprint256: string;
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
    caKey: f('ca.key'),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

let issued = 0;

/**
 * Issues a certificate from the PKI's CA usable for both TLS ends (peer sidecars are servers and
 * clients), with a fresh key. With `into`, the files there are replaced atomically (a rename, as
 * a Kubernetes secret update swaps them), which is how a rotation looks to a reader.
 */
export function issueCert(pki: Pick<TestPki, 'dir' | 'ca' | 'caKey'>, name: string, names: CertNames, into?: { cert: string; key: string }): IssuedCert {
  const n = ++issued;
  const f = (suffix: string): string => join(pki.dir, `${name}-${n}.${suffix}`);
  const san = [...(names.dns ?? []).map((d) => `DNS:${d}`), ...(names.ip ?? []).map((i) => `IP:${i}`), ...(names.uri ?? []).map((u) => `URI:${u}`)];
  writeFileSync(
    f('ext'),
    `basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n${san.length > 0 ? `subjectAltName=${san.join(',')}\n` : ''}`,
  );
  openssl(['req', ...EC_KEY, '-keyout', f('key'), '-out', f('csr'), '-subj', `/CN=${name}`]);
  openssl(['x509', '-req', '-in', f('csr'), '-CA', pki.ca, '-CAkey', pki.caKey, '-CAcreateserial', '-out', f('crt'), '-days', '1', '-extfile', f('ext')]);
  const fingerprint256 = new X509Certificate(readFileSync(f('crt'))).fingerprint256;
  if (!into) return { cert: f('crt'), key: f('key'), fingerprint256 };
  // Key first, then certificate: a reader may briefly see a new key with the old certificate (refused, read again).
  renameSync(f('key'), into.key);
  renameSync(f('crt'), into.cert);
  return { cert: into.cert, key: into.key, fingerprint256 };
}
