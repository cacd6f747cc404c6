import { describe, expect, it } from 'vitest';
import {
  GrpcStatus,
  OHS_ERROR_CODES,
  OhsError,
  grpcStatusFor,
  httpStatusFor,
  isOhsError,
  isOhsErrorCode,
  toOhsError,
} from '../../src/errors.ts';
import type { OhsErrorCode } from '../../src/errors.ts';

describe('OhsError', () => {
  it('carries a stable code, a cause and details', () => {
    const cause = new Error('socket hang up');
    const err = new OhsError('OHS_ERR_UPSTREAM', 'gateway unreachable', { cause, details: { target: 'local' } });
    expect(err).toBeInstanceOf(Error);
    expect(err.name).toBe('OhsError');
    expect(err.code).toBe('OHS_ERR_UPSTREAM');
    expect(err.message).toBe('gateway unreachable');
    expect(err.cause).toBe(cause);
    expect(err.details).toEqual({ target: 'local' });
    expect(isOhsError(err)).toBe(true);
    expect(isOhsError(cause)).toBe(false);
  });

  it('has no cause property when none was given', () => {
    expect('cause' in new OhsError('OHS_ERR_LIMIT', 'too many')).toBe(false);
  });

  it('recognises its own codes', () => {
    expect(isOhsErrorCode('OHS_ERR_NOT_OWNER')).toBe(true);
    expect(isOhsErrorCode('OHS_ERR_NOPE')).toBe(false);
    expect(isOhsErrorCode(3)).toBe(false);
  });
});

describe('status mapping', () => {
  const cases: Array<[OhsErrorCode, number, number]> = [
    ['OHS_ERR_LIMIT', 429, GrpcStatus.RESOURCE_EXHAUSTED],
    ['OHS_ERR_MALFORMED_MESSAGE', 400, GrpcStatus.INVALID_ARGUMENT],
    ['OHS_ERR_MESSAGE_TOO_LARGE', 400, GrpcStatus.INVALID_ARGUMENT],
    ['OHS_ERR_MISSING_ROUTING_KEY', 400, GrpcStatus.INVALID_ARGUMENT],
    ['OHS_ERR_BAD_REQUEST', 400, GrpcStatus.INVALID_ARGUMENT],
    ['OHS_ERR_PEER_AUTH', 401, GrpcStatus.UNAUTHENTICATED],
    ['OHS_ERR_NO_OWNER', 502, GrpcStatus.UNAVAILABLE],
    ['OHS_ERR_PEER_UNAVAILABLE', 502, GrpcStatus.UNAVAILABLE],
    ['OHS_ERR_UPSTREAM', 502, GrpcStatus.UNAVAILABLE],
    ['OHS_ERR_NOT_OWNER', 421, GrpcStatus.UNAVAILABLE],
    ['OHS_ERR_HOP_LIMIT', 508, GrpcStatus.INTERNAL],
    ['OHS_ERR_TIMEOUT', 504, GrpcStatus.DEADLINE_EXCEEDED],
    ['OHS_ERR_STORE_UNAVAILABLE', 503, GrpcStatus.UNAVAILABLE],
    ['OHS_ERR_OVERLOADED', 503, GrpcStatus.UNAVAILABLE],
    ['OHS_ERR_INTERNAL', 500, GrpcStatus.INTERNAL],
    ['OHS_ERR_CONFIG', 500, GrpcStatus.INTERNAL],
  ];

  it.each(cases)('%s maps to HTTP %i and gRPC %i', (code, http, grpc) => {
    const err = new OhsError(code, 'x');
    expect(httpStatusFor(err)).toBe(http);
    expect(grpcStatusFor(err)).toBe(grpc);
  });

  it('covers every code', () => {
    expect(cases.map(([code]) => code).sort()).toEqual([...OHS_ERROR_CODES].sort());
  });

  it('a connection-limit refusal uses the same statuses as the gateway (429 / RESOURCE_EXHAUSTED)', () => {
    expect(httpStatusFor(new OhsError('OHS_ERR_LIMIT', 'per-token limit'))).toBe(429);
    expect(grpcStatusFor(new OhsError('OHS_ERR_LIMIT', 'per-token limit'))).toBe(8);
  });

  it('treats foreign errors as internal', () => {
    expect(httpStatusFor(new TypeError('boom'))).toBe(500);
    expect(grpcStatusFor('boom')).toBe(GrpcStatus.INTERNAL);
  });
});

describe('toOhsError', () => {
  it('passes an OhsError through unchanged', () => {
    const err = new OhsError('OHS_ERR_NOT_OWNER', 'moved');
    expect(toOhsError(err)).toBe(err);
  });

  it('wraps a plain Error as internal with the original as cause', () => {
    const cause = new RangeError('bad');
    const err = toOhsError(cause);
    expect(err.code).toBe('OHS_ERR_INTERNAL');
    expect(err.message).toBe('bad');
    expect(err.cause).toBe(cause);
  });

  it('uses the caller-supplied fallback code', () => {
    const cause = Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
    expect(toOhsError(cause, 'OHS_ERR_UPSTREAM').code).toBe('OHS_ERR_UPSTREAM');
  });

  it('recognises timeouts and aborts', () => {
    expect(toOhsError(Object.assign(new Error('t'), { code: 'ETIMEDOUT' })).code).toBe('OHS_ERR_TIMEOUT');
    expect(toOhsError(AbortSignal.abort().reason).code).toBe('OHS_ERR_TIMEOUT');
    const timeout = new Error('deadline');
    timeout.name = 'TimeoutError';
    expect(toOhsError(timeout).code).toBe('OHS_ERR_TIMEOUT');
  });

  it('describes non-Error throwables', () => {
    expect(toOhsError('nope').message).toContain('nope');
    expect(toOhsError({ a: 1 }).message).toContain('{"a":1}');
    expect(toOhsError(undefined).code).toBe('OHS_ERR_INTERNAL');
  });
});
