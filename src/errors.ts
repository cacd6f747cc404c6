// One error base class with stable codes, and the one place that maps those codes onto HTTP
// statuses and gRPC codes. Everything the sidecar refuses goes through here, so a client sees
// the same status for the same failure whichever listener or traffic class it came in on.

export const OHS_ERROR_CODES = [
  'OHS_ERR_CONFIG',
  'OHS_ERR_BAD_REQUEST',
  'OHS_ERR_MALFORMED_MESSAGE',
  'OHS_ERR_MESSAGE_TOO_LARGE',
  'OHS_ERR_MISSING_ROUTING_KEY',
  'OHS_ERR_NOT_OWNER',
  'OHS_ERR_NO_OWNER',
  'OHS_ERR_PEER_UNAVAILABLE',
  'OHS_ERR_PEER_AUTH',
  'OHS_ERR_HOP_LIMIT',
  'OHS_ERR_LIMIT',
  'OHS_ERR_UPSTREAM',
  'OHS_ERR_TIMEOUT',
  'OHS_ERR_STORE_UNAVAILABLE',
  'OHS_ERR_OVERLOADED',
  'OHS_ERR_INTERNAL',
] as const;

export type OhsErrorCode = (typeof OHS_ERROR_CODES)[number];

export type OhsErrorDetails = Readonly<Record<string, unknown>>;

export interface OhsErrorOptions {
  cause?: unknown;
  /** Structured context for logs (never secrets or payload bytes). */
  details?: OhsErrorDetails;
}

export class OhsError extends Error {
  readonly code: OhsErrorCode;
  readonly details: OhsErrorDetails | undefined;

  constructor(code: OhsErrorCode, message: string, options: OhsErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'OhsError';
    this.code = code;
    this.details = options.details;
  }
}

export function isOhsError(value: unknown): value is OhsError {
  return value instanceof OhsError;
}

const OHS_CODE_SET: ReadonlySet<string> = new Set(OHS_ERROR_CODES);

export function isOhsErrorCode(value: unknown): value is OhsErrorCode {
  return typeof value === 'string' && OHS_CODE_SET.has(value);
}

/**
 * Turns anything thrown into an OhsError. An OhsError passes through unchanged; timeouts and
 * aborts become OHS_ERR_TIMEOUT; everything else becomes `fallback` (OHS_ERR_INTERNAL unless the
 * caller knows better, e.g. a socket error on the gateway hop is OHS_ERR_UPSTREAM) with the
 * original as `cause`.
 */
export function toOhsError(value: unknown, fallback: OhsErrorCode = 'OHS_ERR_INTERNAL'): OhsError {
  if (value instanceof OhsError) return value;
  if (value instanceof Error) {
    const sysCode = (value as NodeJS.ErrnoException).code;
    if (value.name === 'TimeoutError' || value.name === 'AbortError' || sysCode === 'ETIMEDOUT') {
      return new OhsError('OHS_ERR_TIMEOUT', value.message, { cause: value });
    }
    return new OhsError(fallback, value.message, { cause: value });
  }
  return new OhsError(fallback, `non-error thrown: ${describeThrown(value)}`, { cause: value });
}

function describeThrown(value: unknown): string {
  if (typeof value === 'string') return value;
  if (value === null || value === undefined) return String(value);
  try {
    return JSON.stringify(value) ?? typeof value;
  } catch {
    return typeof value;
  }
}

/** Numeric gRPC status codes (grpc/doc/statuscodes.md); only the ones the sidecar emits. */
export const GrpcStatus = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
} as const;

export type GrpcStatusCode = (typeof GrpcStatus)[keyof typeof GrpcStatus];

interface StatusPair {
  http: number;
  grpc: GrpcStatusCode;
}

// Why each mapping is what it is:
// - CONFIG / INTERNAL: our own fault, never the client's: 500 / INTERNAL.
// - BAD_REQUEST, MALFORMED_MESSAGE, MESSAGE_TOO_LARGE, MISSING_ROUTING_KEY: the client sent
//   something we cannot route; the gateway answers the same class of input with INVALID_ARGUMENT
//   (reference §2.1 step 1: first message not Hello or empty sandbox_id) and 400 (reference §2.3:
//   empty or non-ASCII x-sandbox-id). TOO_LARGE stays INVALID_ARGUMENT rather than
//   RESOURCE_EXHAUSTED so that clients do not mistake it for a connection limit and retry.
// - NOT_OWNER: a peer-to-peer answer ("try elsewhere"). 421 Misdirected Request is exactly that
//   in HTTP. If it ever reaches a client (retry already used), UNAVAILABLE tells gRPC clients the
//   condition is transient, which it is: ownership was moving.
// - NO_OWNER, PEER_UNAVAILABLE, UPSTREAM: nobody can serve the sandbox right now. The gateway
//   itself answers 502 when no supervisor session appears (reference §2.3 step 7) and UNAVAILABLE
//   when the relay cannot be opened (reference §2.3, HEAD step 7), so clients already handle these.
// - PEER_AUTH: the caller on the peer port did not prove it knows the peer secret: 401 /
//   UNAUTHENTICATED (authentication, not authorisation, failed).
// - HOP_LIMIT: replicas disagree about the owner and bounced the request between them. 508 Loop
//   Detected names it; INTERNAL because it means our ownership data is inconsistent, not that the
//   client should change anything.
// - LIMIT: the gateway's own refusal for the same caps: 429 / RESOURCE_EXHAUSTED (reference §0.5).
// - TIMEOUT: 504 / DEADLINE_EXCEEDED, the standard pair for "gave up waiting".
// - STORE_UNAVAILABLE: Postgres or Redis is down and we cannot decide safely: 503 / UNAVAILABLE.
// - OVERLOADED: a bounded queue in front of the store is full (a flood of lookups): 503 /
//   UNAVAILABLE, which gRPC clients treat as transient and retry, as they should; not
//   RESOURCE_EXHAUSTED, which the gateway uses for per-sandbox caps that a retry does not lift.
const STATUS: Readonly<Record<OhsErrorCode, StatusPair>> = {
  OHS_ERR_CONFIG: { http: 500, grpc: GrpcStatus.INTERNAL },
  OHS_ERR_BAD_REQUEST: { http: 400, grpc: GrpcStatus.INVALID_ARGUMENT },
  OHS_ERR_MALFORMED_MESSAGE: { http: 400, grpc: GrpcStatus.INVALID_ARGUMENT },
  OHS_ERR_MESSAGE_TOO_LARGE: { http: 400, grpc: GrpcStatus.INVALID_ARGUMENT },
  OHS_ERR_MISSING_ROUTING_KEY: { http: 400, grpc: GrpcStatus.INVALID_ARGUMENT },
  OHS_ERR_NOT_OWNER: { http: 421, grpc: GrpcStatus.UNAVAILABLE },
  OHS_ERR_NO_OWNER: { http: 502, grpc: GrpcStatus.UNAVAILABLE },
  OHS_ERR_PEER_UNAVAILABLE: { http: 502, grpc: GrpcStatus.UNAVAILABLE },
  OHS_ERR_PEER_AUTH: { http: 401, grpc: GrpcStatus.UNAUTHENTICATED },
  OHS_ERR_HOP_LIMIT: { http: 508, grpc: GrpcStatus.INTERNAL },
  OHS_ERR_LIMIT: { http: 429, grpc: GrpcStatus.RESOURCE_EXHAUSTED },
  OHS_ERR_UPSTREAM: { http: 502, grpc: GrpcStatus.UNAVAILABLE },
  OHS_ERR_TIMEOUT: { http: 504, grpc: GrpcStatus.DEADLINE_EXCEEDED },
  OHS_ERR_STORE_UNAVAILABLE: { http: 503, grpc: GrpcStatus.UNAVAILABLE },
  OHS_ERR_OVERLOADED: { http: 503, grpc: GrpcStatus.UNAVAILABLE },
  OHS_ERR_INTERNAL: { http: 500, grpc: GrpcStatus.INTERNAL },
};

/** HTTP status for anything thrown (normalised with `toOhsError`, so unknown errors are 500). */
export function httpStatusFor(err: unknown): number {
  return STATUS[codeOf(err)].http;
}

/** Numeric gRPC status for anything thrown (normalised with `toOhsError`, so unknown errors are INTERNAL). */
export function grpcStatusFor(err: unknown): GrpcStatusCode {
  return STATUS[codeOf(err)].grpc;
}

function codeOf(err: unknown): OhsErrorCode {
  return toOhsError(err).code;
}
