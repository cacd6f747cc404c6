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
