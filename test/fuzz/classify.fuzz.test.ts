// Fuzz: traffic classification (src/classify/classify.ts, src/classify/service-host.ts). Nothing
// here may throw on any input; a decision taken on a prefix of a connection's bytes must never
// change when more bytes arrive; only exact method paths and the exact CONNECT target are
// sandbox-scoped; x-ohs-* headers in any case never survive stripping.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  classifyGrpcPath,
  classifyHttp1,
  DEFAULT_SSH_CONNECT_PATH,
  detectPreface,
  grpcMethod,
  H2_PREFACE,
  INTERNAL_HEADER_PREFIX,
  isGrpcContentType,
  methodNamed,
  OPENSHELL_SERVICE_PREFIX,
  stripInternalHeaders,
  type Preface,
} from '../../src/classify/classify.ts';
import { DEFAULT_SERVICE_BASE_DOMAINS, endpointKey, parseServiceHost } from '../../src/classify/service-host.ts';
import { counted, FUZZ_TIMEOUT_MS, fuzzAssert, reportCounts } from './support.ts';

reportCounts('classify');

const METHOD_NAMES = [
  'ConnectSupervisor', 'RelayStream', 'ForwardTcp', 'ExecSandbox', 'ExecSandboxInteractive', 'PushSandboxLogs', 'GetSandboxLogs',
  'WatchSandbox', 'StopSandbox', 'StartSandbox', 'DeleteSandbox', 'ReportMainProcessExit', 'ReportPolicyStatus', 'UpdateConfig',
  'SubmitPolicyAnalysis', 'ApproveDraftChunk', 'RejectDraftChunk', 'ApproveAllDraftChunks', 'EditDraftChunk', 'UndoDraftChunk', 'ClearDraftChunks',
];
const SCOPED_PATHS = new Set(METHOD_NAMES.map((n) => `${OPENSHELL_SERVICE_PREFIX}${n}`));

/** Randomly re-cases letters of `s`. */
function recased(s: string): fc.Arbitrary<string> {
  return fc.array(fc.boolean(), { minLength: s.length, maxLength: s.length }).map((flips) =>
    [...s].map((c, i) => (flips[i] ? (c === c.toLowerCase() ? c.toUpperCase() : c.toLowerCase()) : c)).join(''),
  );
}

/** Near misses of a real path: re-cased, with bytes inserted, dropped or appended, percent-encoded. */
const pathLike: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(...SCOPED_PATHS),
  fc.constantFrom(...SCOPED_PATHS).chain(recased),
  fc.tuple(fc.constantFrom(...SCOPED_PATHS), fc.string({ maxLength: 4 }), fc.nat()).map(([p, ins, at]) => p.slice(0, at % (p.length + 1)) + ins + p.slice(at % (p.length + 1))),
  fc.tuple(fc.constantFrom(...SCOPED_PATHS), fc.nat()).map(([p, at]) => p.slice(0, at % p.length) + p.slice((at % p.length) + 1)),
  fc.constantFrom(...SCOPED_PATHS).map((p) => `${p}/`),
  fc.constantFrom(...SCOPED_PATHS).map((p) => p.replace('Sandbox', '%53andbox')),
  fc.constantFrom(...SCOPED_PATHS).map((p) => p.replace('/openshell.v1.OpenShell/', '/openshell.v2.OpenShell/')),
  fc.string({ maxLength: 60 }),
  fc.string({ unit: 'binary', maxLength: 60 }),
);

describe('gRPC path classification', () => {
  it('only the exact paths of the method table are sandbox-scoped, and the class matches the method', async () => {
    await fuzzAssert(
      fc.property(pathLike, (path) => {
        const m = grpcMethod(path);
        const cls = classifyGrpcPath(path);
        counted('grpcMethod/classifyGrpcPath', m ? 'scoped' : 'passthrough');
        expect(m !== undefined).toBe(SCOPED_PATHS.has(path));
        if (m) {
          expect(path).toBe(`${OPENSHELL_SERVICE_PREFIX}${m.name}`);
          expect(methodNamed(m.name)).toBe(m);
          expect(cls).toBe(m.cls);
        } else {
          expect(cls).toBe('passthrough');
        }
      }),
    );
  }, FUZZ_TIMEOUT_MS);

  it('isGrpcContentType is exactly a case-insensitive application/grpc prefix', async () => {
    const ct = fc.oneof(
      fc.constantFrom('application/grpc', 'application/grpc+proto', 'application/grpc-web', 'application/json', 'text/plain', ''),
      fc.constantFrom('application/grpc', 'application/grpc+proto').chain(recased),
      fc.string({ maxLength: 30 }),
    );
    await fuzzAssert(
      fc.property(fc.option(ct, { nil: undefined }), (value) => {
        const got = isGrpcContentType(value);
        counted('isGrpcContentType', String(got));
        expect(got).toBe(value !== undefined && value.toLowerCase().startsWith('application/grpc'));
      }),
    );
  }, FUZZ_TIMEOUT_MS);
});

describe('HTTP/1.1 classification', () => {
  it("only CONNECT with exactly the SSH path is an ssh tunnel (case, authority-form, suffixes don't match)", async () => {
    const method = fc.oneof(fc.constantFrom('CONNECT', 'GET', 'POST', 'PUT'), fc.constant('CONNECT').chain(recased), fc.stringMatching(/^[A-Z]{1,10}$/));
    const target = fc.oneof(
      fc.constant(DEFAULT_SSH_CONNECT_PATH),
      fc.constant(DEFAULT_SSH_CONNECT_PATH).chain(recased),
      fc.constantFrom('/connect/ssh/', '/connect/ssh?x=1', '//connect/ssh', 'gateway:8080', '/connect/ssh#', '/connect%2Fssh', 'http://h/connect/ssh'),
      fc.string({ maxLength: 30 }),
    );
    await fuzzAssert(
      fc.property(method, target, (m, t) => {
        const cls = classifyHttp1(m, t);
        counted('classifyHttp1', cls);
        expect(cls).toBe(m === 'CONNECT' && t === DEFAULT_SSH_CONNECT_PATH ? 'ssh-tunnel' : 'passthrough');
      }),
    );
  }, FUZZ_TIMEOUT_MS);
});

describe('connection preface detection', () => {
  const prefaceBytes: fc.Arbitrary<Uint8Array> = fc.oneof(
    fc.uint8Array({ maxLength: 80 }),
    fc.uint8Array({ maxLength: 40 }).map((tail) => Buffer.concat([H2_PREFACE, tail])),
    fc.tuple(fc.nat({ max: H2_PREFACE.length }), fc.uint8Array({ maxLength: 30 })).map(([n, tail]) => Buffer.concat([H2_PREFACE.subarray(0, n), tail])),
    fc.tuple(fc.stringMatching(/^[A-Z]{1,24}$/), fc.string({ maxLength: 40 })).map(([m, rest]) => Buffer.from(`${m} ${rest}`, 'latin1')),
    fc.tuple(fc.integer({ min: 0, max: 4 }), fc.uint8Array({ maxLength: 30 })).map(([minor, tail]) => Buffer.concat([Buffer.from([0x16, 0x03, minor]), tail])),
    fc.uint8Array({ maxLength: 30 }).map((tail) => Buffer.concat([Buffer.from([0x16]), tail])),
  );

  /** What the first bytes must be, stated independently. */
  function expected(b: Uint8Array): Preface {
    const buf = Buffer.from(b);
    if (buf.length === 0) return 'need-more';
    const n = Math.min(buf.length, H2_PREFACE.length);
    if (buf.subarray(0, n).equals(H2_PREFACE.subarray(0, n))) return n === H2_PREFACE.length ? 'h2' : 'need-more';
    if (buf[0] === 0x16) return buf.length === 1 ? 'need-more' : buf[1] === 0x03 ? 'tls' : 'garbage';
    const text = buf.subarray(0, 21).toString('latin1');
    const m = /^([A-Z]*)( |[^A-Z]|$)/.exec(text);
    const letters = (m?.[1] ?? '').length;
    if (m?.[2] === ' ') return letters > 0 && letters <= 20 ? 'http1' : 'garbage';
    if (m?.[2] !== '' ) return 'garbage';
    return buf.length <= 20 ? 'need-more' : 'garbage';
  }

  it('matches the preface rules, never throws, and is decided within 24 bytes', async () => {
    await fuzzAssert(
      fc.property(prefaceBytes, (bytes) => {
        const got = detectPreface(bytes);
        counted('detectPreface', got);
        expect(got).toBe(expected(bytes));
        if (bytes.length >= H2_PREFACE.length) expect(got).not.toBe('need-more');
      }),
    );
  }, FUZZ_TIMEOUT_MS);

  it('a decision taken on a prefix never changes as more bytes arrive (the listener acts on prefixes)', async () => {
    await fuzzAssert(
      fc.property(prefaceBytes, (bytes) => {
        let decided: Preface | undefined;
        for (let i = 0; i <= bytes.length; i++) {
          const got = detectPreface(bytes.subarray(0, i));
          if (decided !== undefined) expect(got).toBe(decided);
          else if (got !== 'need-more') decided = got;
        }
        counted('detectPreface prefix-stability', decided ?? 'need-more');
      }),
    );
  }, FUZZ_TIMEOUT_MS);
});

describe('internal header stripping', () => {
  const internalName = fc.tuple(fc.constant(INTERNAL_HEADER_PREFIX), fc.stringMatching(/^[a-z0-9-]{0,12}$/)).map(([p, s]) => p + s).chain(recased);
  const otherName = fc.oneof(
    fc.stringMatching(/^[a-zA-Z0-9-]{1,16}$/),
    fc.constantFrom('x-ohs', 'x-oh-s-hop', 'x_ohs_hop', ' x-ohs-hop', 'xx-ohs-hop', 'x-sandbox-id', 'authorization'),
  ).filter((n) => !n.toLowerCase().startsWith(INTERNAL_HEADER_PREFIX));
  const headers = fc.dictionary(fc.oneof(internalName, otherName), fc.oneof(fc.string({ maxLength: 10 }), fc.array(fc.string({ maxLength: 5 }), { maxLength: 3 })), { maxKeys: 12 });

  it('removes every x-ohs-* header in any case, keeps every other one, and is idempotent', async () => {
    await fuzzAssert(
      fc.property(headers, (original) => {
        const h: Record<string, unknown> = { ...original };
        const removed = stripInternalHeaders(h);
        counted('stripInternalHeaders', Object.keys(removed).length > 0 ? 'stripped' : 'clean');
        for (const name of Object.keys(h)) expect(name.toLowerCase().startsWith('x-ohs-')).toBe(false);
        for (const name of Object.keys(removed)) expect(name.toLowerCase().startsWith('x-ohs-')).toBe(true);
        expect({ ...h, ...removed }).toEqual(original);
        expect(Object.keys(h).length + Object.keys(removed).length).toBe(Object.keys(original).length);
        expect(stripInternalHeaders(h)).toEqual({});
      }),
    );
  }, FUZZ_TIMEOUT_MS);
});

describe('service host parsing', () => {
  // DNS-label-like names as Kubernetes and the gateway make them: no leading/trailing '-', no '--'.
  const label = fc.stringMatching(/^[a-z0-9](?:-?[a-z0-9]){0,10}$/);
  const base = fc.constantFrom(...DEFAULT_SERVICE_BASE_DOMAINS, 'apps.example.com', 'localhost');
  const bases = fc.uniqueArray(base, { minLength: 1, maxLength: 3 });
  const port = fc.option(fc.integer({ min: 0, max: 65535 }), { nil: undefined });

  it('a host built from workspace, sandbox and service parses back to exactly them', async () => {
    await fuzzAssert(
      fc.property(label, label, fc.option(label, { nil: undefined }), bases, fc.nat(), port, (ws, sb, svc, bs, pick, p) => {
        const b = bs[pick % bs.length] as string;
        const host = `${ws}--${sb}${svc === undefined ? '' : `--${svc}`}.${b}${p === undefined ? '' : `:${p}`}`;
        const got = parseServiceHost(host, bs);
        counted('parseServiceHost round-trip', svc === undefined ? 'default-endpoint' : 'named-service');
        // A shorter base listed first may also match (e.g. `localhost` before `openshell.localhost`);
        // what is parsed must then still re-encode to the same name under the base that matched.
        const matched = bs.find((x) => host.split(':')[0]?.endsWith(`.${x}`));
        if (matched === b) expect(got).toEqual({ workspace: ws, sandbox: sb, service: svc ?? '' });
        else if (got) expect(`${got.workspace}--${endpointKey(got)}.${matched}`).toBe(host.split(':')[0]);
      }),
    );
  }, FUZZ_TIMEOUT_MS);

  it('any host: never throws; what it parses re-encodes to the host name and has no "--" inside a part', async () => {
    const anyHost = fc.oneof(
      fc.string({ maxLength: 60 }),
      fc.tuple(fc.string({ maxLength: 20 }), base).map(([s, b]) => `${s}.${b}`),
      fc.tuple(fc.stringMatching(/^[a-z-]{0,20}$/), base, fc.string({ maxLength: 6 })).map(([s, b, tail]) => `${s}.${b}${tail}`),
      {
        weight: 4,
        arbitrary: fc
          .tuple(fc.array(fc.constantFrom('a', 'b7', '-', '--', '---', '.'), { maxLength: 8 }), base, fc.constantFrom('', ':8080', ':', ':x:y'))
          .map(([parts, b, p]) => `${parts.join('')}.${b}${p}`),
      },
    );
    await fuzzAssert(
      fc.property(anyHost, bases, (host, bs) => {
        const got = parseServiceHost(host, bs);
        counted('parseServiceHost arbitrary', got ? 'service-host' : 'not-service');
        if (!got) return;
        const name = host.includes(':') ? host.slice(0, host.indexOf(':')) : host;
        const b = bs.find((x) => name.endsWith(`.${x}`));
        expect(b).toBeDefined();
        expect(`${got.workspace}--${endpointKey(got)}.${b}`).toBe(name);
        expect(got.workspace).not.toBe('');
        expect(got.sandbox).not.toBe('');
        expect(got.workspace.includes('--')).toBe(false);
        expect(got.sandbox.includes('--')).toBe(false);
        expect(got.service.includes('--')).toBe(false);
      }),
    );
  }, FUZZ_TIMEOUT_MS);
});
