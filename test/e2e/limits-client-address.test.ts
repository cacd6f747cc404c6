// A limit rule keyed by the client address (`limitRules`, key `client-address`) counts CONNECT
// tunnels and gRPC streams by the address they come from. Both paths read the address only when
// such a rule exists for their class (SlotLimiter.readsClientAddress), so these are the tests that
// they still read it.
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { openConnectTunnel } from '../../emulator/ssh-client.ts';
import { exec, gatewayClient } from '../helpers/grpc-client.ts';
import { startLimitedSidecar, type LimitedSidecar } from '../helpers/limited-sidecar.ts';

let setup: LimitedSidecar;

beforeAll(async () => {
  setup = await startLimitedSidecar('limits-client', [
    { name: 'ssh-per-client', trafficClass: 'ssh-tunnel', key: 'client-address', max: 1 },
    { name: 'exec-per-client', trafficClass: 'exec', key: 'client-address', max: 1 },
  ]);
});

afterAll(async () => {
  await setup?.stop();
});

it('a second tunnel from the same client address is refused by the client-address rule, and admitted once the first closed', async () => {
  const { gw, port, sandbox } = setup;
  // Two tokens: the default per-token rule must not be what refuses the second tunnel.
  const [first, second] = await Promise.all([gw.store.createSshSession(sandbox, 300), gw.store.createSshSession(sandbox, 300)]);
  const open = (token: string) => openConnectTunnel({ host: '127.0.0.1', port, sandboxId: sandbox, token, timeoutMs: 20_000 });

  const held = await open(first.token);
  expect(held.status).toBe(200);
  const refused = await open(second.token);
  expect(refused.status).toBe(429);
  expect(refused.body).toContain('limit ssh-per-client reached: at most 1 concurrent ssh tunnels per client address');

  await new Promise<void>((resolve) => {
    held.socket?.once('close', () => resolve());
    held.socket?.destroy();
  });
  // The slot is given back when the sidecar sees the tunnel close, a moment after the client did.
  let again = await open(second.token);
  for (let i = 0; i < 20 && again.status === 429; i++) {
    await new Promise((r) => setTimeout(r, 100));
    again = await open(second.token);
  }
  expect(again.status).toBe(200);
  again.socket?.destroy();
});

it('a second concurrent exec from the same client address is refused by the client-address rule, and admitted once the first ended', async () => {
  const client = gatewayClient(`127.0.0.1:${setup.port}`);
  try {
    const first = exec(client, setup.sandbox, ['sleep', '1']);
    // Let the first stream take its slot.
    await new Promise((r) => setTimeout(r, 300));
    const second = await exec(client, setup.sandbox, ['echo', 'hi']).then(
      () => ({ code: Status.OK, details: '' }),
      (err: { code: number; details: string }) => ({ code: err.code, details: err.details }),
    );
    expect(second.code).toBe(Status.RESOURCE_EXHAUSTED);
    expect(second.details).toContain('exec-per-client');
    expect((await first).exitCode).toBe(0);
    expect((await exec(client, setup.sandbox, ['echo', 'again'])).stdout).toBe('again\n');
  } finally {
    client.close();
  }
});
