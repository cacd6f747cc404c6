// forwardStream's prefix (the buffered first message) over real loopback HTTP/2 connections: it is
// sent first, kept for a replay while upstream has not answered, and let go once upstream answered,
// though the stream stays open. A supervisor session or an idle port forward is held for hours; its
// first message used to stay with it (the options held it), ~0.3 KB per held session at 10,000.
import http2 from 'node:http2';
import v8 from 'node:v8';
import vm from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { forwardStream, type ForwardHandle } from '../../../src/proxy/h2-forward.ts';
import { waitUntil } from '../../helpers/wait.ts';
import { startH2Pair, type H2Pair } from './h2-pair.ts';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

/**
 * Collects until `ref` is gone or the rounds run out; true when it was collected. Each collection
 * runs in a later job than the last `deref()`, which keeps its target alive to the end of its job.
 */
async function collected(ref: WeakRef<object>): Promise<boolean> {
  for (let i = 0; i < 10; i++) {
    await new Promise((r) => setTimeout(r, 10));
    gc();
    await new Promise((r) => setTimeout(r, 0));
    if (ref.deref() === undefined) return true;
  }
  return false;
}

describe('forwardStream prefix', () => {
  let pair: H2Pair;
  const received: Buffer[] = [];
  /** Upstream streams by path; `/answer` ones get headers at once, `/silent` ones nothing. */
  const upstreams: http2.ServerHttp2Stream[] = [];
  const handles: ForwardHandle[] = [];
  const prefixes: WeakRef<Buffer>[] = [];

  beforeAll(async () => {
    pair = await startH2Pair(
      (stream, headers) => {
        upstreams.push(stream);
        stream.on('data', (chunk: Buffer) => received.push(chunk));
        if (headers[':path'] === '/answer') {
          stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
          stream.write(Buffer.from('ok'));
        }
      },
      (stream, headers, upstreamSession) => {
        // A first message of its own (not a slice of Node's shared pool), so its collection is its own.
        const prefix = Buffer.alloc(64 * 1024, 0x61);
        prefixes.push(new WeakRef(prefix));
        handles.push(forwardStream(stream, upstreamSession, { ':method': 'POST', ':path': headers[':path'] ?? '/' }, {}, prefix));
      },
    );
  });

  afterAll(() => pair.close());

  const until = (what: string, cond: () => boolean): Promise<boolean> => waitUntil(what, async () => cond(), (ok) => ok, { timeoutMs: 3_000, intervalMs: 10 });
  const bytesReceived = (): number => received.reduce((n, b) => n + b.length, 0);

  it('sends the prefix first and lets go of it once upstream answered, while the stream stays open', async () => {
    const client = http2.connect(pair.proxyOrigin);
    client.on('error', () => undefined);
    try {
      const call = client.request({ ':method': 'POST', ':path': '/answer' }, { endStream: false });
      call.on('error', () => undefined);
      let body = '';
      call.on('data', (d: Buffer) => (body += d.toString()));
      await until('the answer relayed', () => body === 'ok');
      await until('the prefix upstream', () => bytesReceived() === 64 * 1024);

      expect(await collected(prefixes[0]!)).toBe(true);
      // Still open both ways: the forward goes on without it.
      expect(call.closed).toBe(false);
      expect(upstreams[0]!.closed).toBe(false);
      call.write(Buffer.from('more'));
      await until('later bytes upstream', () => bytesReceived() === 64 * 1024 + 4);
      call.close();
    } finally {
      client.destroy();
    }
  });

  it('keeps the prefix while upstream has not answered, for a replay elsewhere', async () => {
    received.length = 0;
    const client = http2.connect(pair.proxyOrigin);
    client.on('error', () => undefined);
    try {
      const call = client.request({ ':method': 'POST', ':path': '/silent' }, { endStream: false });
      call.on('error', () => undefined);
      await until('the prefix upstream', () => bytesReceived() === 64 * 1024);

      expect(await collected(prefixes[1]!)).toBe(false);
      const replay = handles[1]!.abandon();
      expect(replay?.bytes.length).toBe(64 * 1024);
      expect(replay?.bytes.every((b) => b === 0x61)).toBe(true);
      call.close();
    } finally {
      client.destroy();
    }
  });
});
