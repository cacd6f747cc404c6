// src/node-patches.ts replaces AsyncResource.prototype.bind so that bound functions (one per HTTP/2
// client stream, inside Node) die young. The replacement must bind exactly as Node's does.
import { AsyncLocalStorage, AsyncResource, executionAsyncId, triggerAsyncId } from 'node:async_hooks';
import { execFile } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it, onTestFinished } from 'vitest';
import http2 from 'node:http2';
import type net from 'node:net';
import { applyNodePatches, bindMakesAccessors, keepSessionStreamsYoung } from '../../src/node-patches.ts';

const FIXTURE = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'young-survivors.ts');
const nodeHasAccessors = bindMakesAccessors();
const originalBind = AsyncResource.prototype.bind;

/** Node 24's V8 keeps no deleted value in an old Map's table, and keeps closed HTTP/2 streams through a scavenge some other way (below). */
const NODE_MAJOR = Number(process.versions.node.split('.')[0]);

/** MB of what the fixture let go of that survives a scavenge, with and without the patch (see the fixture). */
async function surviving(which: 'bind' | 'streams' | 'churn' | 'map' | 'cells', patch: boolean, cells = false): Promise<{ released_mb: number; survived_mb: number; patched: string[] }> {
  // 128 MB semi-spaces hold a whole case's garbage; for the map cases Node 24 would then start a full
  // collection during the run (it sizes old-generation limits from the young one), so 64 MB.
  const semiSpace = which === 'map' || which === 'cells' ? 64 : 128;
  const gcArgs = ['--expose-gc', `--min-semi-space-size=${semiSpace}`, `--max-semi-space-size=${semiSpace}`, '--no-allocation-site-pretenuring'];
  const args = [...gcArgs, '--import', 'tsx', FIXTURE, which, ...(patch ? ['--patch'] : []), ...(cells ? ['--cells'] : [])];
  const { stdout } = await promisify(execFile)(process.execPath, args, { timeout: 60_000 });
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as { released_mb: number; survived_mb: number; patched: string[] };
}

describe('AsyncResource.prototype.bind, patched', () => {
  const applied = applyNodePatches();
  afterAll(() => {
    AsyncResource.prototype.bind = originalBind;
  });

  it('is applied once, and only on a Node whose bound functions carry accessors', () => {
    expect(applied).toEqual(nodeHasAccessors ? ['AsyncResource.prototype.bind'] : []);
    expect(applyNodePatches()).toEqual([]);
    expect(bindMakesAccessors()).toBe(false);
  });

  it('runs the function in the resource’s async scope, with its arguments, returning its result', () => {
    const resource = new AsyncResource('test-scope');
    const seen = resource.bind((a: number, b: number) => ({ sum: a + b, id: executionAsyncId(), trigger: triggerAsyncId() }))(2, 3);
    expect(seen).toEqual({ sum: 5, id: resource.asyncId(), trigger: resource.triggerAsyncId() });
  });

  it('carries the AsyncLocalStorage store of where the resource was made', () => {
    const als = new AsyncLocalStorage<string>();
    const bound = als.run('made-here', () => AsyncResource.bind(() => als.getStore()));
    expect(als.getStore()).toBeUndefined();
    expect(bound()).toBe('made-here');
  });

  it('passes the caller’s this without thisArg and the given one with it', () => {
    function who(this: unknown): unknown {
      return this;
    }
    const receiver = { name: 'receiver' };
    const fixed = { name: 'fixed' };
    const resource = new AsyncResource('test-this');
    expect(resource.bind(who).call(receiver)).toBe(receiver);
    const bindWithThis = resource.bind.bind(resource) as unknown as (fn: typeof who, thisArg: unknown) => typeof who;
    expect(bindWithThis(who, fixed).call(receiver)).toBe(fixed);
  });

  it('keeps length and asyncResource, without a deprecation warning on reading it', async () => {
    const warnings: Error[] = [];
    const onWarning = (w: Error): number => warnings.push(w);
    process.on('warning', onWarning);
    try {
      const resource = new AsyncResource('test-props');
      const bound = resource.bind((_a: unknown, _b: unknown, _c: unknown) => undefined) as unknown as { length: number; asyncResource: AsyncResource };
      expect(bound.length).toBe(3);
      expect(bound.asyncResource).toBe(resource);
      expect(Object.keys(bound)).toEqual(['asyncResource']);
      await new Promise((r) => setImmediate(r));
      expect(warnings.filter((w) => /DEP0172|asyncResource/.test(`${(w as { code?: string }).code} ${w.message}`))).toEqual([]);
    } finally {
      process.off('warning', onWarning);
    }
  });

  it('keeps the length of functions of any arity, and passes every argument given', () => {
    const resource = new AsyncResource('test-arity');
    const fns = [() => [], (a: unknown) => [a], (a: unknown, b: unknown) => [a, b], (a: unknown, b: unknown, c: unknown) => [a, b, c], (a: unknown, b: unknown, c: unknown, d: unknown, e: unknown) => [a, b, c, d, e]];
    for (const fn of fns) {
      const bound = resource.bind(fn as (...args: unknown[]) => unknown);
      expect(bound.length).toBe(fn.length);
      expect(Object.keys(bound)).toEqual(['asyncResource']);
    }
    const all = resource.bind((_a: unknown, ...rest: unknown[]) => [_a, ...rest]) as (...args: unknown[]) => unknown;
    expect(all.length).toBe(1);
    expect(all(1, 2, 3, 4)).toEqual([1, 2, 3, 4]);
  });

  it('refuses a non-function the way Node does', () => {
    expect(() => new AsyncResource('test-arg').bind(42 as unknown as () => void)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
  });

  it.runIf(nodeHasAccessors)('lets bound functions and what they reach die young (Node’s own keeps them to a full collection)', async () => {
    const [node, patched] = await Promise.all([surviving('bind', false), surviving('bind', true)]);
    expect(node.patched).toEqual([]);
    expect(patched.patched).toEqual(['AsyncResource.prototype.bind']);
    // 1,000 bound functions, each reaching a ~40 KB array, let go of.
    expect(node.released_mb).toBeGreaterThan(30);
    // Most of it with Node's own (all of it on Node 20, 0.65-0.9 on Node 24), next to nothing patched.
    expect(node.survived_mb).toBeGreaterThan(0.5 * node.released_mb);
    expect(patched.survived_mb).toBeLessThan(0.1 * patched.released_mb);
  });

  it.runIf(nodeHasAccessors)('lets closed forwarded HTTP/2 streams die young (Node binds one per client stream)', async () => {
    const [node, patched] = await Promise.all([surviving('streams', false), surviving('streams', true)]);
    expect(node.released_mb).toBeGreaterThan(40);
    expect(patched.released_mb).toBeGreaterThan(40);
    expect(node.survived_mb).toBeGreaterThan(0.5 * node.released_mb);
    expect(patched.survived_mb).toBeLessThan(3);
  });
});

describe('an HTTP/2 session’s streams in cells (keepSessionStreamsYoung)', () => {
  it('serves concurrent streams on patched sessions, each answer on its own stream, and a destroyed session takes its open streams down', async () => {
    const server = http2.createServer();
    const serverSessions: boolean[] = [];
    server.on('session', (session) => serverSessions.push(keepSessionStreamsYoung(session)));
    server.on('stream', (stream, headers) => {
      stream.on('error', () => undefined);
      if (headers[':path'] === '/hold') return void stream.respond({ ':status': 200 });
      stream.respond({ ':status': 200 });
      stream.end(`answer to ${headers[':path']}`);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const client = http2.connect(`http://127.0.0.1:${(server.address() as net.AddressInfo).port}`);
    client.on('error', () => undefined);
    try {
      expect(keepSessionStreamsYoung(client)).toBe(true);
      // Once only: the second call finds cells already there.
      expect(keepSessionStreamsYoung(client)).toBe(false);
      const fetch = (path: string): Promise<string> =>
        new Promise((resolve, reject) => {
          const s = client.request({ ':path': path });
          let body = '';
          s.setEncoding('utf8');
          s.on('data', (c: string) => (body += c));
          s.on('end', () => resolve(body));
          s.on('error', reject);
        });
      const paths = Array.from({ length: 50 }, (_, i) => `/p${i}`);
      expect(await Promise.all(paths.map(fetch))).toEqual(paths.map((p) => `answer to ${p}`));
      expect(serverSessions).toEqual([true]);

      const held = [client.request({ ':path': '/hold' }), client.request({ ':path': '/hold' })];
      await Promise.all(held.map((s) => new Promise((r) => s.once('response', r))));
      const closed = held.map((s) => new Promise<boolean>((r) => s.once('close', () => r(s.destroyed))));
      for (const s of held) s.on('error', () => undefined);
      client.destroy();
      expect(await Promise.all(closed)).toEqual([true, true]);
    } finally {
      client.destroy();
      await new Promise((r) => server.close(r));
    }
  });

  it('keeps the map’s meaning: what was set is what get, forEach and the iterators give back, until deleted', () => {
    // A session that never connects: only its map is used here.
    const session = http2.connect('http://127.0.0.1:9');
    session.on('error', () => undefined);
    onTestFinished(() => void session.destroy());
    expect(keepSessionStreamsYoung(session)).toBe(true);
    const kState = Object.getOwnPropertySymbols(session).find((sym) => sym.description === 'state') as symbol;
    const streams = (session as unknown as Record<symbol, { streams: Map<number, object> }>)[kState]!.streams;
    const [a, b, c] = [{ id: 1 }, { id: 3 }, { id: 5 }];
    streams.set(1, a).set(3, b);
    streams.set(5, c);
    expect(streams.get(3)).toBe(b);
    expect(streams.get(7)).toBeUndefined();
    expect(streams.has(5)).toBe(true);
    expect(streams.size).toBe(3);
    expect(streams.delete(3)).toBe(true);
    expect(streams.delete(3)).toBe(false);
    expect(streams.has(3)).toBe(false);
    const seen: Array<[number, object]> = [];
    streams.forEach((stream, id, map) => {
      seen.push([id, stream]);
      expect(map).toBe(streams);
    });
    expect(seen).toEqual([[1, a], [5, c]]);
    expect([...streams.values()]).toEqual([a, c]);
    expect([...streams.entries()]).toEqual([[1, a], [5, c]]);
    expect([...streams]).toEqual([[1, a], [5, c]]);
    expect([...streams.keys()]).toEqual([1, 5]);
    // Deleting while forEach walks the map (what a destroyed session does): each visited once.
    const visited: number[] = [];
    streams.forEach((_s, id) => {
      visited.push(id);
      streams.delete(id);
    });
    expect(visited).toEqual([1, 5]);
    expect(streams.size).toBe(0);
  });

  it('lets what a long-lived map held die young once deleted (Node 20’s own map keeps it to a full collection)', async () => {
    const [map, cells] = await Promise.all([surviving('map', false), surviving('cells', false)]);
    // 1,000 values, eight at a time, each reaching a ~40 KB array, let go of.
    expect(map.released_mb).toBeGreaterThan(30);
    expect(cells.released_mb).toBeGreaterThan(30);
    expect(cells.survived_mb).toBeLessThan(0.1 * cells.released_mb);
    // Node 20: an old table left behind by a rehash still points at what it held. Node 24's V8 keeps
    // none of it (0.1 of 43.5 MB measured), so there the cells change nothing.
    if (NODE_MAJOR < 24) expect(map.survived_mb).toBeGreaterThan(0.8 * map.released_mb);
  });

  // Node 24 keeps closed streams through a scavenge with the cells or without them (43.0 and 43.3 of
  // ~79 MB measured, also with no forwarding, nothing pre-promoted, one stream at a time, and each
  // closed handle's owner link cut): not through the session's map, which lets go there (above). It
  // keeps plain closed TCP sockets too, though not beside thousands of open streams; what holds them
  // was not found (docs/performance.md, twentieth session).
  it.skipIf(NODE_MAJOR >= 24)('lets streams that closed on a long-lived connection die young (Node’s own map keeps them to a full collection)', async () => {
    const [node, inCells] = await Promise.all([surviving('churn', true, false), surviving('churn', true, true)]);
    // 1,000 forwarded streams, eight at a time, each reaching a ~40 KB array, let go of.
    expect(node.released_mb).toBeGreaterThan(30);
    expect(inCells.released_mb).toBeGreaterThan(30);
    expect(node.survived_mb).toBeGreaterThan(0.2 * node.released_mb);
    expect(inCells.survived_mb).toBeLessThan(3);
  });
});
