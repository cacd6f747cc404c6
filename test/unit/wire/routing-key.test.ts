import { describe, expect, it } from 'vitest';
import { OhsError } from '../../../src/errors.ts';
import type { OhsErrorCode } from '../../../src/errors.ts';
import { extractRoutingKey, sandboxIdProblem, validateSandboxId } from '../../../src/wire/routing-key.ts';
import type { KeyedGrpcClass } from '../../../src/classify/classify.ts';

/** Bytes from numbers and ASCII strings, so fixtures read like the wire. */
function bytes(...parts: Array<number | string | Uint8Array>): Uint8Array {
  return Buffer.concat(
    parts.map((p) => (typeof p === 'number' ? Buffer.from([p]) : typeof p === 'string' ? Buffer.from(p, 'latin1') : p)),
  );
}

function errorOf(fn: () => unknown): OhsError {
  try {
    fn();
  } catch (err) {
    if (err instanceof OhsError) return err;
    throw new Error(`expected OhsError, got ${String(err)}`);
  }
  throw new Error('expected a throw');
}

function expectCode(cls: KeyedGrpcClass, message: Uint8Array, code: OhsErrorCode): OhsError {
  const err = errorOf(() => extractRoutingKey(cls, message));
  expect(err.code).toBe(code);
  return err;
}

const SANDBOX = '3f2b8c1e-9a4d-4e7f-b6a2-5c0d1e2f3a4b'; // 36 bytes = 0x24
const INSTANCE = 'inst'; // 4 bytes

describe('ConnectSupervisor hello', () => {
  it('reads hello.sandbox_id from the bytes prost writes (0A len 0A len id 12 len instance)', () => {
    // outer length = 2 + 36 + 2 + 4 = 44 = 0x2c
    const msg = bytes(0x0a, 0x2c, 0x0a, 0x24, SANDBOX, 0x12, 0x04, INSTANCE);
    expect(extractRoutingKey('supervisor-control', msg)).toEqual({ sandboxId: SANDBOX });
  });

  it('reads the id when instance_id comes before sandbox_id', () => {
    const msg = bytes(0x0a, 0x0a, 0x12, 0x02, 'i1', 0x0a, 0x04, 'sb-1');
    expect(extractRoutingKey('supervisor-control', msg)).toEqual({ sandboxId: 'sb-1' });
  });

  it('skips unknown fields of every wire type before field 1, outside and inside hello', () => {
    const hello = bytes(
      0x28, 0x96, 0x01, // field 5 varint 150
      0x3a, 0x02, 0xaa, 0xbb, // field 7 length-delimited
      0x0a, 0x04, 'sb-1',
    );
    const msg = bytes(
      0x45, 0x01, 0x02, 0x03, 0x04, // field 8 fixed32
      0x49, 1, 2, 3, 4, 5, 6, 7, 8, // field 9 fixed64
      0x53, 0x08, 0x01, 0x54, // field 10 group containing field 1 varint
      0x0a, hello.length, hello,
    );
    expect(extractRoutingKey('supervisor-control', msg)).toEqual({ sandboxId: 'sb-1' });
  });

  it('merges repeated hello messages as protobuf does', () => {
    const msg = bytes(0x0a, 0x06, 0x0a, 0x04, 'sb-1', 0x0a, 0x04, 0x12, 0x02, 'i1');
    expect(extractRoutingKey('supervisor-control', msg)).toEqual({ sandboxId: 'sb-1' });
  });

  it('lets the last sandbox_id win across repeated hellos and within one hello', () => {
    const across = bytes(0x0a, 0x06, 0x0a, 0x04, 'sb-1', 0x0a, 0x06, 0x0a, 0x04, 'sb-2');
    expect(extractRoutingKey('supervisor-control', across)).toEqual({ sandboxId: 'sb-2' });
    const within = bytes(0x0a, 0x0c, 0x0a, 0x04, 'sb-1', 0x0a, 0x04, 'sb-3');
    expect(extractRoutingKey('supervisor-control', within)).toEqual({ sandboxId: 'sb-3' });
  });

  it('refuses a first message that is a heartbeat', () => {
    const err = expectCode('supervisor-control', bytes(0x12, 0x00), 'OHS_ERR_MALFORMED_MESSAGE');
    expect(err.message).toBe('first ConnectSupervisor message must be hello');
  });

  it('refuses a hello overridden by a later oneof member', () => {
    const msg = bytes(0x0a, 0x06, 0x0a, 0x04, 'sb-1', 0x12, 0x00);
    expectCode('supervisor-control', msg, 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('refuses an empty first message', () => {
    expectCode('supervisor-control', bytes(), 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('reports a hello without sandbox_id as a missing routing key', () => {
    expectCode('supervisor-control', bytes(0x0a, 0x04, 0x12, 0x02, 'i1'), 'OHS_ERR_MISSING_ROUTING_KEY');
    expectCode('supervisor-control', bytes(0x0a, 0x00), 'OHS_ERR_MISSING_ROUTING_KEY');
    expectCode('supervisor-control', bytes(0x0a, 0x02, 0x0a, 0x00), 'OHS_ERR_MISSING_ROUTING_KEY');
  });

  it('refuses hello with the wrong wire type', () => {
    const err = expectCode('supervisor-control', bytes(0x08, 0x01), 'OHS_ERR_MALFORMED_MESSAGE');
    expect(err.message).toMatch(/wire type varint/);
  });

  it('refuses sandbox_id with the wrong wire type inside hello', () => {
    expectCode('supervisor-control', bytes(0x0a, 0x02, 0x08, 0x01), 'OHS_ERR_MALFORMED_MESSAGE');
  });
});

describe('RelayStream init', () => {
  it('reads init.channel_id', () => {
    const msg = bytes(0x0a, 0x06, 0x0a, 0x04, 'ch-1');
    expect(extractRoutingKey('supervisor-relay', msg)).toEqual({ channelId: 'ch-1' });
  });

  it('refuses a first frame that carries data', () => {
    const err = expectCode('supervisor-relay', bytes(0x12, 0x03, 'SSH'), 'OHS_ERR_MALFORMED_MESSAGE');
    expect(err.message).toBe('first RelayStream message must be init');
  });

  it('reports an empty channel id as a missing routing key', () => {
    expectCode('supervisor-relay', bytes(0x0a, 0x00), 'OHS_ERR_MISSING_ROUTING_KEY');
  });
});

describe('field-1 requests', () => {
  it.each<KeyedGrpcClass>(['exec', 'logs-get', 'logs-push'])('%s reads sandbox_id', (cls) => {
    expect(extractRoutingKey(cls, bytes(0x0a, 0x04, 'sb-1', 0x12, 0x02, 'ls'))).toEqual({ sandboxId: 'sb-1' });
  });

  it('exec reads sandbox_id written after other fields', () => {
    const msg = bytes(0x12, 0x02, 'ls', 0x38, 0x01, 0x0a, 0x04, 'sb-2');
    expect(extractRoutingKey('exec', msg)).toEqual({ sandboxId: 'sb-2' });
  });

  it('watch reads id', () => {
    const msg = bytes(0x10, 0x01, 0x0a, 0x04, 'sb-4', 0x18, 0x01);
    expect(extractRoutingKey('watch', msg)).toEqual({ sandboxId: 'sb-4' });
  });

  it('the last occurrence of sandbox_id wins', () => {
    expect(extractRoutingKey('exec', bytes(0x0a, 0x01, 'a', 0x0a, 0x01, 'b'))).toEqual({ sandboxId: 'b' });
  });

  it('a log push batch without sandbox_id has no routing key', () => {
    expectCode('logs-push', bytes(0x12, 0x00), 'OHS_ERR_MISSING_ROUTING_KEY');
    expectCode('logs-push', bytes(), 'OHS_ERR_MISSING_ROUTING_KEY');
  });

  it('an explicitly empty sandbox_id has no routing key', () => {
    expectCode('exec', bytes(0x0a, 0x00), 'OHS_ERR_MISSING_ROUTING_KEY');
  });
});

describe('malformed input', () => {
  it('refuses a string cut short', () => {
    const err = expectCode('exec', bytes(0x0a, 0x04, 'sb'), 'OHS_ERR_MALFORMED_MESSAGE');
    expect(err.cause).toBeInstanceOf(Error);
  });

  it('refuses a truncated tag varint', () => {
    expectCode('exec', bytes(0x80), 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('refuses a truncated length varint', () => {
    expectCode('watch', bytes(0x0a, 0x80), 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('refuses a truncated unknown field', () => {
    expectCode('exec', bytes(0x28, 0x80), 'OHS_ERR_MALFORMED_MESSAGE');
    expectCode('exec', bytes(0x45, 0x01, 0x02), 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('refuses a hello whose inner length overruns the outer message', () => {
    expectCode('supervisor-control', bytes(0x0a, 0x06, 0x0a, 0x09, 'sb-1'), 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('refuses field 1 with the wrong wire type', () => {
    const err = expectCode('exec', bytes(0x08, 0x01), 'OHS_ERR_MALFORMED_MESSAGE');
    expect(err.message).toContain('field 1');
    expectCode('watch', bytes(0x0d, 1, 2, 3, 4), 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('refuses invalid UTF-8 in the key', () => {
    expectCode('exec', bytes(0x0a, 0x02, 0xc3, 0x28), 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('refuses field number 0 and stray end-group tags', () => {
    expectCode('exec', bytes(0x02, 0x00), 'OHS_ERR_MALFORMED_MESSAGE');
    expectCode('exec', bytes(0x0c), 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('refuses garbage', () => {
    expectCode('exec', bytes(0xff, 0xff, 0xff, 0xff, 0xff, 0xff), 'OHS_ERR_MALFORMED_MESSAGE');
    expectCode('supervisor-control', bytes('GET / HTTP/1.1\r\n'), 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('refuses a key with characters unfit for a routing key', () => {
    expectCode('exec', bytes(0x0a, 0x03, 'a/b'), 'OHS_ERR_MALFORMED_MESSAGE');
    expectCode('exec', bytes(0x0a, 0x03, 'a b'), 'OHS_ERR_MALFORMED_MESSAGE');
    const long = 'a'.repeat(129);
    expectCode('exec', bytes(0x0a, 0x81, 0x01, long), 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('does not echo the offending id in the error', () => {
    const err = expectCode('exec', bytes(0x0a, 0x07, 'x;$(rm)'), 'OHS_ERR_MALFORMED_MESSAGE');
    expect(err.message).not.toContain('rm');
  });
});

describe('validateSandboxId', () => {
  it('accepts UUIDs and ids up to 128 characters', () => {
    expect(validateSandboxId(SANDBOX)).toBe(SANDBOX);
    expect(validateSandboxId('a'.repeat(128))).toBe('a'.repeat(128));
    expect(validateSandboxId('my_sandbox.v2-1', 'header')).toBe('my_sandbox.v2-1');
  });

  it('reports empty ids as a missing routing key', () => {
    expect(errorOf(() => validateSandboxId('', 'header')).code).toBe('OHS_ERR_MISSING_ROUTING_KEY');
  });

  it('refuses a bad header value as a bad request and a bad message value as malformed', () => {
    expect(errorOf(() => validateSandboxId('ä', 'header')).code).toBe('OHS_ERR_BAD_REQUEST');
    expect(errorOf(() => validateSandboxId('ä', 'message')).code).toBe('OHS_ERR_MALFORMED_MESSAGE');
  });

  it('names the problem', () => {
    expect(sandboxIdProblem('')).toBe('empty');
    expect(sandboxIdProblem('a'.repeat(129))).toBe('too-long');
    expect(sandboxIdProblem('a\u0000')).toBe('invalid-char');
    expect(sandboxIdProblem('ok')).toBeUndefined();
  });
});
