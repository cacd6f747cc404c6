// Fuzz: routing-key extraction (src/wire/routing-key.ts) for every KeySpec in the method table.
// Valid messages are built field by field (any order, unknown fields of every wire type, repeated
// fields, oneof members switching, non-canonical length varints); the key extracted must be exactly
// the one protobuf's rules give (last scalar wins, embedded messages merge, the last oneof member
// wins). Arbitrary and mutated bytes must only ever throw OhsError, and any key returned must be
// bytes the message really contains.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { grpcMethod, methodNamed, OPENSHELL_SERVICE_PREFIX } from '../../src/classify/classify.ts';
import { OhsError } from '../../src/errors.ts';
import { extractRoutingKey, sandboxIdProblem, validateSandboxId, type KeySpec, type RequestKey } from '../../src/wire/routing-key.ts';
import { counted, FUZZ_TIMEOUT_MS, fuzzAssert, reportCounts } from './support.ts';
import { anyText, containsBytes, encode, idLike, msg, mutated, scattered, str, unknownEntry, utf8, vint, type Entry } from './proto-gen.ts';

reportCounts('routing-key');

/** Every method of the table (classify.ts METHODS); the first test checks each is still there. */
const METHOD_NAMES = [
  'ConnectSupervisor',
  'RelayStream',
  'ForwardTcp',
  'ExecSandbox',
  'ExecSandboxInteractive',
  'PushSandboxLogs',
  'GetSandboxLogs',
  'WatchSandbox',
  'StopSandbox',
  'StartSandbox',
  'DeleteSandbox',
  'ReportMainProcessExit',
  'ReportPolicyStatus',
  'UpdateConfig',
  'SubmitPolicyAnalysis',
  'ApproveDraftChunk',
  'RejectDraftChunk',
  'ApproveAllDraftChunks',
  'EditDraftChunk',
  'UndoDraftChunk',
  'ClearDraftChunks',
] as const;

type Expected = { key: RequestKey } | { code: 'OHS_ERR_MALFORMED_MESSAGE' | 'OHS_ERR_MISSING_ROUTING_KEY' };

/** One occurrence of a field the spec reads, in wire order. */
interface Occ {
  which: 'id' | 'token' | 'name' | 'workspace' | 'flag';
  text: string;
  flag: bigint;
  pad: number;
}

const pad = fc.oneof({ weight: 4, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 3 }) });

function occ(which: Occ['which'], text: fc.Arbitrary<string>): fc.Arbitrary<Occ> {
  return fc.record({ which: fc.constant(which), text, flag: fc.constant(0n), pad });
}
const flagOcc: fc.Arbitrary<Occ> = fc.record({
  which: fc.constant('flag' as const),
  text: fc.constant(''),
  flag: fc.oneof(fc.constantFrom(0n, 1n, 2n, 1n << 32n, 1n << 63n), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })),
  pad,
});

function fieldOf(spec: KeySpec, o: Occ): number {
  if (spec.kind === 'sandbox-name') {
    if (o.which === 'name') return spec.nameField;
    if (o.which === 'workspace') return spec.workspaceField;
    return spec.unlessTrue as number;
  }
  if (o.which === 'token' && spec.kind === 'sandbox-id') return spec.tokenField as number;
  return spec.field;
}

function encodeOccs(spec: KeySpec, occs: readonly (Occ | Entry)[]): Entry[] {
  return occs.map((o) => {
    if (!('which' in o)) return o;
    const f = fieldOf(spec, o);
    return o.which === 'flag' ? vint(f, o.flag) : str(f, o.text, o.pad);
  });
}

/** The fields of the innermost message that the spec reads. */
function readFields(spec: KeySpec): number[] {
  if (spec.kind === 'sandbox-name') return [spec.nameField, spec.workspaceField, ...(spec.unlessTrue === undefined ? [] : [spec.unlessTrue])];
  return [spec.field, ...(spec.kind === 'sandbox-id' && spec.tokenField !== undefined ? [spec.tokenField] : [])];
}

/** Known-field occurrences of one (inner) message: 0..3 of each field the spec reads. */
function occurrences(spec: KeySpec): fc.Arbitrary<Occ[]> {
  const kinds: Array<fc.Arbitrary<Occ>> =
    spec.kind === 'sandbox-name'
      ? [occ('name', anyText), occ('workspace', anyText), ...(spec.unlessTrue === undefined ? [] : [flagOcc])]
      : [occ('id', idLike), ...(spec.kind === 'sandbox-id' && spec.tokenField !== undefined ? [occ('token', anyText)] : [])];
  return fc.array(fc.oneof(...kinds), { maxLength: 5 });
}

/** A oneof member occurrence: the wanted one carries known fields, the others opaque bytes. */
interface Member {
  field: number;
  /** Known-field occurrences among unknown fields, in wire order. */
  inner: Array<Occ | Entry>;
  opaque: Uint8Array;
  pad: number;
}

interface Built {
  bytes: Buffer;
  expected: Expected;
}

function lastText(occs: readonly Occ[], which: Occ['which']): string | undefined {
  let v: string | undefined;
  for (const o of occs) if (o.which === which) v = utf8(o.text);
  return v;
}

/** Protobuf's meaning of the known fields, as the gateway (prost) would decode them. */
function expectedFor(spec: KeySpec, occs: readonly Occ[]): Expected {
  if (spec.kind === 'sandbox-name') {
    let flag = 0n;
    for (const o of occs) if (o.which === 'flag') flag = o.flag;
    if (spec.unlessTrue !== undefined && flag !== 0n) return { key: { unscoped: true } };
    const name = lastText(occs, 'name');
    if (name === undefined || name === '') return { code: 'OHS_ERR_MISSING_ROUTING_KEY' };
    const ws = lastText(occs, 'workspace');
    return { key: { sandboxName: name, workspace: ws === undefined || ws === '' ? 'default' : ws } };
  }
  const id = lastText(occs, 'id');
  if (id === undefined || id === '') return { code: 'OHS_ERR_MISSING_ROUTING_KEY' };
  // Independent statement of the id rule: 1..128 of [A-Za-z0-9._-].
  if (!/^[A-Za-z0-9._-]{1,128}$/.test(id)) return { code: 'OHS_ERR_MALFORMED_MESSAGE' };
  if (spec.kind === 'channel-id') return { key: { channelId: id } };
  const token = lastText(occs, 'token');
  return { key: token === undefined ? { sandboxId: id } : { sandboxId: id, token } };
}

/** Valid messages for `spec`, with what they mean. */
function validMessage(spec: KeySpec): fc.Arbitrary<Built> {
  const within = spec.kind === 'sandbox-name' ? undefined : spec.within;
  const innerExtra = unknownEntry(readFields(spec));
  if (within === undefined) {
    return occurrences(spec)
      .chain((occs) => scattered<Occ | Entry>(occs, innerExtra))
      .map((all) => {
        const occs = all.filter((x): x is Occ => 'which' in x);
        return { bytes: encode(encodeOccs(spec, all)), expected: expectedFor(spec, occs) };
      });
  }
  const member: fc.Arbitrary<Member> = fc.record({
    field: fc.oneof({ weight: 3, arbitrary: fc.constant(within.field) }, { weight: 1, arbitrary: fc.constantFrom(...within.oneof) }),
    inner: occurrences(spec).chain((occs) => scattered<Occ | Entry>(occs, innerExtra, 4)),
    opaque: fc.uint8Array({ maxLength: 16 }),
    pad,
  });
  return fc
    .array(member, { maxLength: 4 })
    .chain((members) => scattered<Member | Entry>(members, unknownEntry(within.oneof)).map((outer) => ({ members, outer })))
    .map(({ members, outer }) => {
      const entries = outer.map((e): Entry => {
        if (!('inner' in e)) return e;
        if (e.field !== within.field) return { f: e.field, wt: 2, b: e.opaque, pad: e.pad };
        return msg(e.field, encodeOccs(spec, e.inner), e.pad);
      });
      const bytes = encode(entries);
      // protobuf: the last oneof member seen is the one set; a repeated occurrence of the same
      // member merges into it, one after a different member starts afresh.
      let tail: Member[] = [];
      for (const m of members) tail = m.field === within.field ? [...tail, m] : [];
      const lastMember = members[members.length - 1];
      if (lastMember === undefined || lastMember.field !== within.field) return { bytes, expected: { code: 'OHS_ERR_MALFORMED_MESSAGE' } as Expected };
      const occs = tail.flatMap((m) => m.inner.filter((x): x is Occ => 'which' in x));
      return { bytes, expected: expectedFor(spec, occs) };
    });
}

function outcome(r: Expected): string {
  if ('code' in r) return r.code.replace('OHS_ERR_', '').toLowerCase();
  return 'unscoped' in r.key ? 'unscoped' : 'key';
}

function run(spec: KeySpec, bytes: Uint8Array, method: string): Expected {
  try {
    return { key: extractRoutingKey(spec, bytes, method) };
  } catch (err) {
    if (!(err instanceof OhsError)) throw new Error(`non-OhsError thrown: ${String(err)}`, { cause: err });
    if (err.code !== 'OHS_ERR_MALFORMED_MESSAGE' && err.code !== 'OHS_ERR_MISSING_ROUTING_KEY') throw new Error(`unexpected code ${err.code}`);
    return { code: err.code };
  }
}

/** Every string in a returned key is a run of bytes of the message (or the documented default workspace). */
function keyIsInBytes(key: RequestKey, bytes: Uint8Array): boolean {
  const present = (s: string): boolean => containsBytes(bytes, Buffer.from(s, 'utf8'));
  if ('unscoped' in key) return true;
  if ('channelId' in key) return present(key.channelId) && sandboxIdProblem(key.channelId) === undefined;
  if ('sandboxName' in key) return present(key.sandboxName) && key.sandboxName !== '' && (key.workspace === 'default' || present(key.workspace));
  return present(key.sandboxId) && sandboxIdProblem(key.sandboxId) === undefined && (key.token === undefined || present(key.token));
}

describe('routing-key extraction', () => {
  it('the fuzzed method list is the classifier table', async () => {
    for (const name of METHOD_NAMES) expect(grpcMethod(`${OPENSHELL_SERVICE_PREFIX}${name}`)?.name).toBe(name);
  });

  // Methods that share one KeySpec (same kind and field numbers) are one target: each case picks
  // one of them, so every method is exercised and every distinct spec gets the full case count.
  const groups = new Map<string, string[]>();
  for (const name of METHOD_NAMES) {
    const { what: _what, ...shape } = methodNamed(name).key as KeySpec & { what: string };
    const id = JSON.stringify(shape, (k, v: unknown) => (k === 'what' ? undefined : v));
    groups.set(id, [...(groups.get(id) ?? []), name]);
  }

  for (const names of groups.values()) {
    const spec = methodNamed(names[0] as string).key;
    const label = names.length > 1 ? `${names[0]} (+${names.length - 1} same spec)` : (names[0] as string);
    const method = fc.constantFrom(...names);

    it(`${label}: a well-formed message yields exactly the key protobuf gives it (any order, unknown and repeated fields)`, async () => {
      await fuzzAssert(
        fc.property(validMessage(spec), method, ({ bytes, expected }, name) => {
          const got = run(spec, bytes, name);
          counted(`extractRoutingKey well-formed ${label}`, outcome(got));
          expect(got).toEqual(expected);
        }),
      );
    }, FUZZ_TIMEOUT_MS);

    it(`${label}: arbitrary and mutated bytes throw only OhsError and never yield a key the bytes lack`, async () => {
      const input = fc.oneof(fc.uint8Array({ maxLength: 64 }), validMessage(spec).chain((b) => mutated(b.bytes)));
      await fuzzAssert(
        fc.property(input, method, (bytes, name) => {
          const r = run(spec, bytes, name);
          counted(`extractRoutingKey arbitrary ${label}`, outcome(r));
          if ('key' in r) expect(keyIsInBytes(r.key, bytes)).toBe(true);
        }),
      );
    }, FUZZ_TIMEOUT_MS);
  }

  it('validateSandboxId accepts exactly 1..128 of [A-Za-z0-9._-] and throws only OhsError', async () => {
    await fuzzAssert(
      fc.property(idLike, fc.constantFrom('header', 'message') as fc.Arbitrary<'header' | 'message'>, (id, origin) => {
        counted('validateSandboxId');
        const ok = /^[A-Za-z0-9._-]{1,128}$/.test(id);
        expect(sandboxIdProblem(id) === undefined).toBe(ok);
        try {
          expect(validateSandboxId(id, origin)).toBe(id);
          expect(ok).toBe(true);
        } catch (err) {
          expect(err).toBeInstanceOf(OhsError);
          expect(ok).toBe(false);
          const code = (err as OhsError).code;
          expect(code).toBe(id === '' ? 'OHS_ERR_MISSING_ROUTING_KEY' : origin === 'header' ? 'OHS_ERR_BAD_REQUEST' : 'OHS_ERR_MALFORMED_MESSAGE');
        }
      }),
    );
  }, FUZZ_TIMEOUT_MS);
});
