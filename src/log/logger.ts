// The one pino root logger. Connections get children (`conn`, `class`, `sandbox`, `target`);
// errors go under `err`; tokens, authorization headers and the peer secret never reach the output.

import pino from 'pino';
import type { DestinationStream, Logger } from 'pino';
import type { LogLevel } from '../config/schema.ts';

export type { Logger } from 'pino';

export const SERVICE_NAME = 'openshell-ha-sidecar';

export const REDACTED = '[redacted]';

/**
 * Paths redacted in every log line. Bearer JWTs and SSH session tokens (reference §2.1, §2.3)
 * grant access to sandboxes; the peer secret grants access to every replica's peer port.
 */
export const REDACT_PATHS: readonly string[] = [
  'token',
  '*.token',
  'authorization',
  '*.authorization',
  'peerSecret',
  '*.peerSecret',
  'headers.authorization',
  'headers["x-sandbox-token"]',
  'headers["x-ohs-peer-auth"]',
  'req.headers.authorization',
  'req.headers["x-sandbox-token"]',
  'req.headers["x-ohs-peer-auth"]',
  '*.headers.authorization',
  '*.headers["x-sandbox-token"]',
  '*.headers["x-ohs-peer-auth"]',
];

export interface CreateLoggerOptions {
  level: LogLevel;
  /** Where lines go; stdout when absent. Tests pass a stream to capture lines. */
  destination?: DestinationStream;
  /** Extra fields on every line, e.g. `{ replica: cfg.replicaId }`. */
  base?: Record<string, unknown>;
}

export function createLogger(options: CreateLoggerOptions): Logger {
  return pino(
    {
      level: options.level,
      base: { service: SERVICE_NAME, ...options.base },
      errorKey: 'err',
      serializers: { err: pino.stdSerializers.err },
      redact: { paths: [...REDACT_PATHS], censor: REDACTED },
      formatters: { level: (label) => ({ level: label }) },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    options.destination,
  );
}

type Bindings = Record<string, unknown>;
const LEVEL_METHODS = new Set(['trace', 'debug', 'info', 'warn', 'error', 'fatal']);
const noop = (): void => undefined;

/**
 * `parent.child(bindings)`, created only when something is actually logged through it. pino
 * serializes a child's bindings (and sets up redaction) when the child is made, which per request
 * or per stream is work on the hot path at info level, where most requests log nothing at all.
 * Calls at a level that is off cost nothing; children of a lazy child stay lazy.
 */
export function lazyChild(parent: Logger, bindings: Bindings): Logger {
  let real: Logger | undefined;
  const materialize = (): Logger => (real ??= parent.child(bindings));
  return new Proxy(parent, {
    get(_target, prop) {
      if (real === undefined) {
        if (prop === 'child') {
          return (more: Bindings, options?: object): Logger =>
            options === undefined ? lazyChild(parent, { ...bindings, ...more }) : materialize().child(more, options);
        }
        if (typeof prop === 'string' && LEVEL_METHODS.has(prop) && !parent.isLevelEnabled(prop)) return noop;
      }
      const logger = materialize();
      const value: unknown = Reflect.get(logger, prop, logger);
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(logger) : value;
    },
    set(_target, prop, value) {
      return Reflect.set(materialize(), prop, value);
    },
  });
}
