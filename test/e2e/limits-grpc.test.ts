// Limit rules for gRPC classes come from the config file (`limitRules`) and are enforced at the
// ingress with the gateway's gRPC answer for a cap, RESOURCE_EXHAUSTED (reference §2.3 at HEAD).
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { exec, gatewayClient, type OpenShellClient } from '../helpers/grpc-client.ts';
import { startLimitedSidecar, type LimitedSidecar } from '../helpers/limited-sidecar.ts';

let setup: LimitedSidecar;
let client: OpenShellClient;
let sandbox: string;

beforeAll(async () => {
  setup = await startLimitedSidecar('limits-grpc', [{ name: 'exec-per-sandbox', trafficClass: 'exec', key: 'sandbox', max: 1 }]);
  sandbox = setup.sandbox;
  client = gatewayClient(`127.0.0.1:${setup.port}`);
});

afterAll(async () => {
  client?.close();
  await setup?.stop();
});

it('a configured exec limit refuses the second concurrent exec with RESOURCE_EXHAUSTED and frees the slot after', async () => {
  const first = exec(client, sandbox, ['sleep', '1']);
  // Let the first stream take its slot.
  await new Promise((r) => setTimeout(r, 300));
  const second = await exec(client, sandbox, ['echo', 'hi']).then(
    () => ({ code: Status.OK, details: '' }),
    (err: { code: number; details: string }) => ({ code: err.code, details: err.details }),
  );
  expect(second.code).toBe(Status.RESOURCE_EXHAUSTED);
  expect(second.details).toContain('exec-per-sandbox');
  expect((await first).exitCode).toBe(0);
  // Released when the first stream closed.
  expect((await exec(client, sandbox, ['echo', 'again'])).stdout).toBe('again\n');
});
