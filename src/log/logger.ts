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

/**
 * Log bytes held in memory while stdout is not taking them; past it, lines are dropped and counted.
 * A sidecar writes a few lines per supervisor connect, so a burst of 10,000 reconnecting supervisors
 * writes ~10 MB at once.
 */
export const LOG_BUFFER_MAX_BYTES = 16 * 1024 * 1024;

let dropped = 0;

/** Lines dropped so far because stdout was not read fast enough (see `stdoutDestination`). */
export function droppedLogLines(): number {
  return dropped;
}

/**
 * stdout, written from a bounded in-memory buffer. pino's default destination writes asynchronously
 * from a buffer without a bound: while the pipe is full (a stalled log collector, a launcher that
 * reads late) every line is kept, and memory grows for as long as the stall lasts. Here it holds
 * up to LOG_BUFFER_MAX_BYTES; past that, lines are dropped and counted
 * (`ohs_log_lines_dropped_total`), and a warning a second later says how many. What is buffered
 * is written out when the process exits.
 */
function stdoutDestination(logger: () => Logger | undefined): DestinationStream {
  const dest = pino.destination({ dest: 1, sync: false, maxLength: LOG_BUFFER_MAX_BYTES });
  let streak: { lines: number; bytes: number } | undefined;
  dest.on('drop', (data: string | Buffer) => {
    const bytes = typeof data === 'string' ? Buffer.byteLength(data) : data.length;
    dropped++;
    if (streak !== undefined) {
      streak.lines++;
      streak.bytes += bytes;
      return;
    }
    streak = { lines: 1, bytes };
    // Reported after a second, from the counts then: if the warning is dropped too, the streak goes on.
    setTimeout(() => {
      const report = streak;
      streak = undefined;
      logger()?.warn({ droppedLines: report?.lines, droppedBytes: report?.bytes, bufferBytes: LOG_BUFFER_MAX_BYTES }, 'log lines dropped: stdout was not read fast enough');
    }, 1000).unref();
  });
  return dest;
}

export function createLogger(options: CreateLoggerOptions): Logger {
  const made: { root?: Logger } = {};
  const root = pino(
    {
      level: options.level,
      base: { service: SERVICE_NAME, ...options.base },
      errorKey: 'err',
      serializers: { err: pino.stdSerializers.err },
      redact: { paths: [...REDACT_PATHS], censor: REDACTED },
      formatters: { level: (label) => ({ level: label }) },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    options.destination ?? stdoutDestination(() => made.root),
  );
  made.root = root;
  return root;
}

type Bindings = Record<string, unknown>;
const LEVEL_METHODS = new Set(['trace', 'debug', 'info', 'warn', 'error', 'fatal']);
const noop = (): void => undefined;

/** What a lazy child holds: its parent, its bindings, and the real child once one was needed. */
interface LazyState {
  parent: Logger;
  bindings: Bindings;
  real: Logger | undefined;
}

const materialize = (state: LazyState): Logger => (state.real ??= state.parent.child(state.bindings));
const LAZY_STATE = Symbol('lazy logger state');

/**
 * A line through a lazy child that was never made: the parent writes it with the child's bindings
 * merged into the line's object, which prints what the child would have printed. No child is kept,
 * so a session that logs once (a supervisor's claim) holds no pino child for its whole life.
 */
function writeMerged(state: LazyState, level: string, args: unknown[]): void {
  const write = (state.parent as unknown as Record<string, (...a: unknown[]) => void>)[level] as (...a: unknown[]) => void;
  const [first, ...rest] = args;
  if (first instanceof Error) {
    // pino takes the message from an error logged alone.
    write.call(state.parent, Object.assign({}, state.bindings, { err: first }), ...(rest.length > 0 ? rest : [first.message]));
  } else if (first !== null && typeof first === 'object') {
    write.call(state.parent, Object.assign({}, state.bindings, first as Bindings), ...rest);
  } else {
    write.call(state.parent, state.bindings, ...args);
  }
}

/** One handler for every lazy child: per request there is only the state object and the proxy. */
const LAZY_HANDLER: ProxyHandler<LazyState> = {
  get(state, prop) {
    if (prop === LAZY_STATE) return state;
    if (state.real === undefined) {
      // A child's level is its parent's until someone sets it (which makes the child).
      if (prop === 'isLevelEnabled' || prop === 'level') {
        const value: unknown = Reflect.get(state.parent, prop, state.parent);
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(state.parent) : value;
      }
      if (prop === 'child') {
        return (more: Bindings, options?: object): Logger =>
          options === undefined ? lazyChild(state.parent, Object.assign({}, state.bindings, more)) : materialize(state).child(more, options);
      }
      if (typeof prop === 'string' && LEVEL_METHODS.has(prop)) {
        if (!state.parent.isLevelEnabled(prop)) return noop;
        return (...args: unknown[]): void => writeMerged(state, prop, args);
      }
    }
    const logger = materialize(state);
    const value: unknown = Reflect.get(logger, prop, logger);
    return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(logger) : value;
  },
  set(state, prop, value) {
    return Reflect.set(materialize(state), prop, value);
  },
};

/**
 * `parent.child(bindings)` without the child: pino serializes a child's bindings (and sets up
 * redaction) when the child is made, work on the hot path per request or per stream, and a child
 * kept for a long-lived stream is memory held for its whole life. Lines go through the parent with
 * the bindings merged in; calls at a level that is off cost nothing; children of a lazy child stay
 * lazy. A real child is made only for what lines do not need (another level, `bindings()`).
 */
export function lazyChild(parent: Logger, bindings: Bindings): Logger {
  const outer = (parent as unknown as { [LAZY_STATE]?: LazyState })[LAZY_STATE];
  // A lazy child of a lazy child that was never made: one child of the nearest real logger. The
  // bindings are merged with Object.assign: a spread of two objects costs V8 (Node 20) ~4x as much.
  const state: LazyState =
    outer !== undefined && outer.real === undefined ? { parent: outer.parent, bindings: Object.assign({}, outer.bindings, bindings), real: undefined } : { parent, bindings, real: undefined };
  return new Proxy<LazyState>(state, LAZY_HANDLER) as unknown as Logger;
}
