// Which relays a supervisor still owes its gateway, read from the control stream and RelayStreams
// as encoded by protobufjs from the emulator's proto (an independent encoder).
import { describe, expect, it } from 'vitest';
import { encodeMessage } from '../../../emulator/proto.ts';
import { messageWatcher, PendingRelays, RELAY_PENDING_MS, relayInitChannel } from '../../../src/proxy/pending-relays.ts';
import { gatewayRelayOpenChannel, supervisorRelayOpenFailure } from '../../../src/wire/gateway-payloads.ts';
import { grpcFrame } from '../../helpers/raw.ts';

const CH = '0b7e4c1a-3f2d-4e5b-9a8c-1d2e3f4a5b6c';

describe('relay messages', () => {
  it('reads RelayOpen (both generations), failed RelayOpenResults and RelayInit, and nothing else', () => {
    expect(gatewayRelayOpenChannel(encodeMessage('GatewayMessage', { relay_open: { channel_id: CH } }))).toBe(CH);
    expect(gatewayRelayOpenChannel(encodeMessage('GatewayMessage', { relay_open: { channel_id: CH, tcp: { host: '127.0.0.1', port: 8000 }, service_id: 'web' } }))).toBe(CH);
    expect(gatewayRelayOpenChannel(encodeMessage('GatewayMessage', { heartbeat: {} }))).toBeUndefined();
    expect(gatewayRelayOpenChannel(encodeMessage('GatewayMessage', { relay_close: { channel_id: CH, reason: 'x' } }))).toBeUndefined();
    expect(supervisorRelayOpenFailure(encodeMessage('SupervisorMessage', { relay_open_result: { channel_id: CH, success: false, error: 'dial failed' } }))).toBe(CH);
    expect(supervisorRelayOpenFailure(encodeMessage('SupervisorMessage', { relay_open_result: { channel_id: CH, success: true } }))).toBeUndefined();
    expect(supervisorRelayOpenFailure(encodeMessage('SupervisorMessage', { heartbeat: {} }))).toBeUndefined();
    expect(relayInitChannel(encodeMessage('RelayFrame', { init: { channel_id: CH } }))).toBe(CH);
    expect(relayInitChannel(encodeMessage('RelayFrame', { data: Buffer.from('ssh-2.0') }))).toBeUndefined();
  });
});

describe('PendingRelays', () => {
  it('counts relays until they arrive, and forgets them when the gateway would', () => {
    const p = new PendingRelays();
    p.opened('a', 1000);
    p.opened('b', 2000);
    expect(p.count(2000)).toBe(2);
    p.settled('a');
    expect(p.count(2000)).toBe(1);
    expect(p.count(2000 + RELAY_PENDING_MS - 1)).toBe(1);
    expect(p.count(2000 + RELAY_PENDING_MS)).toBe(0);
  });

  it('stays bounded', () => {
    const p = new PendingRelays();
    for (let i = 0; i < 1000; i++) p.opened(`c${i}`, 5000);
    expect(p.count(5000)).toBeLessThanOrEqual(64);
  });
});

describe('messageWatcher', () => {
  it('sees whole messages whatever the chunking, stops when asked, and never throws on junk', () => {
    const seen: string[] = [];
    const bytes = Buffer.concat([1, 2, 3].map((i) => grpcFrame(encodeMessage('GatewayMessage', { relay_open: { channel_id: `ch-${i}` } }))));
    const watch = messageWatcher((m) => {
      seen.push(gatewayRelayOpenChannel(m) ?? '?');
      return seen.length < 2;
    });
    for (let i = 0; i < bytes.length; i += 3) watch(bytes.subarray(i, i + 3));
    expect(seen).toEqual(['ch-1', 'ch-2']);
    const junk = messageWatcher(() => true);
    expect(() => junk(Buffer.from([0, 0xff, 0xff, 0xff, 0xff, 1, 2]))).not.toThrow();
  });
});
