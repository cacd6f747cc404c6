// A limit rule keyed by the client address (`limitRules`, key `client-address`) counts CONNECT
// tunnels by the address they come from. The tunnel path reads the address only when such a rule
// exists for its class (SlotLimiter.readsClientAddress), so this is the test that it still reads it.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { openConnectTunnel } from '../../emulator/ssh-client.ts';
import { startLimitedSidecar, type LimitedSidecar } from '../helpers/limited-sidecar.ts';

let setup: LimitedSidecar;

beforeAll(async () => {
  setup = await startLimitedSidecar('limits-client', [{ name: 'ssh-per-client', trafficClass: 'ssh-tunnel', key: 'client-address', max: 1 }]);
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
