// Routing key extraction from the first request message of a sandbox-scoped gRPC stream
// (reference §2.0). Parsed with a real protobuf wire reader: fields may come in any order, unknown
// fields are skipped, a repeated scalar keeps its last value and repeated embedded messages merge,
// exactly as the gateway's own decoder (prost) would see the message.

import { BinaryReader, WireType } from '@bufbuild/protobuf/wire';
import { OhsError } from '../errors.ts';

export const MAX_SANDBOX_ID_LENGTH = 128;
const SANDBOX_ID_RE = /^[A-Za-z0-9._-]+$/;

export type SandboxIdProblem = 'empty' | 'too-long' | 'invalid-char';

/** Why `id` is unusable as a routing key, or undefined when it is fine. */
export function sandboxIdProblem(id: string): SandboxIdProblem | undefined {
  if (id.length === 0) return 'empty';
  if (id.length > MAX_SANDBOX_ID_LENGTH) return 'too-long';
  if (!SANDBOX_ID_RE.test(id)) return 'invalid-char';
  return undefined;
}

/**
 * Checks a sandbox (or relay channel) id before it is used as a routing key, a store key or a log
 * field. Gateway ids are UUIDv4 strings (reference §2.0); we accept a wider printable set, and
 * throw OHS_ERR_MISSING_ROUTING_KEY for an empty id, otherwise OHS_ERR_BAD_REQUEST for a header
 * value or OHS_ERR_MALFORMED_MESSAGE for a value decoded from a message.
 */
export function validateSandboxId(id: string, origin: 'header' | 'message' = 'message', what = 'sandbox id'): string {
  const problem = sandboxIdProblem(id);
  if (problem === undefined) return id;
  if (problem === 'empty') throw new OhsError('OHS_ERR_MISSING_ROUTING_KEY', `${what} is empty`);
  const why =
    problem === 'too-long'
      ? `is longer than ${MAX_SANDBOX_ID_LENGTH} characters`
      : 'may contain only letters, digits, dot, underscore and hyphen';
  // The id itself is not echoed: it is client-controlled and may be arbitrary bytes.
  throw new OhsError(origin === 'header' ? 'OHS_ERR_BAD_REQUEST' : 'OHS_ERR_MALFORMED_MESSAGE', `${what} ${why}`, {
    details: { reason: problem, length: id.length },
  });
}

/**
 * Where a request's routing key lives in its first message (reference §2.0, §2.9). Field numbers
 * only: the same spec serves both gateway generations, since upstream never renumbered these fields.
 */
export type KeySpec =
  | {
      kind: 'sandbox-id';
      /** Field holding the id, inside `within` when set. */
      field: number;
      /** The embedded message holding the id, and the oneof it belongs to (e.g. `hello` of SupervisorMessage). */
      within?: { field: number; oneof: readonly number[]; what: string };
      /** A second string field read from the same message (ForwardTcp's `authorization_token`). */
      tokenField?: number;
      /** How the key is named in errors, e.g. `hello.sandbox_id`. */
      what: string;
    }
  | { kind: 'channel-id'; within: { field: number; oneof: readonly number[]; what: string }; field: number; what: string }
  | {
      kind: 'sandbox-name';
      nameField: number;
      workspaceField: number;
      /** A bool field that, when true, makes the request not sandbox-scoped (UpdateConfig.global). */
      unlessTrue?: number;
      what: string;
    };

export type RequestKey =
  | { sandboxId: string; token?: string }
  | { channelId: string }
  | { sandboxName: string; workspace: string }
  /** The request names no sandbox (e.g. a global config update). */
  | { unscoped: true };

/** The gateway's default workspace: an empty request workspace means it (reference §2.9). */
export const DEFAULT_WORKSPACE = 'default';

/**
 * The routing key of a first request message. Throws OhsError: OHS_ERR_MALFORMED_MESSAGE when the
 * bytes do not decode or the message has the wrong shape, OHS_ERR_MISSING_ROUTING_KEY when the key
 * is absent or empty.
 */
export function extractRoutingKey(spec: KeySpec, message: Uint8Array, method = 'request'): RequestKey {
  const first = `first ${method} message`;
  try {
    switch (spec.kind) {
      case 'sandbox-id': {
        const chunks = spec.within ? readWithin(message, spec.within, first) : [message];
        const id = readStringField(chunks, spec.field, spec.what);
        if (id === undefined || id === '') throw new OhsError('OHS_ERR_MISSING_ROUTING_KEY', `${first} has no ${spec.what}`);
        const key: { sandboxId: string; token?: string } = { sandboxId: validateSandboxId(id, 'message', spec.what) };
        if (spec.tokenField !== undefined) {
          const token = readStringField(chunks, spec.tokenField, 'authorization_token');
          if (token !== undefined) key.token = token;
        }
        return key;
      }
      case 'channel-id': {
        const id = readStringField(readWithin(message, spec.within, first), spec.field, spec.what);
        if (id === undefined || id === '') throw new OhsError('OHS_ERR_MISSING_ROUTING_KEY', `${first} has no ${spec.what}`);
        return { channelId: validateSandboxId(id, 'message', spec.what) };
      }
      case 'sandbox-name': {
        if (spec.unlessTrue !== undefined && readBoolField(message, spec.unlessTrue)) return { unscoped: true };
        const name = readStringField([message], spec.nameField, 'name');
        if (name === undefined || name === '') throw new OhsError('OHS_ERR_MISSING_ROUTING_KEY', `${first} has no ${spec.what}`);
        const workspace = readStringField([message], spec.workspaceField, 'workspace');
        return { sandboxName: name, workspace: workspace === undefined || workspace === '' ? DEFAULT_WORKSPACE : workspace };
      }
    }
  } catch (err) {
    if (err instanceof OhsError) throw err;
    throw new OhsError('OHS_ERR_MALFORMED_MESSAGE', `cannot decode ${first}: ${(err as Error).message}`, { cause: err });
  }
}

function readWithin(message: Uint8Array, within: { field: number; oneof: readonly number[]; what: string }, first: string): Uint8Array[] {
  const chunks = readOneofMessage(message, within.field, within.oneof);
  if (chunks === undefined) throw malformed(`${first} must be ${within.what}`);
  return chunks;
}

function malformed(message: string): OhsError {
  return new OhsError('OHS_ERR_MALFORMED_MESSAGE', message);
}

const WIRE_TYPE_NAMES: Readonly<Record<number, string>> = {
  [WireType.Varint]: 'varint',
  [WireType.Bit64]: 'fixed64',
  [WireType.LengthDelimited]: 'length-delimited',
  [WireType.StartGroup]: 'start-group',
  [WireType.EndGroup]: 'end-group',
  [WireType.Bit32]: 'fixed32',
};

/**
 * Calls `visit` for every field of one encoded message. `visit` returns true when it consumed the
 * value; otherwise the value is skipped as an unknown field.
 */
function forEachField(bytes: Uint8Array, visit: (fieldNo: number, wireType: WireType, reader: BinaryReader) => boolean): void {
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [fieldNo, wireType] = reader.tag();
    if (wireType === WireType.EndGroup) throw malformed(`unexpected end-group tag for field ${fieldNo}`);
    if (!visit(fieldNo, wireType, reader)) reader.skip(wireType, fieldNo);
  }
}

function expectLengthDelimited(fieldNo: number, wireType: WireType, name: string): void {
  if (wireType !== WireType.LengthDelimited) {
    const got = WIRE_TYPE_NAMES[wireType] ?? String(wireType);
    throw malformed(`field ${fieldNo} (${name}) has wire type ${got}, expected length-delimited`);
  }
}

/**
 * For a message whose fields `oneofFields` form a oneof of embedded messages, returns the encoded
 * chunks of `wanted` when it is the member set last (a later occurrence of another member replaces
 * it, a repeated occurrence of the same member merges into it), or undefined when another member
 * or none is set. Merging is concatenation: protobuf defines parsing concatenated encodings of a
 * message as merging them.
 */
function readOneofMessage(bytes: Uint8Array, wanted: number, oneofFields: readonly number[]): Uint8Array[] | undefined {
  let current: number | undefined;
  let chunks: Uint8Array[] = [];
  forEachField(bytes, (fieldNo, wireType, reader) => {
    if (!oneofFields.includes(fieldNo)) return false;
    expectLengthDelimited(fieldNo, wireType, `oneof member ${fieldNo}`);
    const value = reader.bytes();
    if (current !== fieldNo) chunks = [];
    current = fieldNo;
    if (fieldNo === wanted) chunks.push(value);
    return true;
  });
  return current === wanted ? chunks : undefined;
}

/** Last occurrence of string field `wanted` across the (merged) chunks of one message. */
function readStringField(chunks: readonly Uint8Array[], wanted: number, name: string): string | undefined {
  let value: string | undefined;
  for (const chunk of chunks) {
    forEachField(chunk, (fieldNo, wireType, reader) => {
      if (fieldNo !== wanted) return false;
      expectLengthDelimited(fieldNo, wireType, name);
      // Strict: proto3 strings must be valid UTF-8, and prost rejects them otherwise.
      value = reader.string(true);
      return true;
    });
  }
  return value;
}

/** Last occurrence of bool field `wanted` (proto3: absent = false). */
function readBoolField(bytes: Uint8Array, wanted: number): boolean {
  let value = false;
  forEachField(bytes, (fieldNo, wireType, reader) => {
    if (fieldNo !== wanted) return false;
    if (wireType !== WireType.Varint) throw malformed(`field ${fieldNo} has wire type ${WIRE_TYPE_NAMES[wireType] ?? wireType}, expected varint`);
    value = reader.bool();
    return true;
  });
  return value;
}
