// The sidecar reads the gateway's Sandbox.phase (field 4 at seed, reference §3.2) from the raw
// payload with a wire reader; fixtures are encoded by protobufjs from the emulator's .proto.
import { describe, expect, it } from 'vitest';
import { sandboxPhase } from '../../../src/ownership/gateway-objects.ts';
import { sandboxPayloadPhase, sandboxSignature, serviceEndpointSandboxId, sshSessionPayload, sshSessionValidFor, statusEventFrame, streamEventSandbox, watchRequestFlags } from '../../../src/wire/gateway-payloads.ts';
import { Phase, encodeMessage } from '../../../emulator/proto.ts';

describe('sandboxPhase', () => {
  it('reads the phase whatever the other fields hold', () => {
    for (const phase of [Phase.PROVISIONING, Phase.READY, Phase.ERROR]) {
      const payload = encodeMessage('Sandbox', {
        metadata: { id: 'a', name: 'n', created_at_ms: 1, labels: { k: 'v' } },
        spec: { log_level: 'info', environment: { A: 'b' } },
        status: { sandbox_name: 'n', conditions: [{ type: 'Ready', status: 'True' }] },
        phase,
        current_policy_version: 7,
      });
      expect(sandboxPhase(payload)).toBe(phase);
    }
  });

  it('is 0 (unspecified) when the field is absent, and rejects truncated payloads', () => {
    expect(sandboxPhase(encodeMessage('Sandbox', { metadata: { id: 'a' } }))).toBe(0);
    expect(() => sandboxPhase(Buffer.from([0x0a, 0x7f, 0x01]))).toThrow();
  });
});

describe('sandboxPayloadPhase (HEAD layout, reference §8)', () => {
  // Sandbox{ metadata=1 {id=1 "a"}, status=3 { sandbox_name=1 "n", phase=6 } } written by hand:
  // field 4 is reserved at HEAD and the phase lives in status.
  const head = (phase: number): Buffer => Buffer.from([0x0a, 0x03, 0x0a, 0x01, 0x61, 0x1a, 0x05, 0x0a, 0x01, 0x6e, 0x30, phase]);

  it('reads status.phase and says which layout it saw', () => {
    expect(sandboxPayloadPhase(head(Phase.READY))).toEqual({ phase: Phase.READY, layout: 'head' });
    expect(sandboxPhase(head(Phase.PROVISIONING))).toBe(Phase.PROVISIONING);
  });

  it('a seed payload reports the seed layout, a payload with no phase anywhere is unknown', () => {
    expect(sandboxPayloadPhase(encodeMessage('Sandbox', { metadata: { id: 'a' }, phase: Phase.READY }))).toEqual({ phase: Phase.READY, layout: 'seed' });
    expect(sandboxPayloadPhase(Buffer.from([0x0a, 0x03, 0x0a, 0x01, 0x61]))).toEqual({ phase: 0, layout: 'unknown' });
  });
});

describe('sshSessionPayload and the gateway token rule', () => {
  // SshSession{ sandbox_id=2 "sb", token=3 "t", expires_at_ms=4, revoked=5 }
  const session = (expires: number, revoked: boolean): Buffer =>
    Buffer.concat([Buffer.from([0x12, 0x02, 0x73, 0x62, 0x1a, 0x01, 0x74, 0x20]), varint(expires), Buffer.from([0x28, revoked ? 1 : 0])]);

  it('is valid only for its sandbox, unrevoked and unexpired (0 = never expires)', () => {
    const now = 1_700_000_000_000;
    expect(sshSessionValidFor(sshSessionPayload(session(0, false)), 'sb', now)).toBe(true);
    expect(sshSessionValidFor(sshSessionPayload(session(now + 1000, false)), 'sb', now)).toBe(true);
    expect(sshSessionValidFor(sshSessionPayload(session(now - 1, false)), 'sb', now)).toBe(false);
    expect(sshSessionValidFor(sshSessionPayload(session(0, true)), 'sb', now)).toBe(false);
    expect(sshSessionValidFor(sshSessionPayload(session(0, false)), 'other', now)).toBe(false);
  });
});

describe('serviceEndpointSandboxId', () => {
  it('reads ServiceEndpoint.sandbox_id (field 2)', () => {
    // ServiceEndpoint{ sandbox_name=3 "box", sandbox_id=2 "id-1", target_port=5 8000 }
    const payload = Buffer.from([0x1a, 0x03, 0x62, 0x6f, 0x78, 0x12, 0x04, 0x69, 0x64, 0x2d, 0x31, 0x28, 0xc0, 0x3e]);
    expect(serviceEndpointSandboxId(payload)).toBe('id-1');
  });
});

function varint(n: number): Buffer {
  const out: number[] = [];
  let v = BigInt(n);
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) b |= 0x80;
    out.push(b);
  } while (v > 0n);
  return Buffer.from(out);
}

describe('watch payloads', () => {
  it('reads follow_status and stop_on_terminal from a WatchSandboxRequest', () => {
    // { id=1 "a", follow_status=2 true, stop_on_terminal=7 true }
    expect(watchRequestFlags(Buffer.from([0x0a, 0x01, 0x61, 0x10, 0x01, 0x38, 0x01]))).toEqual({ followStatus: true, stopOnTerminal: true });
    expect(watchRequestFlags(Buffer.from([0x0a, 0x01, 0x61, 0x18, 0x01]))).toEqual({ followStatus: false, stopOnTerminal: false });
  });

  it('a status event framed by the sidecar reads back as the stored sandbox, with its signature', () => {
    // Sandbox{ metadata=1 { id=1 "a", resource_version=5 7 }, status=3 { phase=6 READY } }
    const payload = Buffer.from([0x0a, 0x05, 0x0a, 0x01, 0x61, 0x28, 0x07, 0x1a, 0x02, 0x30, 0x02]);
    const frame = statusEventFrame(payload);
    expect(frame.readUInt32BE(1)).toBe(frame.length - 5);
    expect(Buffer.from(streamEventSandbox(frame.subarray(5))!)).toEqual(payload);
    expect(sandboxSignature(payload)).toBe('2:7');
    // A log event (field 2) is not a status event.
    expect(streamEventSandbox(Buffer.from([0x12, 0x00]))).toBeUndefined();
  });
});

describe('sandboxPayloadConditions (explain)', () => {
  it('reads status.conditions in the seed layout and next to status.phase at HEAD', async () => {
    const { sandboxPayloadConditions } = await import('../../../src/wire/gateway-payloads.ts');
    const payload = encodeMessage('Sandbox', {
      metadata: { id: 'a' },
      status: { sandbox_name: 'n', conditions: [{ type: 'Ready', status: 'False', reason: 'SupervisorNotConnected', message: 'no session' }], phase: Phase.PROVISIONING },
    });
    expect(sandboxPayloadConditions(payload)).toEqual([{ type: 'Ready', status: 'False', reason: 'SupervisorNotConnected', message: 'no session' }]);
    expect(sandboxPayloadConditions(encodeMessage('Sandbox', { metadata: { id: 'a' }, phase: Phase.READY }))).toEqual([]);
  });
});
