// Readers for the prost-encoded payloads of the gateway's `objects` rows (reference §3.2), with a
// real wire reader. Pure: bytes in, values out. Both gateway generations are understood, because a
// sidecar must never mistake "a field it cannot see" for a value (a phase read as 0 would make an
// unseen disconnect write look seen).
import { BinaryReader, WireType } from '@bufbuild/protobuf/wire';

export const PHASE_PROVISIONING = 1;
export const PHASE_READY = 2;
export const PHASE_ERROR = 3;
export const PHASE_DELETING = 4;
/** HEAD only (reference §2.9: StopSandbox). */
export const PHASE_STOPPING = 6;
export const PHASE_STOPPED = 7;

/**
 * Phases no supervisor is coming back from by itself: a request for such a sandbox is never held.
 * Error is not one of them (a supervisor that reconnects makes it Ready again).
 */
export function phaseWillNotReconnect(phase: number): boolean {
  return phase === PHASE_DELETING || phase === PHASE_STOPPING || phase === PHASE_STOPPED;
}

/**
 * Where the phase was found: `Sandbox.phase` (field 4) at seed, `Sandbox.status(3).phase(6)` at
 * HEAD (field 4 is reserved there), or nowhere (proto3 omits a 0 value, so "unspecified").
 */
export type PayloadLayout = 'seed' | 'head' | 'unknown';

export interface SandboxPayloadPhase {
  phase: number;
  layout: PayloadLayout;
}

/** Calls `visit` for each field; a field `visit` does not consume is skipped. */
function forEachField(bytes: Uint8Array, visit: (field: number, wireType: WireType, reader: BinaryReader) => boolean): void {
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (!visit(field, wireType, reader)) reader.skip(wireType, field);
  }
}

/** The phase of a `Sandbox` payload in either layout. Throws on undecodable bytes. */
export function sandboxPayloadPhase(payload: Uint8Array): SandboxPayloadPhase {
  let seedPhase: number | undefined;
  let headPhase: number | undefined;
  forEachField(payload, (field, wireType, reader) => {
    if (field === 4 && wireType === WireType.Varint) {
      seedPhase = reader.int32();
      return true;
    }
    if (field === 3 && wireType === WireType.LengthDelimited) {
      // Repeated occurrences of an embedded message merge; the last phase seen wins.
      forEachField(reader.bytes(), (f, wt, r) => {
        if (f !== 6 || wt !== WireType.Varint) return false;
        headPhase = r.int32();
        return true;
      });
      return true;
    }
    return false;
  });
  if (seedPhase !== undefined) return { phase: seedPhase, layout: 'seed' };
  if (headPhase !== undefined) return { phase: headPhase, layout: 'head' };
  return { phase: 0, layout: 'unknown' };
}

/** `Sandbox.phase` in whichever layout the payload uses; 0 when absent. */
export function sandboxPhase(payload: Uint8Array): number {
  return sandboxPayloadPhase(payload).phase;
}

export interface SshSessionPayload {
  sandboxId: string;
  expiresAtMs: number;
  revoked: boolean;
}

/** `SshSession{metadata=1, sandbox_id=2, token=3, expires_at_ms=4, revoked=5}` (same at seed and HEAD). */
export function sshSessionPayload(payload: Uint8Array): SshSessionPayload {
  const out: SshSessionPayload = { sandboxId: '', expiresAtMs: 0, revoked: false };
  forEachField(payload, (field, wireType, reader) => {
    if (field === 2 && wireType === WireType.LengthDelimited) out.sandboxId = reader.string();
    else if (field === 4 && wireType === WireType.Varint) out.expiresAtMs = Number(reader.int64());
    else if (field === 5 && wireType === WireType.Varint) out.revoked = reader.bool();
    else return false;
    return true;
  });
  return out;
}

/**
 * The gateway's own token rule (reference §3.2; ForwardTcp `validate_ssh_forward_token`): the row
 * exists, is not revoked, names this sandbox, and has not expired.
 */
export function sshSessionValidFor(session: SshSessionPayload, sandboxId: string, nowMs: number): boolean {
  if (session.revoked || session.sandboxId !== sandboxId) return false;
  return session.expiresAtMs <= 0 || nowMs <= session.expiresAtMs;
}

/** `ServiceEndpoint.sandbox_id` (field 2, reference §2.7); '' when absent. */
export function serviceEndpointSandboxId(payload: Uint8Array): string {
  let id = '';
  forEachField(payload, (field, wireType, reader) => {
    if (field !== 2 || wireType !== WireType.LengthDelimited) return false;
    id = reader.string();
    return true;
  });
  return id;
}

/** `WatchSandboxRequest{follow_status=2, stop_on_terminal=7}` (reference §2.8). */
export function watchRequestFlags(message: Uint8Array): { followStatus: boolean; stopOnTerminal: boolean } {
  const out = { followStatus: false, stopOnTerminal: false };
  forEachField(message, (field, wireType, reader) => {
    if (wireType !== WireType.Varint || (field !== 2 && field !== 7)) return false;
    const v = reader.bool();
    if (field === 2) out.followStatus = v;
    else out.stopOnTerminal = v;
    return true;
  });
  return out;
}

/** The `Sandbox` of a `SandboxStreamEvent{sandbox=1}` (a status event), or undefined for logs and events. */
export function streamEventSandbox(message: Uint8Array): Uint8Array | undefined {
  let sandbox: Uint8Array | undefined;
  forEachField(message, (field, wireType, reader) => {
    if (field !== 1 || wireType !== WireType.LengthDelimited) {
      if (field === 2 || field === 3 || field === 4) sandbox = undefined; // a later oneof member wins
      return false;
    }
    sandbox = reader.bytes();
    return true;
  });
  return sandbox;
}

/** A `SandboxStreamEvent{sandbox=1}` carrying `sandbox` (the stored payload), framed as one gRPC message. */
export function statusEventFrame(sandbox: Uint8Array): Buffer {
  const len = varint(sandbox.length);
  const body = Buffer.concat([Buffer.from([0x0a]), len, sandbox]);
  const head = Buffer.alloc(5);
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
}

function varint(n: number): Buffer {
  const out: number[] = [];
  let v = n;
  while (v > 0x7f) {
    out.push((v & 0x7f) | 0x80);
    v = Math.floor(v / 128);
  }
  out.push(v);
  return Buffer.from(out);
}

/**
 * What identifies one written state of a `Sandbox`: its phase and, at HEAD, `metadata.resource_version`
 * (bumped by every write, reference §3.1). Two encodings of the same state give the same signature.
 */
export function sandboxSignature(payload: Uint8Array): string {
  let version = '';
  forEachField(payload, (field, wireType, reader) => {
    if (field !== 1 || wireType !== WireType.LengthDelimited) return false;
    forEachField(reader.bytes(), (f, wt, r) => {
      if (f !== 5 || wt !== WireType.Varint) return false;
      version = r.uint64().toString();
      return true;
    });
    return true;
  });
  return `${sandboxPayloadPhase(payload).phase}:${version}`;
}

export interface SandboxCondition {
  type: string;
  status: string;
  reason: string;
  message: string;
}

/**
 * `Sandbox.status(3).conditions(5)` (`SandboxCondition`: type 1, status 2, reason 3, message 4), the
 * same place in both layouts. Throws on undecodable bytes.
 */
export function sandboxPayloadConditions(payload: Uint8Array): SandboxCondition[] {
  const out: SandboxCondition[] = [];
  forEachField(payload, (field, wireType, reader) => {
    if (field !== 3 || wireType !== WireType.LengthDelimited) return false;
    forEachField(reader.bytes(), (f, wt, r) => {
      if (f !== 5 || wt !== WireType.LengthDelimited) return false;
      const c: SandboxCondition = { type: '', status: '', reason: '', message: '' };
      forEachField(r.bytes(), (cf, cwt, cr) => {
        if (cwt !== WireType.LengthDelimited || cf < 1 || cf > 4) return false;
        const v = cr.string();
        if (cf === 1) c.type = v;
        else if (cf === 2) c.status = v;
        else if (cf === 3) c.reason = v;
        else c.message = v;
        return true;
      });
      out.push(c);
      return true;
    });
    return true;
  });
  return out;
}

/** A string field of an embedded message field (`outer.inner`), the last occurrence winning; undefined when absent. */
function embeddedString(message: Uint8Array, outer: number, inner: number): string | undefined {
  let value: string | undefined;
  forEachField(message, (field, wireType, reader) => {
    if (wireType !== WireType.LengthDelimited) return false;
    if (field !== outer) return false;
    forEachField(reader.bytes(), (f, wt, r) => {
      if (f !== inner || wt !== WireType.LengthDelimited) return false;
      value = r.string();
      return true;
    });
    return true;
  });
  return value;
}

/** `GatewayMessage{relay_open=4: RelayOpen{channel_id=1}}` (reference §2.1): the channel id, if this is one. Throws on undecodable bytes. */
export function gatewayRelayOpenChannel(message: Uint8Array): string | undefined {
  return embeddedString(message, 4, 1);
}

/** `SupervisorMessage{relay_open_result=3: RelayOpenResult{channel_id=1, success=2}}`: a relay the supervisor could not open. Throws on undecodable bytes. */
export function supervisorRelayOpenFailure(message: Uint8Array): string | undefined {
  let channel: string | undefined;
  let success = false;
  forEachField(message, (field, wireType, reader) => {
    if (field !== 3 || wireType !== WireType.LengthDelimited) return false;
    forEachField(reader.bytes(), (f, wt, r) => {
      if (f === 1 && wt === WireType.LengthDelimited) channel = r.string();
      else if (f === 2 && wt === WireType.Varint) success = r.bool();
      else return false;
      return true;
    });
    return true;
  });
  return channel !== undefined && !success ? channel : undefined;
}
