// One gateway emulator replica as a process (used by the cluster launcher and dev-cluster).
// Prints one JSON line {"event":"ready",...} on stdout once listening.
import { parseArgs } from 'node:util';
import pino from 'pino';
import { parseProtocol } from '../proto.ts';
import { startGateway } from './server.ts';

export async function runGatewayEmulator(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      'database-url': { type: 'string' },
      replica: { type: 'string', default: 'gateway' },
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '0' },
      'health-port': { type: 'string', default: '0' },
      // Health listener address when it differs from --host (upstream HEAD: TOML health_bind_address 0.0.0.0:8081).
      'health-host': { type: 'string' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'tls-client-ca': { type: 'string' },
      'heartbeat-interval-secs': { type: 'string', default: '15' },
      'log-level': { type: 'string', default: 'info' },
      // Protocol generation: 2026-04 (seed, default) or 2026-08 (upstream v0.0.111).
      protocol: { type: 'string', default: '2026-04' },
      // 2026-08: sandbox JWT key directory (signing.pem, public.pem, kid), gateway id, token TTL.
      'jwt-key-dir': { type: 'string' },
      'gateway-id': { type: 'string' },
      'sandbox-jwt-ttl-secs': { type: 'string' },
      // 2026-08: base domain of sandbox service hosts (repeatable; default openshell.localhost).
      'service-base-domain': { type: 'string', multiple: true },
      // 2026-08: refuse calls without a bearer instead of treating them as the local dev user.
      'require-user-auth': { type: 'boolean', default: false },
      // 2026-08 reconciler lease: holder id (default OPENSHELL_REPLICA_ID, else HOSTNAME, else a random
      // UUID) and timings in seconds, fractions allowed (defaults upstream's 30 / 10 / 5 / 60).
      'replica-id': { type: 'string' },
      'lease-ttl-secs': { type: 'string' },
      'lease-renew-secs': { type: 'string' },
      'lease-acquire-secs': { type: 'string' },
      'reconcile-interval-secs': { type: 'string' },
      // How long a call waits for the sandbox's supervisor session (default upstream's 30 s).
      'session-wait-secs': { type: 'string' },
    },
  });
  const secs = (flag: 'lease-ttl-secs' | 'lease-renew-secs' | 'lease-acquire-secs' | 'reconcile-interval-secs' | 'session-wait-secs'): number | undefined => {
    const raw = values[flag];
    if (raw === undefined) return undefined;
    const n = Number(raw);
    if (!Number.isFinite(n) || n < 0) {
      console.error(`gateway emulator: --${flag} must be a number of seconds`);
      process.exit(2);
    }
    return Math.round(n * 1000);
  };
  const leaseTimings = {
    ...(secs('lease-ttl-secs') === undefined ? {} : { ttlMs: secs('lease-ttl-secs') }),
    ...(secs('lease-renew-secs') === undefined ? {} : { renewMs: secs('lease-renew-secs') }),
    ...(secs('lease-acquire-secs') === undefined ? {} : { acquireMs: secs('lease-acquire-secs') }),
    ...(secs('reconcile-interval-secs') === undefined ? {} : { reconcileIntervalMs: secs('reconcile-interval-secs') }),
  };
  const databaseUrl = values['database-url'] ?? process.env.OPENSHELL_DB_URL;
  if (!databaseUrl) {
    console.error('gateway emulator: --database-url is required');
    process.exit(2);
  }
  const logger = pino({ level: values['log-level'] ?? 'info', base: { component: 'gateway-emulator' } }, pino.destination(2));
  const tlsOpts =
    values['tls-cert'] && values['tls-key']
      ? { certFile: values['tls-cert'], keyFile: values['tls-key'], ...(values['tls-client-ca'] ? { clientCaFile: values['tls-client-ca'] } : {}) }
      : undefined;
  let protocol;
  try {
    protocol = parseProtocol(values.protocol);
  } catch (err) {
    console.error(`gateway emulator: ${(err as Error).message}`);
    process.exit(2);
  }
  const gateway = await startGateway({
    protocol,
    ...(values['jwt-key-dir'] ? { jwtKeyDir: values['jwt-key-dir'] } : {}),
    ...(values['gateway-id'] ? { gatewayId: values['gateway-id'] } : {}),
    ...(values['sandbox-jwt-ttl-secs'] ? { sandboxJwtTtlSecs: Number(values['sandbox-jwt-ttl-secs']) } : {}),
    ...(values['service-base-domain'] ? { serviceBaseDomains: values['service-base-domain'] } : {}),
    allowUnauthenticatedUsers: !values['require-user-auth'],
    ...(values['replica-id'] !== undefined ? { replicaId: values['replica-id'] } : {}),
    lease: leaseTimings,
    databaseUrl,
    replica: values.replica ?? 'gateway',
    host: values.host ?? '127.0.0.1',
    port: Number(values.port),
    healthPort: Number(values['health-port']),
    ...(values['health-host'] ? { healthHost: values['health-host'] } : {}),
    heartbeatIntervalSecs: Number(values['heartbeat-interval-secs']),
    ...(secs('session-wait-secs') === undefined ? {} : { sessionWaitMs: secs('session-wait-secs') }),
    logger,
    ...(tlsOpts ? { tls: tlsOpts } : {}),
  });
  process.stdout.write(
    `${JSON.stringify({ event: 'ready', role: 'gateway', protocol: gateway.protocol, replica: gateway.replica, ...(gateway.gen2 ? { replicaId: gateway.gen2.reconciler.replicaId } : {}), port: gateway.port, healthPort: gateway.healthPort, pid: process.pid })}\n`,
  );
  const shutdown = (): void => {
    void gateway.close().finally(() => process.exit(0));
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
}
