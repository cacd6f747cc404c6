// Handler plumbing for the 2026-08 gateway: every handler authenticates first (reference §2.1 HEAD;
// the router runs before any handler side effect) and maps GatewayError to its gRPC status.
import {
  status as Status,
  type Metadata,
  type ServerUnaryCall,
  type ServerReadableStream,
  type sendUnaryData,
} from '@grpc/grpc-js';
import { GatewayError } from '../registry.ts';
import { authenticate, type Principal } from './auth.ts';
import type { Gen2Context } from './context.ts';

export type ServiceError = { code: Status; details: string; message: string };

export function toServiceError(err: unknown): ServiceError {
  if (err instanceof GatewayError) return { code: err.code, details: err.message, message: err.message };
  const message = err instanceof Error ? err.message : String(err);
  return { code: Status.INTERNAL, details: message, message };
}

/** tonic 0.14's `Code::description()`: what `{status}` prints for each code. */
const TONIC_DESCRIPTIONS: Record<number, string> = {
  [Status.OK]: 'The operation completed successfully',
  [Status.CANCELLED]: 'The operation was cancelled',
  [Status.UNKNOWN]: 'Unknown error',
  [Status.INVALID_ARGUMENT]: 'Client specified an invalid argument',
  [Status.DEADLINE_EXCEEDED]: 'Deadline expired before operation could complete',
  [Status.NOT_FOUND]: 'Some requested entity was not found',
  [Status.ALREADY_EXISTS]: 'Some entity that we attempted to create already exists',
  [Status.PERMISSION_DENIED]: 'The caller does not have permission to execute the specified operation',
  [Status.RESOURCE_EXHAUSTED]: 'Some resource has been exhausted',
  [Status.FAILED_PRECONDITION]: "The system is not in a state required for the operation's execution",
  [Status.ABORTED]: 'The operation was aborted',
  [Status.OUT_OF_RANGE]: 'Operation was attempted past the valid range',
  [Status.UNIMPLEMENTED]: 'Operation is not implemented or not supported',
  [Status.INTERNAL]: 'Internal error',
  [Status.UNAVAILABLE]: 'The service is currently unavailable',
  [Status.DATA_LOSS]: 'Unrecoverable data loss or corruption',
  [Status.UNAUTHENTICATED]: 'The request does not have valid authentication credentials',
};

/** Rust's `{:?}` of a str: double quotes, with `"`, `\\` and control characters escaped. */
function rustDebugStr(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0) ?? 0;
    if (ch === '"' || ch === '\\') out += `\\${ch}`;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (c < 0x20 || c === 0x7f) out += `\\u{${c.toString(16)}}`;
    else out += ch;
  }
  return `${out}"`;
}

/**
 * tonic 0.14's `Display` of a Status (`code: '<description>', message: "<message>"`), which upstream
 * embeds when it wraps one error in another, e.g. `supervisor relay failed: {e}` (grpc/sandbox.rs@v0.0.111:1206).
 */
export function tonicStatusDisplay(code: Status, message: string): string {
  const head = `code: '${TONIC_DESCRIPTIONS[code] ?? 'Unknown error'}'`;
  return message ? `${head}, message: ${rustDebugStr(message)}` : head;
}

export function invalid(message: string): GatewayError {
  return new GatewayError(Status.INVALID_ARGUMENT, message);
}

export function unaryRpc<Req, Res>(ctx: Gen2Context, method: string, fn: (req: Req, principal: Principal | null) => Promise<Res>) {
  return (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>): void => {
    authenticate(ctx.auth, call.metadata, method)
      .then((principal) => fn(call.request, principal))
      .then(
        (res) => cb(null, res),
        (err: unknown) => {
          if (!(err instanceof GatewayError)) ctx.logger.warn({ err, method }, 'handler failed');
          cb(toServiceError(err));
        },
      );
  };
}

interface StreamCall {
  metadata: Metadata;
  on(event: 'error', fn: (err: Error) => void): unknown;
  emit(event: 'error', err: ServiceError): boolean;
}

/** Server-streaming and bidi handlers: an auth failure or a thrown GatewayError ends the call with its status. */
export function streamRpc<C extends StreamCall>(ctx: Gen2Context, method: string, fn: (call: C, principal: Principal | null) => Promise<void> | void) {
  return (call: C): void => {
    // A cancelled call must not surface as an unhandled 'error' event.
    call.on('error', () => undefined);
    authenticate(ctx.auth, call.metadata, method)
      .then((principal) => fn(call, principal))
      .catch((err: unknown) => {
        if (!(err instanceof GatewayError)) ctx.logger.warn({ err, method }, 'handler failed');
        call.emit('error', toServiceError(err));
      });
  };
}

export function clientStreamRpc<Req, Res>(
  ctx: Gen2Context,
  method: string,
  fn: (call: ServerReadableStream<Req, Res>, principal: Principal | null) => Promise<Res>,
) {
  return (call: ServerReadableStream<Req, Res>, cb: sendUnaryData<Res>): void => {
    call.on('error', () => undefined);
    authenticate(ctx.auth, call.metadata, method)
      .then((principal) => fn(call, principal))
      .then(
        (res) => cb(null, res),
        (err: unknown) => cb(toServiceError(err)),
      );
  };
}

/** Resolves with `p`, or rejects with `onTimeout()` after `ms`. */
export function withTimeout<T>(p: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(onTimeout()), ms);
    t.unref();
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}
