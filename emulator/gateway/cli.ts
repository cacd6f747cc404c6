// One gateway emulator replica as a process (used by the cluster launcher and dev-cluster).
// Prints one JSON line {"event":"ready",...} on stdout once listening.
import { parseArgs } from 'node:util';
import pino from 'pino';
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
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'tls-client-ca': { type: 'string' },
      'heartbeat-interval-secs': { type: 'string', default: '15' },
      'log-level': { type: 'string', default: 'info' },
    },
  });
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
  const gateway = await startGateway({
    databaseUrl,
    replica: values.replica ?? 'gateway',
    host: values.host ?? '127.0.0.1',
    port: Number(values.port),
    healthPort: Number(values['health-port']),
    heartbeatIntervalSecs: Number(values['heartbeat-interval-secs']),
    logger,
    ...(tlsOpts ? { tls: tlsOpts } : {}),
  });
  process.stdout.write(
    `${JSON.stringify({ event: 'ready', role: 'gateway', replica: gateway.replica, port: gateway.port, healthPort: gateway.healthPort, pid: process.pid })}\n`,
  );
  const shutdown = (): void => {
    void gateway.close().finally(() => process.exit(0));
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
}
