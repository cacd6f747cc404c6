// Changes to Node's own library that the sidecar makes at start, each for a measured reason and each
// off when the running Node no longer needs it.
//
// AsyncResource.prototype.bind (Node 20 to 24 at least; nodejs/node#58618 would end it): every
// function it returns gets an `asyncResource` accessor pair made of two fresh `util.deprecate`
// wrappers (DEP0172). Accessors are kept in the function's hidden class, so each bound function gets
// a hidden class of its own, and V8's scavenger keeps those alive until the next full collection:
// the bound function, its closure and everything that closure reaches survive every scavenge and are
// promoted. Node's ClientHttp2Session.request() binds one per stream, over a closure holding the
// stream, so every upstream stream the sidecar opens (to the gateway, to a peer) was promoted with
// its buffers, headers and listeners: 3.6 KB per stream in a bare Node process and ~14 KB per
// request in the sidecar, so that each scavenge copied megabytes and paused the event loop for
// 4-11 ms (the routing probe's p99). The replacement binds the same way (the same async scope, `this`
// and arguments, the same `length`) and keeps `asyncResource` as a plain data property: one shared
// hidden class, and a closed stream dies young. The only difference a caller can see is that reading
// `asyncResource` no longer prints DEP0172's warning.
//
// keepSessionStreamsYoung (below) is applied per HTTP/2 session rather than at start: Node's map of a
// session's streams is swapped for one that lets a closed stream go.
import { AsyncResource } from 'node:async_hooks';

type Bind = (this: AsyncResource, fn: (...args: never[]) => unknown, thisArg?: unknown) => (...args: unknown[]) => unknown;

/** Node's own bind, kept to tell whether a patch is needed and to raise its own argument errors. */
const nodeBind = AsyncResource.prototype.bind as unknown as Bind;

/** True when this Node's bound functions carry the per-function accessor pair described above. */
export function bindMakesAccessors(): boolean {
  const bound = (AsyncResource.prototype.bind as unknown as Bind).call(new AsyncResource('ohs-probe', { requireManualDestroy: true }), () => undefined);
  return typeof Object.getOwnPropertyDescriptor(bound, 'asyncResource')?.get === 'function';
}

type Fn = (...args: unknown[]) => unknown;

/**
 * Calls `fn` in `resource`'s async scope, with the caller's `this` unless `thisArg` is given, and
 * with `fn`'s own length up to three parameters: a function's `length` redefined afterwards
 * (`Object.defineProperties`) cost ~1.1 µs per bind, against ~0.04 µs for these, and every stream
 * the sidecar opens upstream binds one. Longer ones (none of Node's own) get their length defined.
 */
function boundTo(resource: AsyncResource, fn: Fn, thisArg: unknown): Fn {
  /* eslint-disable prefer-rest-params -- `arguments` keeps the declared parameters as `length` */
  switch (fn.length) {
    case 0:
      return function (this: unknown) {
        return resource.runInAsyncScope(fn, thisArg === undefined ? this : thisArg, ...arguments);
      };
    case 1:
      return function (this: unknown, _a: unknown) {
        return resource.runInAsyncScope(fn, thisArg === undefined ? this : thisArg, ...arguments);
      };
    case 2:
      return function (this: unknown, _a: unknown, _b: unknown) {
        return resource.runInAsyncScope(fn, thisArg === undefined ? this : thisArg, ...arguments);
      };
    case 3:
      return function (this: unknown, _a: unknown, _b: unknown, _c: unknown) {
        return resource.runInAsyncScope(fn, thisArg === undefined ? this : thisArg, ...arguments);
      };
    default: {
      const bound = function (this: unknown, ...args: unknown[]): unknown {
        return resource.runInAsyncScope(fn, thisArg === undefined ? this : thisArg, ...args);
      };
      Object.defineProperty(bound, 'length', { configurable: true, enumerable: false, writable: false, value: fn.length });
      return bound;
    }
  }
  /* eslint-enable prefer-rest-params */
}

const bindWithDataProperty: Bind = function (this: AsyncResource, fn, thisArg) {
  if (typeof fn !== 'function') return nodeBind.call(this, fn, thisArg); // Node's ERR_INVALID_ARG_TYPE
  const bound = boundTo(this, fn as Fn, thisArg) as Fn & { asyncResource?: AsyncResource };
  // A plain assignment: every bound function made at one site shares one hidden class.
  bound.asyncResource = this;
  return bound;
};

/** Applies the patches this Node needs; returns the names of those applied (logged at start). */
export function applyNodePatches(): string[] {
  const applied: string[] = [];
  // Once patched, bound functions carry no accessor: a second call applies nothing.
  if (bindMakesAccessors()) {
    AsyncResource.prototype.bind = bindWithDataProperty as unknown as typeof AsyncResource.prototype.bind;
    applied.push('AsyncResource.prototype.bind');
  }
  return applied;
}

/**
 * Node keeps an HTTP/2 session's open streams in a Map by id (`session[kState].streams`), for the
 * session's whole life. A peer or gateway connection lives for hours, so that Map's table reaches
 * the old generation, and from then on a table it leaves behind still points at the streams it held
 * (src/linked-set.ts has why): every stream that was open when the table was replaced, with all it
 * reaches (for a forwarded tunnel, the client's socket), survived scavenges to the next full
 * collection. Here each stream sits in a cell of its own that is emptied when the stream leaves, so
 * a table left behind holds empty cells. Node 20's http2 calls get, set, delete, forEach and size;
 * the iterators are unwrapped too, for a Node that walks the map another way. Node 24's V8 keeps
 * nothing deleted in an old Map's table, so there the cells change nothing (and cost next to nothing);
 * test/unit/node-patches.test.ts measures both.
 */
export class StreamCells<K, V> extends Map<K, V> {
  override get(id: K): V | undefined {
    return (super.get(id) as Cell<V> | undefined)?.stream;
  }

  override set(id: K, stream: V): this {
    return super.set(id, { stream } as Cell<V> as V);
  }

  override delete(id: K): boolean {
    const cell = super.get(id) as Cell<V> | undefined;
    if (cell === undefined) return false;
    cell.stream = undefined;
    return super.delete(id);
  }

  override forEach(fn: (stream: V, id: K, map: Map<K, V>) => void, thisArg?: unknown): void {
    super.forEach((cell, id) => fn.call(thisArg, (cell as Cell<V>).stream as V, id, this));
  }

  override *values(): MapIterator<V> {
    for (const cell of super.values()) yield (cell as Cell<V>).stream as V;
  }

  override *entries(): MapIterator<[K, V]> {
    for (const [id, cell] of super.entries()) yield [id, (cell as Cell<V>).stream as V];
  }

  override [Symbol.iterator](): MapIterator<[K, V]> {
    return this.entries();
  }
}

interface Cell<V> {
  stream: V | undefined;
}

/** Node's private key of a session's state (`Symbol('state')`), null once looked for and absent. */
let kSessionState: symbol | null | undefined;

/**
 * Puts a new HTTP/2 session's streams in cells (StreamCells above); call it as soon as the session
 * exists, before any stream. False when this Node keeps its streams some other way (nothing done).
 */
export function keepSessionStreamsYoung(session: object): boolean {
  kSessionState ??= Object.getOwnPropertySymbols(session).find((s) => s.description === 'state') ?? null;
  if (kSessionState === null) return false;
  const state = (session as Record<symbol, { streams?: Partial<Map<unknown, unknown>> } | undefined>)[kSessionState];
  const streams = state?.streams;
  // Node's own is a SafeMap (its primordials' Map, not an instance of the global one): checked by shape.
  if (state === undefined || streams instanceof StreamCells || typeof streams?.get !== 'function' || typeof streams.forEach !== 'function' || streams.size !== 0) return false;
  state.streams = new StreamCells();
  return true;
}
