// openshell-ha-sidecar CLI: runs the sidecar. The local dev cluster lives with the emulators (emulator/main.ts).
import { runInject } from './cli/inject.ts';
import { loadConfig, describeConfig } from './config/load.ts';
import { isOhsError } from './errors.ts';
import { registerMemorySaverMetrics, startMemorySaver } from './memory-saver.ts';
import { missingNodeFlags } from './node-flags.ts';
import { applyNodePatches } from './node-patches.ts';
import { createLogger } from './log/logger.ts';
import { startSidecar, VERSION } from './sidecar.ts';
import { startConfiguredTracing } from './tracing/tracing.ts';
import { runExplain } from './cli/explain.ts';
import { runStatus } from './cli/status.ts';

async function runSidecar(argv: string[]): Promise<void> {
  let config;
  try {
    config = loadConfig({ argv, env: process.env });
  } catch (err) {
    console.error(`openshell-ha-sidecar: ${isOhsError(err) ? err.message : String(err)}`);
    process.exit(2);
  }
  const logger = createLogger({ level: config.logLevel, base: { replica: config.replicaId } });
  if (config.mode === 'embedded') {
    logger.warn('no database configured: running in embedded single-replica mode with an in-memory ownership store and local limits');
  }
  logger.info({ config: describeConfig(config) }, 'starting');
  const missing = missingNodeFlags();
  if (missing.length > 0) {
    logger.info({ missing }, 'node started without the node flags of the image');
  }
  const patched = applyNodePatches();
  if (patched.length > 0) logger.info({ patched }, 'node library patched (src/node-patches.ts): upstream streams die young instead of surviving to a full collection');
  const memorySaver = startMemorySaver({
    mode: config.memorySaverMode,
    onSwitch: (on, why, detail) => logger.debug({ on, why, ...detail }, 'node memory saver mode switched'),
  });
  if (!memorySaver.supported && config.memorySaverMode === 'on') {
    logger.warn({ v8: process.versions.v8 }, 'memory saver mode asked for, but this V8 has none (V8 13 and later)');
  }
  const tracing = await startConfiguredTracing(config, VERSION);
  if (tracing) logger.info({ otlpTracesUrl: config.otlpTracesUrl }, 'tracing on: spans exported over OTLP/HTTP');
  const sidecar = await startSidecar(config, logger);
  registerMemorySaverMetrics(sidecar.metrics.registry, memorySaver);
  const ready = {
    event: 'ready',
    mode: config.mode,
    replicaId: config.replicaId,
    listenPort: sidecar.ports.public,
    peerPort: sidecar.ports.peer,
    adminPort: sidecar.ports.admin,
    peerUrl: sidecar.peerUrl,
    gateway: config.gatewayUrl,
    pid: process.pid,
  };
  logger.info(ready, 'sidecar ready');
  // Launchers wait for this line whatever the log level is.
  if (!logger.isLevelEnabled('info')) process.stdout.write(`${JSON.stringify(ready)}\n`);
  let stopping = false;
  const stop = (signal: string, exitCode = 0): void => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down: draining first');
    const force = setTimeout(() => process.exit(exitCode || 1), config.shutdownGraceMs);
    force.unref();
    void sidecar
      .drain(signal)
      .catch((err: unknown) => logger.warn({ err }, 'drain failed'))
      .then(() => sidecar.close())
      .then(async () => {
        await tracing?.shutdown();
        logger.info('stopped');
        process.exit(exitCode);
      });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // Last resort. A rejected promise nobody handled is a bug in one request's path: it is logged and
  // counted, and the process carries on serving everyone else. An uncaught exception may have left
  // shared state half-updated: the replica drains (its sessions move to the other replicas) and
  // exits non-zero so that it is restarted.
  process.on('unhandledRejection', (reason) => {
    sidecar.metrics.internalErrorsTotal.inc({ kind: 'unhandled_rejection' });
    logger.error({ err: reason }, 'unhandled promise rejection (bug): the request it belonged to may have been left without an answer');
  });
  process.on('uncaughtException', (err) => {
    sidecar.metrics.internalErrorsTotal.inc({ kind: 'uncaught_exception' });
    logger.fatal({ err }, 'uncaught exception (bug): draining and exiting');
    stop('uncaughtException', 70);
  });
}

async function main(): Promise<void> {
  const [cmd] = process.argv.slice(2);
  if (cmd === 'inject') {
    process.exitCode = await runInject(process.argv.slice(3));
    return;
  }
  if (cmd === 'help' || cmd === '--help' || cmd === '-h') {
    console.error(
      'usage: openshell-ha-sidecar [--listen host:port] [--gateway url] [--peer-listen host:port] [--peer-url url]\n' +
        '                            [--admin-listen host:port] [--database-url url] [--redis-url url] [--replica-id id] ...\n' +
        '       openshell-ha-sidecar inject [--mode native|native-alias|container] ... < rendered.yaml   (Helm post-renderer; inject --help)\n' +
        '       openshell-ha-sidecar status [--json] [--admin http://host:port]   the cluster as a table (exit 1 when unhealthy)\n' +
        '       openshell-ha-sidecar explain SANDBOX [--json] [--admin http://host:port]   why requests for a sandbox go where they go',
    );
    return;
  }
  // Operator commands (docs/operations.md); anything else starts the sidecar.
  if (cmd === 'status' || cmd === 'explain') {
    process.exitCode = await (cmd === 'status' ? runStatus : runExplain)(process.argv.slice(3));
    return;
  }
  await runSidecar(process.argv.slice(2));
}

main().catch((err: unknown) => {
  console.error('openshell-ha-sidecar: fatal:', err);
  process.exit(1);
});
