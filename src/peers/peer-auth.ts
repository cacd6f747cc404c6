// Peer mTLS on the peer listener: the verifier of peer identities, its refusals (a bounded metric
// and a rate-limited log), and certificate reloads applied to the listener.
import http2 from 'node:http2';
import type { Logger } from 'pino';
import { Counter, type Registry } from 'prom-client';
import type { PeerTlsConfig } from '../config/schema.ts';
import { createPeerIdentityVerifier, PEER_IDENTITY_REFUSALS, type PeerIdentityRefusal, type PeerIdentityVerifier, type ReplicaRegistry } from './peer-identity.ts';
import type { PeerTlsMaterial } from './peer-tls.ts';
import { PEER_ERROR } from './protocol.ts';

/** Refusal reasons, the closed label set of ohs_peer_identity_refusals_total. */
export type PeerAuthRefusal = PeerIdentityRefusal | 'handshake';

export interface PeerAuth {
  readonly material: PeerTlsMaterial;
  readonly verifier: PeerIdentityVerifier;
  /** Answers a stream whose peer identity did not check out (401 without a certificate, else 403; 503 registry down). */
  refuse(stream: http2.ServerHttp2Stream, origin: unknown, reason: PeerIdentityRefusal): void;
  /** A TLS handshake on the peer port failed (no certificate, an untrusted one, not TLS at all). */
  handshakeFailed(err: Error & { code?: string }): void;
}

export interface PeerAuthOptions {
  config: PeerTlsConfig;
  material: PeerTlsMaterial;
  registry: ReplicaRegistry;
  metricsRegistry: Registry;
  logger: Logger;
}

const STATUS: Record<PeerIdentityRefusal, number> = {
  'no-certificate': 401,
  'bad-origin': 403,
  unregistered: 403,
  mismatch: 403,
  'registry-unavailable': 503,
};

export function createPeerAuth(opts: PeerAuthOptions): PeerAuth {
  const log = opts.logger;
  const refusals = new Counter({
    name: 'ohs_peer_identity_refusals_total',
    help: 'Peer connections or streams refused because the certificate did not name a registered replica (or no valid certificate was shown), by reason.',
    labelNames: ['reason'] as const,
    registers: [opts.metricsRegistry],
  });
  for (const reason of [...PEER_IDENTITY_REFUSALS, 'handshake'] as const) refusals.inc({ reason }, 0);
  const counts = new Map<PeerAuthRefusal, number>();
  // One line per burst and reason, not per stream: a scanner must not flood the log.
  const count = (reason: PeerAuthRefusal): number => {
    const n = (counts.get(reason) ?? 0) + 1;
    counts.set(reason, n);
    refusals.inc({ reason });
    return n;
  };
  const verifier = createPeerIdentityVerifier({
    mode: opts.config.identity ?? 'san',
    ...(opts.config.spiffeIdTemplate === undefined ? {} : { spiffeTemplate: opts.config.spiffeIdTemplate }),
    registry: opts.registry,
    onVerified: (info) => log.info({ origin: info.origin, identity: info.identity, fingerprint: info.fingerprint256 }, 'peer session verified'),
  });
  return {
    material: opts.material,
    verifier,
    refuse(stream, origin, reason) {
      const n = count(reason);
      if (n === 1 || n % 100 === 0) {
        // The claimed origin is logged only when it is a well-formed replica id (bad-origin otherwise).
        log.warn({ reason, origin: reason === 'bad-origin' ? undefined : origin, count: n }, 'peer stream refused: its certificate does not name the replica it claims to be');
      }
      if (stream.destroyed || stream.headersSent) return;
      stream.respond({ ':status': STATUS[reason], [PEER_ERROR]: `peer-identity-${reason}` }, { endStream: true });
      if (!stream.readableEnded) stream.close(http2.constants.NGHTTP2_NO_ERROR);
    },
    handshakeFailed(err) {
      const n = count('handshake');
      if (n === 1 || n % 100 === 0) log.warn({ err: err.code ?? err.message, count: n }, 'peer TLS handshake refused');
    },
  };
}

/** New certificates for new connections; open sessions keep theirs. */
export function watchPeerTls(server: http2.Http2SecureServer, auth: PeerAuth, log: Logger): void {
  const stop = auth.material.onReload((options) => {
    try {
      server.setSecureContext(options);
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'peer listener kept its certificates: the new ones were refused');
    }
  });
  server.once('close', stop);
  server.on('tlsClientError', (err: Error & { code?: string }) => auth.handshakeFailed(err));
}
