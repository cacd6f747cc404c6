// Peer mTLS material: this sidecar's certificate, key and the CA that signs every replica's, read
// from files and read again on a timer. A change applies to new connections only (the listener's
// setSecureContext, a fresh context for each new outgoing session); sessions already up keep the
// certificates they were made with. A half-written update (a key that does not fit its certificate)
// is refused and the files are read again at the next tick.
import { X509Certificate, createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { PeerTlsConfig } from '../config/schema.ts';
import { OhsError } from '../errors.ts';
import { spiffeIdFor, uriSans } from './peer-identity.ts';

export const DEFAULT_PEER_TLS_RELOAD_INTERVAL_MS = 5_000;
// Both ends are this sidecar: no reason to speak anything older.
const MIN_VERSION = 'TLSv1.3';

interface Files {
  cert: Buffer;
  key: Buffer;
  ca: Buffer;
}

interface Loaded {
  files: Files;
  context: tls.SecureContext;
  fingerprint256: string;
  notAfterMs: number;
}

export interface PeerTlsMaterial {
  /** Options for the peer listener (http2.createSecureServer): client certificates required. */
  serverOptions(): tls.TlsOptions;
  /**
   * Options for a new outgoing peer connection, with the certificates current right now. With SPIFFE
   * identities the server must present the id of `expectedReplicaId`, the replica this connection
   * means to reach; undefined (no replica known at that address) refuses every server.
   */
  clientOptions(expectedReplicaId: string | undefined): tls.ConnectionOptions;
  /** Context options for the listener's setSecureContext after a reload. */
  onReload(listener: (options: tls.SecureContextOptions) => void): () => void;
  /** SHA-256 fingerprint of the certificate in use (colon-separated hex, as Node prints it). */
  fingerprint256(): string;
  /** Reads the files now; resolves true when they changed and were applied. */
  reload(): Promise<boolean>;
  close(): void;
}

export interface PeerTlsMetrics {
  reloads: Counter<'outcome'>;
  certExpiry: Gauge;
}

export function createPeerTlsMetrics(registry: Registry): PeerTlsMetrics {
  const registers = [registry];
  return {
    reloads: new Counter({
      name: 'ohs_peer_tls_reloads_total',
      help: 'Peer mTLS certificate files read again after a change, by outcome (applied, refused: the files did not make a valid pair).',
      labelNames: ['outcome'] as const,
      registers,
    }),
    certExpiry: new Gauge({
      name: 'ohs_peer_tls_cert_expiry_timestamp_seconds',
      help: 'When the peer certificate in use expires (Unix time).',
      registers,
    }),
  };
}

function contextOptions(files: Files): tls.SecureContextOptions {
  return { cert: files.cert, key: files.key, ca: files.ca, minVersion: MIN_VERSION };
}

/** Builds (and so validates) a context from the files; throws when key and certificate do not match. */
function load(files: Files): Loaded {
  const context = tls.createSecureContext(contextOptions(files));
  const cert = new X509Certificate(files.cert);
  return { files, context, fingerprint256: cert.fingerprint256, notAfterMs: Date.parse(cert.validTo) };
}

function sameFiles(a: Files, b: Files): boolean {
  return a.cert.equals(b.cert) && a.key.equals(b.key) && a.ca.equals(b.ca);
}

function digest(files: Files): string {
  return createHash('sha256').update(files.cert).update(files.key).update(files.ca).digest('hex');
}

export interface PeerTlsOptions {
  config: PeerTlsConfig;
  logger: Logger;
  metrics?: PeerTlsMetrics;
}

/** Reads the files once (a failure is a configuration error) and starts watching them. */
export function createPeerTlsMaterial(opts: PeerTlsOptions): PeerTlsMaterial {
  const { config, logger: log, metrics } = opts;
  let current: Loaded;
  try {
    current = load({ cert: readFileSync(config.certFile), key: readFileSync(config.keyFile), ca: readFileSync(config.caFile) });
  } catch (err) {
    throw new OhsError('OHS_ERR_CONFIG', `peer TLS: cannot use ${config.certFile} / ${config.keyFile} / ${config.caFile}: ${(err as Error).message}`, { cause: err });
  }
  metrics?.certExpiry.set(Math.floor(current.notAfterMs / 1000));
  const spiffeTemplate = config.identity === 'spiffe' ? config.spiffeIdTemplate : undefined;
  const listeners = new Set<(options: tls.SecureContextOptions) => void>();
  let refusedDigest: string | undefined;
  let reloading: Promise<boolean> | undefined;

  async function readAndApply(): Promise<boolean> {
    let files: Files;
    try {
      const [cert, key, ca] = await Promise.all([readFile(config.certFile), readFile(config.keyFile), readFile(config.caFile)]);
      files = { cert, key, ca };
    } catch (err) {
      // Mid-rotation (a Kubernetes secret swaps a symlink) a file may be missing for a moment.
      log.debug({ err: (err as Error).message }, 'peer TLS files not readable; keeping the certificates in use');
      return false;
    }
    if (sameFiles(files, current.files)) return false;
    let next: Loaded;
    try {
      next = load(files);
    } catch (err) {
      const d = digest(files);
      if (d !== refusedDigest) {
        refusedDigest = d;
        metrics?.reloads.inc({ outcome: 'refused' });
        log.warn({ err: (err as Error).message }, 'peer TLS files changed but do not make a valid certificate and key; keeping the ones in use');
      }
      return false;
    }
    const previous = current.fingerprint256;
    current = next;
    refusedDigest = undefined;
    metrics?.reloads.inc({ outcome: 'applied' });
    metrics?.certExpiry.set(Math.floor(next.notAfterMs / 1000));
    for (const l of listeners) l(contextOptions(next.files));
    log.info({ fingerprint: next.fingerprint256, previous, notAfter: new Date(next.notAfterMs).toISOString() }, 'peer TLS certificates reloaded; new connections use them, open ones keep theirs');
    return true;
  }

  function reload(): Promise<boolean> {
    reloading ??= readAndApply().finally(() => {
      reloading = undefined;
    });
    return reloading;
  }

  // A refused peer server is logged once per address and 10 s: every new connection attempt to it fails alike.
  const refusalLoggedAt = new Map<string, number>();
  const logged = (check: ReturnType<typeof spiffeServerCheck>): ReturnType<typeof spiffeServerCheck> => (host, cert) => {
    const err = check(host, cert);
    if (err !== undefined) {
      const now = Date.now();
      if (now - (refusalLoggedAt.get(host) ?? 0) > 10_000) {
        if (refusalLoggedAt.size > 1_000) refusalLoggedAt.clear();
        refusalLoggedAt.set(host, now);
        log.warn({ host, err: err.message }, 'peer server refused: its certificate does not name the replica registered at that address');
      }
    }
    return err;
  };

  const timer = setInterval(() => void reload(), config.reloadIntervalMs ?? DEFAULT_PEER_TLS_RELOAD_INTERVAL_MS);
  timer.unref();

  return {
    serverOptions: () => ({
      ...contextOptions(current.files),
      requestCert: true,
      rejectUnauthorized: true,
      // A peer that stalls its handshake does not hold a socket for Node's default two minutes.
      handshakeTimeout: 10_000,
    }),
    clientOptions: (expectedReplicaId) => ({
      secureContext: current.context,
      minVersion: MIN_VERSION,
      rejectUnauthorized: true,
      ...(spiffeTemplate !== undefined ? { checkServerIdentity: logged(spiffeServerCheck(spiffeTemplate, expectedReplicaId)) } : {}),
    }),
    onReload(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    fingerprint256: () => current.fingerprint256,
    reload,
    close() {
      clearInterval(timer);
      listeners.clear();
    },
  };
}

/**
 * With SPIFFE identities certificates usually carry no DNS or IP name at all, so the host name check
 * is replaced: the server must hold a certificate from our CA with the SPIFFE id of the very replica
 * the connection means to reach (the one registered at the peer URL dialled), so that a replica, or
 * anyone holding a replica's key, cannot answer in another's place at an address it took over.
 */
export function spiffeServerCheck(template: string, expectedReplicaId: string | undefined): (host: string, cert: tls.PeerCertificate) => Error | undefined {
  const want = expectedReplicaId === undefined ? undefined : spiffeIdFor(template, expectedReplicaId);
  return (host, cert) => {
    if (want === undefined) return new PeerServerIdentityError(`no replica is known to be registered at ${host}; not trusting whoever answers there`);
    if (uriSans(cert.subjectaltname).includes(want)) return undefined;
    const got = uriSans(cert.subjectaltname).join(', ') || 'no URI SAN';
    return new PeerServerIdentityError(`peer at ${host} presented ${got}, not ${want} (the replica registered there)`);
  };
}

/** The server of a peer connection is not the replica this sidecar meant to reach. */
export class PeerServerIdentityError extends Error {
  readonly code = 'ERR_OHS_PEER_IDENTITY';
  constructor(message: string) {
    super(message);
    this.name = 'PeerServerIdentityError';
  }
}

function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/**
 * The startup warning for peer traffic that crosses a network in cleartext (forwarded client tokens
 * and the peer secret readable on the wire), or undefined when there is none to give.
 */
export function cleartextPeerWarning(config: { mode: string; peerTls?: PeerTlsConfig; peerListen: string }, peerListenHost: string): string | undefined {
  if (config.mode !== 'cluster' || config.peerTls !== undefined || isLoopbackHost(peerListenHost)) return undefined;
  return (
    `peer traffic is cleartext h2c on ${config.peerListen}, which is not a loopback address: forwarded requests, ` +
    'their tokens and the peer secret can be read and replayed by anyone on the network path. Turn on peer mTLS ' +
    '(--peer-tls-cert, --peer-tls-key, --peer-tls-ca) or keep the peer network private (NetworkPolicy)'
  );
}
