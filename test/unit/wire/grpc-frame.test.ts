import { describe, expect, it } from 'vitest';
import { FirstMessageBuffer, GRPC_FRAME_HEADER_BYTES, GrpcMessageSplitter } from '../../../src/wire/grpc-frame.ts';
import { methodNamed } from '../../../src/classify/classify.ts';
import { extractRoutingKey } from '../../../src/wire/routing-key.ts';

/** Bytes from numbers and ASCII strings, so fixtures read like the wire. */
function bytes(...parts: Array<number | string>): Buffer {
  return Buffer.concat(parts.map((p) => (typeof p === 'number' ? Buffer.from([p]) : Buffer.from(p, 'latin1'))));
}

// ExecSandboxRequest{ sandbox_id: "sb-1", command: ["ls"] } in a gRPC frame.
const EXEC_MESSAGE = bytes(0x0a, 0x04, 'sb-1', 0x12, 0x02, 'ls');
const EXEC_FRAME = bytes(0x00, 0x00, 0x00, 0x00, EXEC_MESSAGE.length, EXEC_MESSAGE.toString('latin1'));

describe('FirstMessageBuffer', () => {
  it('completes a first message delivered in one chunk', () => {
    const result = new FirstMessageBuffer(65_536).push(EXEC_FRAME);
    expect(result.state).toBe('complete');
    if (result.state !== 'complete') return;
    expect(result.message).toEqual(EXEC_MESSAGE);
    expect(result.frameBytes).toEqual(EXEC_FRAME);
  });

  it('reassembles a frame split into 1-byte chunks and replays every byte', () => {
    const buf = new FirstMessageBuffer(65_536);
    for (let i = 0; i < EXEC_FRAME.length - 1; i++) {
      expect(buf.push(EXEC_FRAME.subarray(i, i + 1))).toEqual({ state: 'need-more' });
      expect(buf.bufferedBytes).toBe(i + 1);
    }
    const result = buf.push(EXEC_FRAME.subarray(EXEC_FRAME.length - 1));
    expect(result.state).toBe('complete');
    if (result.state !== 'complete') return;
    expect(result.message).toEqual(EXEC_MESSAGE);
    expect(result.frameBytes).toEqual(EXEC_FRAME);
  });

  it('keeps bytes after the first message in frameBytes so nothing is lost upstream', () => {
    const second = bytes(0x00, 0x00, 0x00, 0x00, 0x09, 0x0a);
    const result = new FirstMessageBuffer(65_536).push(Buffer.concat([EXEC_FRAME, second]));
    if (result.state !== 'complete') throw new Error(`expected complete, got ${result.state}`);
    expect(result.message).toEqual(EXEC_MESSAGE);
    expect(result.frameBytes).toEqual(Buffer.concat([EXEC_FRAME, second]));
  });

  it('accepts plain Uint8Array chunks and empty chunks', () => {
    const buf = new FirstMessageBuffer(65_536);
    expect(buf.push(new Uint8Array(0))).toEqual({ state: 'need-more' });
    const result = buf.push(new Uint8Array(EXEC_FRAME));
    expect(result.state).toBe('complete');
  });

  it('completes a zero-length first message as soon as the prefix arrives', () => {
    const result = new FirstMessageBuffer(16).push(bytes(0, 0, 0, 0, 0));
    if (result.state !== 'complete') throw new Error(`expected complete, got ${result.state}`);
    expect(result.message.length).toBe(0);
    expect(result.frameBytes.length).toBe(GRPC_FRAME_HEADER_BYTES);
  });

  it('refuses an over-cap length from the prefix alone, without waiting for the payload', () => {
    const buf = new FirstMessageBuffer(65_536);
    expect(buf.push(bytes(0x00, 0x00, 0x01))).toEqual({ state: 'need-more' });
    const result = buf.push(bytes(0x00, 0x01)); // length 65537
    if (result.state !== 'error') throw new Error(`expected error, got ${result.state}`);
    expect(result.error.code).toBe('OHS_ERR_MESSAGE_TOO_LARGE');
    expect(result.error.message).toContain('65537');
    expect(buf.bufferedBytes).toBe(0);
  });

  it('refuses a 4 GiB length prefix', () => {
    const result = new FirstMessageBuffer(65_536).push(bytes(0x00, 0xff, 0xff, 0xff, 0xff));
    expect(result.state === 'error' && result.error.code).toBe('OHS_ERR_MESSAGE_TOO_LARGE');
  });

  it('accepts a message of exactly the cap', () => {
    const payload = Buffer.alloc(32, 0x41);
    const frame = Buffer.concat([bytes(0, 0, 0, 0, 32), payload]);
    const result = new FirstMessageBuffer(32).push(frame);
    expect(result.state).toBe('complete');
  });

  it('refuses a compressed first message as malformed', () => {
    const result = new FirstMessageBuffer(65_536).push(bytes(0x01, 0, 0, 0, 2, 0x0a, 0x00));
    if (result.state !== 'error') throw new Error(`expected error, got ${result.state}`);
    expect(result.error.code).toBe('OHS_ERR_MALFORMED_MESSAGE');
    expect(result.error.message).toMatch(/compress/);
  });

  it('refuses an invalid compressed flag', () => {
    const result = new FirstMessageBuffer(65_536).push(bytes(0x80, 0, 0, 0, 0));
    expect(result.state === 'error' && result.error.code).toBe('OHS_ERR_MALFORMED_MESSAGE');
  });

  it('waits on a truncated frame instead of guessing', () => {
    const buf = new FirstMessageBuffer(65_536);
    expect(buf.push(EXEC_FRAME.subarray(0, EXEC_FRAME.length - 2))).toEqual({ state: 'need-more' });
    expect(buf.bufferedBytes).toBe(EXEC_FRAME.length - 2);
  });

  it('rejects use after the first message was decided', () => {
    const buf = new FirstMessageBuffer(65_536);
    buf.push(EXEC_FRAME);
    expect(() => buf.push(bytes(0))).toThrow(/after the first message/);
  });

  it('rejects a nonsensical cap', () => {
    expect(() => new FirstMessageBuffer(-1)).toThrow();
  });

  it('feeds the routing-key reader a ConnectSupervisor hello that arrived byte by byte', () => {
    const hello = bytes(0x0a, 0x0a, 0x0a, 0x04, 'sb-9', 0x12, 0x02, 'i1');
    const frame = Buffer.concat([bytes(0, 0, 0, 0, hello.length), hello]);
    const buf = new FirstMessageBuffer(65_536);
    let result = buf.push(frame.subarray(0, 1));
    for (let i = 1; i < frame.length; i++) result = buf.push(frame.subarray(i, i + 1));
    if (result.state !== 'complete') throw new Error(`expected complete, got ${result.state}`);
    expect(extractRoutingKey(methodNamed('ConnectSupervisor').key, result.message)).toEqual({ sandboxId: 'sb-9' });
  });
});

describe('GrpcMessageSplitter', () => {
  const frame = (payload: string): Buffer => {
    const body = Buffer.from(payload);
    const head = Buffer.alloc(5);
    head.writeUInt32BE(body.length, 1);
    return Buffer.concat([head, body]);
  };

  it('yields whole messages however the bytes are cut', () => {
    const stream = Buffer.concat([frame('a'), frame('hello'), frame(''), frame('xyz')]);
    for (const cut of [1, 2, 3, 5, 7, stream.length]) {
      const s = new GrpcMessageSplitter(1024);
      const got: string[] = [];
      for (let i = 0; i < stream.length; i += cut) for (const m of s.push(stream.subarray(i, i + cut))) got.push(m.subarray(5).toString());
      expect(got).toEqual(['a', 'hello', '', 'xyz']);
      expect(s.bufferedBytes).toBe(0);
    }
  });

  it('holds a partial message until it completes, and drops it on reset', () => {
    const s = new GrpcMessageSplitter(1024);
    const f = frame('abcdef');
    expect(s.push(f.subarray(0, 7))).toEqual([]);
    expect(s.bufferedBytes).toBe(7);
    s.reset();
    expect(s.bufferedBytes).toBe(0);
    expect(s.push(frame('z')).map((m) => m.subarray(5).toString())).toEqual(['z']);
  });

  it('refuses a message over the limit as soon as its prefix arrives', () => {
    const s = new GrpcMessageSplitter(4);
    expect(() => s.push(frame('12345').subarray(0, 5))).toThrow(/exceeds the 4-byte limit/);
  });
});
