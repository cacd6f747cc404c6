import { describe, expect, it } from 'vitest';
import { OhsError } from '../../../src/errors.ts';
import type { OhsErrorCode } from '../../../src/errors.ts';
import { extractRoutingKey, sandboxIdProblem, validateSandboxId } from '../../../src/wire/routing-key.ts';
import { methodNamed } from '../../../src/classify/classify.ts';

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

/** The routing key of `message` as the first message of `method`. */
function key(method: string, message: Uint8Array): ReturnType<typeof extractRoutingKey> {
  return extractRoutingKey(methodNamed(method).key, message, method);
}

function expectCode(method: string, message: Uint8Array, code: OhsErrorCode): OhsError {
  const err = errorOf(() => key(method, message));
  expect(err.code).toBe(code);
  return err;
}

const SANDBOX = '3f2b8c1e-9a4d-4e7f-b6a2-5c0d1e2f3a4b'; // 36 bytes = 0x24
const INSTANCE = 'inst'; // 4 bytes

describe('ConnectSupervisor hello', () => {
  it('reads hello.sandbox_id from the bytes prost writes (0A len 0A len id 12 len instance)', () => {
    // outer length = 2 + 36 + 2 + 4 = 44 = 0x2c
    const msg = bytes(0x0a, 0x2c, 0x0a, 0x24, SANDBOX, 0x12, 0x04, INSTANCE);
    expect(key('ConnectSupervisor', msg)).toEqual({ sandboxId: SANDBOX });
  });

  it('reads the id when instance_id comes before sandbox_id', () => {
    const msg = bytes(0x0a, 0x0a, 0x12, 0x02, 'i1', 0x0a, 0x04, 'sb-1');
    expect(key('ConnectSupervisor', msg)).toEqual({ sandboxId: 'sb-1' });
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
    expect(key('ConnectSupervisor', msg)).toEqual({ sandboxId: 'sb-1' });
  });

  it('merges repeated hello messages as protobuf does', () => {
    const msg = bytes(0x0a, 0x06, 0x0a, 0x04, 'sb-1', 0x0a, 0x04, 0x12, 0x02, 'i1');
    expect(key('ConnectSupervisor', msg)).toEqual({ sandboxId: 'sb-1' });
  });

  it('lets the last sandbox_id win across repeated hellos and within one hello', () => {
    const across = bytes(0x0a, 0x06, 0x0a, 0x04, 'sb-1', 0x0a, 0x06, 0x0a, 0x04, 'sb-2');
    expect(key('ConnectSupervisor', across)).toEqual({ sandboxId: 'sb-2' });
    const within = bytes(0x0a, 0x0c, 0x0a, 0x04, 'sb-1', 0x0a, 0x04, 'sb-3');
    expect(key('ConnectSupervisor', within)).toEqual({ sandboxId: 'sb-3' });
  });

  it('refuses a first message that is a heartbeat', () => {
    const err = expectCode('ConnectSupervisor', bytes(0x12, 0x00), 'OHS_ERR_MALFORMED_MESSAGE');
    expect(err.message).toBe('first ConnectSupervisor message must be hello');
  });

  it('refuses a hello overridden by a later oneof member', () => {
    const msg = bytes(0x0a, 0x06, 0x0a, 0x04, 'sb-1', 0x12, 0x00);
    expectCode('ConnectSupervisor', msg, 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('refuses an empty first message', () => {
    expectCode('ConnectSupervisor', bytes(), 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('reports a hello without sandbox_id as a missing routing key', () => {
    expectCode('ConnectSupervisor', bytes(0x0a, 0x04, 0x12, 0x02, 'i1'), 'OHS_ERR_MISSING_ROUTING_KEY');
    expectCode('ConnectSupervisor', bytes(0x0a, 0x00), 'OHS_ERR_MISSING_ROUTING_KEY');
    expectCode('ConnectSupervisor', bytes(0x0a, 0x02, 0x0a, 0x00), 'OHS_ERR_MISSING_ROUTING_KEY');
  });

  it('refuses hello with the wrong wire type', () => {
    const err = expectCode('ConnectSupervisor', bytes(0x08, 0x01), 'OHS_ERR_MALFORMED_MESSAGE');
    expect(err.message).toMatch(/wire type varint/);
  });

  it('refuses sandbox_id with the wrong wire type inside hello', () => {
    expectCode('ConnectSupervisor', bytes(0x0a, 0x02, 0x08, 0x01), 'OHS_ERR_MALFORMED_MESSAGE');
  });
});

describe('RelayStream init', () => {
  it('reads init.channel_id', () => {
    const msg = bytes(0x0a, 0x06, 0x0a, 0x04, 'ch-1');
    expect(key('RelayStream', msg)).toEqual({ channelId: 'ch-1' });
  });

  it('refuses a first frame that carries data', () => {
    const err = expectCode('RelayStream', bytes(0x12, 0x03, 'SSH'), 'OHS_ERR_MALFORMED_MESSAGE');
    expect(err.message).toBe('first RelayStream message must be init');
  });

  it('reports an empty channel id as a missing routing key', () => {
    expectCode('RelayStream', bytes(0x0a, 0x00), 'OHS_ERR_MISSING_ROUTING_KEY');
  });
});

describe('field-1 requests', () => {
  it.each(['ExecSandbox', 'GetSandboxLogs', 'PushSandboxLogs'])('%s reads sandbox_id', (method) => {
    expect(key(method, bytes(0x0a, 0x04, 'sb-1', 0x12, 0x02, 'ls'))).toEqual({ sandboxId: 'sb-1' });
  });

  it('exec reads sandbox_id written after other fields', () => {
    const msg = bytes(0x12, 0x02, 'ls', 0x38, 0x01, 0x0a, 0x04, 'sb-2');
    expect(key('ExecSandbox', msg)).toEqual({ sandboxId: 'sb-2' });
  });

  it('watch reads id', () => {
    const msg = bytes(0x10, 0x01, 0x0a, 0x04, 'sb-4', 0x18, 0x01);
    expect(key('WatchSandbox', msg)).toEqual({ sandboxId: 'sb-4' });
  });

  it('the last occurrence of sandbox_id wins', () => {
    expect(key('ExecSandbox', bytes(0x0a, 0x01, 'a', 0x0a, 0x01, 'b'))).toEqual({ sandboxId: 'b' });
  });

  it('a log push batch without sandbox_id has no routing key', () => {
    expectCode('PushSandboxLogs', bytes(0x12, 0x00), 'OHS_ERR_MISSING_ROUTING_KEY');
    expectCode('PushSandboxLogs', bytes(), 'OHS_ERR_MISSING_ROUTING_KEY');
  });

  it('an explicitly empty sandbox_id has no routing key', () => {
    expectCode('ExecSandbox', bytes(0x0a, 0x00), 'OHS_ERR_MISSING_ROUTING_KEY');
  });
});

describe('malformed input', () => {
  it('refuses a string cut short', () => {
    const err = expectCode('ExecSandbox', bytes(0x0a, 0x04, 'sb'), 'OHS_ERR_MALFORMED_MESSAGE');
    expect(err.cause).toBeInstanceOf(Error);
  });

  it('refuses a truncated tag varint', () => {
    expectCode('ExecSandbox', bytes(0x80), 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('refuses a truncated length varint', () => {
    expectCode('WatchSandbox', bytes(0x0a, 0x80), 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('refuses a truncated unknown field', () => {
    expectCode('ExecSandbox', bytes(0x28, 0x80), 'OHS_ERR_MALFORMED_MESSAGE');
    expectCode('ExecSandbox', bytes(0x45, 0x01, 0x02), 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('refuses a hello whose inner length overruns the outer message', () => {
    expectCode('ConnectSupervisor', bytes(0x0a, 0x06, 0x0a, 0x09, 'sb-1'), 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('refuses field 1 with the wrong wire type', () => {
    const err = expectCode('ExecSandbox', bytes(0x08, 0x01), 'OHS_ERR_MALFORMED_MESSAGE');
    expect(err.message).toContain('field 1');
    expectCode('WatchSandbox', bytes(0x0d, 1, 2, 3, 4), 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('refuses invalid UTF-8 in the key', () => {
    expectCode('ExecSandbox', bytes(0x0a, 0x02, 0xc3, 0x28), 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('refuses field number 0 and stray end-group tags', () => {
    expectCode('ExecSandbox', bytes(0x02, 0x00), 'OHS_ERR_MALFORMED_MESSAGE');
    expectCode('ExecSandbox', bytes(0x0c), 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('refuses garbage', () => {
    expectCode('ExecSandbox', bytes(0xff, 0xff, 0xff, 0xff, 0xff, 0xff), 'OHS_ERR_MALFORMED_MESSAGE');
    expectCode('ConnectSupervisor', bytes('GET / HTTP/1.1\r\n'), 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('refuses a key with characters unfit for a routing key', () => {
    expectCode('ExecSandbox', bytes(0x0a, 0x03, 'a/b'), 'OHS_ERR_MALFORMED_MESSAGE');
    expectCode('ExecSandbox', bytes(0x0a, 0x03, 'a b'), 'OHS_ERR_MALFORMED_MESSAGE');
    const long = 'a'.repeat(129);
    expectCode('ExecSandbox', bytes(0x0a, 0x81, 0x01, long), 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('does not echo the offending id in the error', () => {
    const err = expectCode('ExecSandbox', bytes(0x0a, 0x07, 'x;$(rm)'), 'OHS_ERR_MALFORMED_MESSAGE');
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

describe('2026-08 requests', () => {
  it('ForwardTcp reads init.sandbox_id and init.authorization_token (TcpForwardInit fields 1 and 7)', () => {
    // init{ sandbox_id=1 "sb-1", service_id=4 "ssh-proxy:sb-1", ssh=5 {}, authorization_token=7 "tok" }
    const init = bytes(0x0a, 0x04, 'sb-1', 0x22, 0x0e, 'ssh-proxy:sb-1', 0x2a, 0x00, 0x3a, 0x03, 'tok');
    const msg = bytes(0x0a, init.length, init);
    expect(key('ForwardTcp', msg)).toEqual({ sandboxId: 'sb-1', token: 'tok' });
  });

  it('ForwardTcp without a token still routes; the gateway answers UNAUTHENTICATED itself', () => {
    expect(key('ForwardTcp', bytes(0x0a, 0x06, 0x0a, 0x04, 'sb-1'))).toEqual({ sandboxId: 'sb-1' });
  });

  it('ForwardTcp refuses a first frame that carries data', () => {
    const err = expectCode('ForwardTcp', bytes(0x12, 0x02, 'hi'), 'OHS_ERR_MALFORMED_MESSAGE');
    expect(err.message).toBe('first ForwardTcp message must be init');
  });

  it('ExecSandboxInteractive reads start.sandbox_id', () => {
    const start = bytes(0x0a, 0x04, 'sb-7', 0x12, 0x02, 'sh');
    expect(key('ExecSandboxInteractive', bytes(0x0a, start.length, start))).toEqual({ sandboxId: 'sb-7' });
    expectCode('ExecSandboxInteractive', bytes(0x12, 0x01, 'x'), 'OHS_ERR_MALFORMED_MESSAGE');
  });

  it('StopSandbox reads name and workspace; an empty workspace means default', () => {
    expect(key('StopSandbox', bytes(0x0a, 0x03, 'box', 0x12, 0x04, 'team'))).toEqual({ sandboxName: 'box', workspace: 'team' });
    expect(key('StopSandbox', bytes(0x0a, 0x03, 'box'))).toEqual({ sandboxName: 'box', workspace: 'default' });
    expectCode('StopSandbox', bytes(0x12, 0x04, 'team'), 'OHS_ERR_MISSING_ROUTING_KEY');
  });

  it('UpdateConfig reads name and workspace (field 10), and a global update names no sandbox', () => {
    expect(key('UpdateConfig', bytes(0x0a, 0x03, 'box', 0x52, 0x02, 'ws'))).toEqual({ sandboxName: 'box', workspace: 'ws' });
    expect(key('UpdateConfig', bytes(0x0a, 0x03, 'box', 0x30, 0x01))).toEqual({ unscoped: true });
  });

  it('SubmitPolicyAnalysis reads name from field 4 and workspace from field 6', () => {
    expect(key('SubmitPolicyAnalysis', bytes(0x22, 0x03, 'box', 0x32, 0x02, 'ws'))).toEqual({ sandboxName: 'box', workspace: 'ws' });
  });
});
