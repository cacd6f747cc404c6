// An owner lookup the store refused because its queue was full (OHS_ERR_OVERLOADED): what is known
// still routes, and with nothing known a caller that asks for it gets the refusal itself.
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { OhsError } from '../../../src/errors.ts';
import { createMetrics } from '../../../src/metrics/registry.ts';
import type { GatewayObjects } from '../../../src/ownership/gateway-objects.ts';
import type { LookupResult, OwnershipStore } from '../../../src/ownership/types.ts';
import { LocalSessions, OwnerRouter } from '../../../src/routing/router.ts';

function routerWith(lookup: (id: string) => Promise<LookupResult>): OwnerRouter {
  const store = { replicaId: 'self', lookup, onChange: () => () => undefined } as unknown as OwnershipStore;
  const gatewayObjects = { sandboxState: () => Promise.resolve(undefined), sandboxExists: () => Promise.resolve(true) } as unknown as GatewayObjects;
  return new OwnerRouter(store, new LocalSessions(), gatewayObjects, createMetrics(), pino({ level: 'silent' }), 0);
}

const overloaded = (): Promise<never> => Promise.reject(new OhsError('OHS_ERR_OVERLOADED', 'owner lookups over capacity'));

describe('routing when the store refuses a lookup as overloaded', () => {
  it('with nothing known: "local" by default, the OHS_ERR_OVERLOADED refusal when the caller asks for it', async () => {
    const router = routerWith(overloaded);
    expect(await router.resolve('unknown')).toEqual({ kind: 'local', epoch: null, reason: 'no-owner' });
    await expect(router.resolveHeld('unknown', { refuseWhenOverloaded: true })).rejects.toMatchObject({ code: 'OHS_ERR_OVERLOADED' });
  });

  it('an owner resolved before keeps routing there while lookups are refused', async () => {
    let refuse = false;
    const owner = { sandboxId: 'sb', replicaId: 'r2', peerUrl: 'https://r2:8443', epoch: 3, claimedAtMs: 0 };
    const router = routerWith(() => (refuse ? overloaded() : Promise.resolve({ owner, source: 'postgres' })));
    expect(await router.resolve('sb')).toMatchObject({ kind: 'peer', replicaId: 'r2', epoch: 3 });
    refuse = true;
    expect(await router.resolveHeld('sb', { refuseWhenOverloaded: true })).toMatchObject({ kind: 'peer', replicaId: 'r2', epoch: 3 });
  });
});
