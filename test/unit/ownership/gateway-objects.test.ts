// The sidecar reads the gateway's Sandbox.phase (field 4 at seed, reference §3.2) from the raw
// payload with a wire reader; fixtures are encoded by protobufjs from the emulator's .proto.
import { describe, expect, it } from 'vitest';
import { sandboxPhase } from '../../../src/ownership/gateway-objects.ts';
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
