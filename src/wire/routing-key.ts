// Routing key extraction from the first request message of a sandbox-scoped gRPC stream
// (reference §2.0). Parsed with a real protobuf wire reader: fields may come in any order, unknown
// fields are skipped, a repeated scalar keeps its last value and repeated embedded messages merge,
// exactly as the gateway's own decoder (prost) would see the message.

import { BinaryReader, WireType } from '@bufbuild/protobuf/wire';
import type { KeyedGrpcClass } from '../classify/classify.ts';
import { OhsError } from '../errors.ts';

export type RoutingKey = { sandboxId: string } | { channelId: string };

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
 * The routing key of the first request message for `cls`. Throws OhsError:
 * OHS_ERR_MALFORMED_MESSAGE when the bytes do not decode or the first message has the wrong shape,
 * OHS_ERR_MISSING_ROUTING_KEY when the key is absent or empty.
 */
export function extractRoutingKey(cls: KeyedGrpcClass, message: Uint8Array): RoutingKey {
  let key: string | undefined;
  let what: string;
  try {
    switch (cls) {
      case 'supervisor-control': {
        // SupervisorMessage{ oneof payload { hello=1 SupervisorHello{sandbox_id=1}, heartbeat=2,
        // relay_open_result=3, relay_close=4 } }; the gateway requires Hello first (reference §2.1).
        const hello = readOneofMessage(message, 1, [1, 2, 3, 4]);
        if (hello === undefined) throw malformed('first ConnectSupervisor message must be hello');
        key = readStringField(hello, 1, 'SupervisorHello.sandbox_id');
        what = 'hello.sandbox_id';
        break;
      }
      case 'supervisor-relay': {
        // RelayFrame{ oneof payload { init=1 RelayInit{channel_id=1}, data=2 } } (reference §2.2).
        const init = readOneofMessage(message, 1, [1, 2]);
        if (init === undefined) throw malformed('first RelayStream message must be init');
        key = readStringField(init, 1, 'RelayInit.channel_id');
        what = 'init.channel_id';
        break;
      }
      case 'exec':
      case 'logs-get':
      case 'logs-push':
        key = readStringField([message], 1, 'sandbox_id');
        what = 'sandbox_id';
        break;
      case 'watch':
        key = readStringField([message], 1, 'WatchSandboxRequest.id');
        what = 'id';
        break;
    }
  } catch (err) {
    if (err instanceof OhsError) throw err;
    throw new OhsError('OHS_ERR_MALFORMED_MESSAGE', `cannot decode first ${cls} message: ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (key === undefined || key === '') {
    throw new OhsError('OHS_ERR_MISSING_ROUTING_KEY', `first ${cls} message has no ${what}`);
  }
  if (cls === 'supervisor-relay') return { channelId: validateSandboxId(key, 'message', what) };
  return { sandboxId: validateSandboxId(key, 'message', what) };
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
