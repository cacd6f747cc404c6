// Fuzz: HTTP/1.1 head handling (`requestHead` in src/proxy/tunnel.ts), which re-serialises a
// CONNECT or upgrade request to replay it upstream. Requests are parsed by Node's own HTTP server
// (the parser the public listener uses, with the sidecar's header-size limit); whatever it accepts,
// requestHead must write out so that the upstream parses exactly the same method, target and
// headers, minus every x-ohs-* header in any case, and nothing more.
import http from 'node:http';
import { Duplex } from 'node:stream';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { requestHead } from '../../src/proxy/tunnel.ts';
import { counted, FUZZ_TIMEOUT_MS, fuzzAssert, reportCounts } from './support.ts';

reportCounts('request-head');

/** The sidecar's default maxHeaderBytes (config schema). */
const MAX_HEADER_BYTES = 16_384;

type Parsed = { ok: true; event: string; method: string; url: string; rawHeaders: string[]; req: http.IncomingMessage } | { ok: false; why: string };

const kDone = Symbol('done');
type DoneSocket = Duplex & { [kDone]?: (p: Parsed) => void };

/** A server parsing like the public listener's (defaults plus the sidecar's header limit). */
function parsingServer(opts: http.ServerOptions): http.Server {
  const server = http.createServer(opts);
  const accept = (event: string, req: http.IncomingMessage): void => {
    const done = (req.socket as DoneSocket)[kDone];
    done?.({ ok: true, event, method: req.method ?? '', url: req.url ?? '', rawHeaders: [...req.rawHeaders], req });
  };
  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    accept('request', req);
    res.destroy();
  });
  server.on('connect', (req: http.IncomingMessage, socket: Duplex) => {
    accept('connect', req);
    socket.destroy();
  });
  server.on('upgrade', (req: http.IncomingMessage, socket: Duplex) => {
    accept('upgrade', req);
    socket.destroy();
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket: DoneSocket) => {
    socket[kDone]?.({ ok: false, why: err.code ?? 'error' });
    socket.destroy();
  });
  return server;
}

const sidecarParser = parsingServer({ maxHeaderSize: MAX_HEADER_BYTES });
// The upstream's view: the gateway (hyper) does not insist on Host, so neither does this one.
const upstreamParser = parsingServer({ maxHeaderSize: 2 * MAX_HEADER_BYTES, requireHostHeader: false });
afterAll(() => {
  sidecarParser.close();
  upstreamParser.close();
});

/** Feeds `bytes` to the server as one connection, without sockets or ports (as the public listener does). */
function parse(server: http.Server, bytes: Buffer): Promise<Parsed> {
  return new Promise((resolve) => {
    let settled = false;
    const d: DoneSocket = new Duplex({
      read() {},
      write(_c, _e, cb) {
        cb();
      },
    });
    const finish = (p: Parsed): void => {
      if (settled) return;
      settled = true;
      resolve(p);
    };
    d[kDone] = finish;
    d.on('close', () => finish({ ok: false, why: 'closed' }));
    d.on('error', () => finish({ ok: false, why: 'socket-error' }));
    server.emit('connection', d);
    d.push(bytes);
    d.push(null);
  });
}

function recased(s: string): fc.Arbitrary<string> {
  return fc.array(fc.boolean(), { minLength: s.length, maxLength: s.length }).map((f) => [...s].map((c, i) => (f[i] ? c.toUpperCase() : c.toLowerCase())).join(''));
}

const tokenChars = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,20}$/;
const headerName = fc.oneof(
  { weight: 3, arbitrary: fc.stringMatching(tokenChars) },
  { weight: 3, arbitrary: fc.constantFrom('x-ohs-hop', 'x-ohs-peer-secret', 'x-ohs-origin', 'x-ohs-', 'x-ohs-sandbox').chain(recased) },
  { weight: 2, arbitrary: fc.constantFrom('x-sandbox-id', 'x-sandbox-token', 'host', 'content-length', 'transfer-encoding', 'connection', 'upgrade').chain(recased) },
  { weight: 1, arbitrary: fc.constantFrom('x-ohs hop', 'x-ohs-hop ', ' x-ohs-hop', 'x-ohs-hop\t', 'x-ohs\u00e9', 'x\r\n-ohs-hop', 'x-ohs-hop:') },
);
// Values: printable text, obs-text, and the control bytes a smuggler would try (CR, LF, NUL, obs-fold).
const headerValue = fc.oneof(
  { weight: 4, arbitrary: fc.string({ maxLength: 24 }) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 12 }) },
  {
    weight: 3,
    arbitrary: fc
      .tuple(fc.string({ maxLength: 8 }), fc.constantFrom('\r\n', '\r', '\n', '\r\nx-ohs-hop: 9', '\nX-Ohs-Hop: 9', '\r\n X-Ohs-Hop: 9', '\r\n\tfolded', '\0', '\r\n\r\nGET /smuggled HTTP/1.1'), fc.string({ maxLength: 8 }))
      .map(([a, evil, b]) => `${a}${evil}${b}`),
  },
);
const method = fc.oneof(fc.constantFrom('CONNECT', 'GET', 'POST', 'OPTIONS', 'PUT'), fc.stringMatching(/^[A-Z]{1,8}$/), fc.constantFrom('get', 'CONNECT ', 'GE T'));
const target = fc.oneof(
  fc.constantFrom('/connect/ssh', '/', '/_ws_tunnel', 'gateway:8080', '*', '/a?b=c#d'),
  fc.string({ maxLength: 20 }).map((s) => `/${s}`),
  fc.constantFrom('/connect/ssh\r\nX-Ohs-Hop: 1', '/x HTTP/1.1\r\nx-ohs-hop: 1\r\n'),
);
const lineEnd = fc.oneof({ weight: 8, arbitrary: fc.constant('\r\n') }, { weight: 1, arbitrary: fc.constantFrom('\n', '\r') });

function serialise(r: { method: string; target: string; version: string; host: boolean; headers: Array<[string, string, string]>; tail: Uint8Array }): Buffer {
  let head = `${r.method} ${r.target} ${r.version}\r\n`;
  if (r.host) head += 'Host: gateway\r\n';
  for (const [n, v, eol] of r.headers) head += `${n}: ${v}${eol}`;
  return Buffer.concat([Buffer.from(`${head}\r\n`, 'latin1'), Buffer.from(r.tail)]);
}

// Requests Node accepts (CONNECT, upgrades, plain), with x-ohs-* headers in any case among them.
const cleanName = fc.oneof(
  fc.stringMatching(tokenChars),
  fc.constantFrom('x-ohs-hop', 'x-ohs-peer-secret', 'x-ohs-origin', 'x-ohs-', 'x-sandbox-id', 'x-sandbox-token').chain(recased),
);
const upgradeHeaders: Array<[string, string, string]> = [
  ['Connection', 'Upgrade', '\r\n'],
  ['Upgrade', 'websocket', '\r\n'],
];
const clean = fc
  .record({
    method: fc.constantFrom('CONNECT', 'GET', 'POST'),
    target: fc.oneof(fc.constantFrom('/connect/ssh', '/_ws_tunnel', '/'), fc.stringMatching(/^\/[A-Za-z0-9._~%!$&'()*+,;=:@/?-]{0,20}$/)),
    version: fc.constantFrom('HTTP/1.1', 'HTTP/1.0'),
    host: fc.constant(true),
    headers: fc.array(fc.tuple(cleanName, fc.string({ maxLength: 24 }), fc.constant('\r\n')), { maxLength: 8 }),
    upgrade: fc.boolean(),
    tail: fc.uint8Array({ maxLength: 16 }),
  })
  .map((r) => serialise({ ...r, headers: r.upgrade && r.method === 'GET' ? [...r.headers, ...upgradeHeaders] : r.headers }));
// Hostile heads: CR, LF, NUL and obs-fold in values, bare LF line ends, names with spaces, odd versions.
const dirty = fc
  .record({
    method,
    target,
    version: fc.oneof({ weight: 8, arbitrary: fc.constant('HTTP/1.1') }, { weight: 1, arbitrary: fc.constantFrom('HTTP/1.0', 'HTTP/2.0', 'HTTP/1.1 ') }),
    host: fc.boolean(),
    headers: fc.array(fc.tuple(headerName, headerValue, lineEnd), { maxLength: 8 }),
    tail: fc.uint8Array({ maxLength: 16 }),
  })
  .map(serialise);
const request = fc.oneof({ weight: 3, arbitrary: clean }, { weight: 2, arbitrary: dirty });

const isInternal = (name: string): boolean => name.toLowerCase().startsWith('x-ohs-');

describe('requestHead', () => {
  it('whatever Node accepts is replayed so that the upstream parses the same request minus x-ohs-* headers', async () => {
    await fuzzAssert(
      fc.asyncProperty(request, async (bytes) => {
        const first = await parse(sidecarParser, bytes);
        if (!first.ok) {
          counted('requestHead via the HTTP parser', 'refused-by-parser');
          return;
        }
        const replay = requestHead(first.req);
        const second = await parse(upstreamParser, replay);
        expect(second.ok).toBe(true);
        if (!second.ok) return;
        const kept: string[] = [];
        for (let i = 0; i + 1 < first.rawHeaders.length; i += 2) {
          if (!isInternal(first.rawHeaders[i] as string)) kept.push(first.rawHeaders[i] as string, first.rawHeaders[i + 1] as string);
        }
        // requestHead is what CONNECT and upgrades replay; the property holds for any request.
        counted('requestHead via the HTTP parser', `${first.event}${kept.length < first.rawHeaders.length ? '-stripped' : ''}`);
        expect(second.method).toBe(first.method);
        expect(second.url).toBe(first.url);
        expect(second.rawHeaders).toEqual(kept);
        for (let i = 0; i < second.rawHeaders.length; i += 2) expect(isInternal(second.rawHeaders[i] as string)).toBe(false);
        // The replayed head ends at its blank line: no second request can hide in it.
        expect(replay.indexOf('\r\n\r\n')).toBe(replay.length - 4);
      }),
    );
  }, FUZZ_TIMEOUT_MS);
});
