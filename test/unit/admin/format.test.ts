// The terminal renderings of status and explain, from fixed documents.
import { describe, expect, it } from 'vitest';
import type { ClusterStatus } from '../../../src/admin/cluster-status.ts';
import type { Explanation } from '../../../src/admin/explain.ts';
import { renderExplanation, renderStatus, seconds } from '../../../src/cli/format.ts';

const status: ClusterStatus = {
  generatedAtMs: 0,
  healthy: false,
  problems: ['r2: lease expired 12 s ago but still owns 1 sandbox(es)'],
  warnings: ['r1: limits degraded to local-split'],
  store: { postgres: true, redis: true },
  leaseHolder: { holder: 'r0', renewedAgoMs: 2_500 },
  replicas: [
    { replicaId: 'r0', state: 'active', live: true, heartbeatAgeMs: 400, leaseLeftMs: 9_600, version: '0.1.0', peerUrl: 'http://a:8443', owned: 2, sessionsReported: 2, startedAgeMs: 1, runtime: null, runtimeError: null },
    { replicaId: 'r2', state: 'active', live: false, heartbeatAgeMs: 22_000, leaseLeftMs: -12_000, version: '0.1.0', peerUrl: 'http://c:8443', owned: 1, sessionsReported: 1, startedAgeMs: 1, runtime: null, runtimeError: null },
  ],
  totals: { replicas: 2, live: 1, ownedSandboxes: 3, orphanedOwners: 1, tunnels: null, streams: null, heldRequests: null, pendingStoreWrites: null },
  limitPolicies: {},
  topLimitUsers: [{ rule: 'ssh-per-token', key: 'token sha256-abcdefgh…', held: 3 }],
};

describe('renderStatus', () => {
  it('says unhealthy, shows the dead replica and its orphaned sandboxes, never a token', () => {
    const out = renderStatus(status);
    expect(out).toMatch(/^cluster: UNHEALTHY \(1\/2 replicas live, 3 sandboxes owned\)/);
    expect(out).toMatch(/^r2\s+DEAD\s+22 s ago\s+expired 12 s ago/m);
    expect(out).toContain('PROBLEM: r2: lease expired 12 s ago but still owns 1 sandbox(es)');
    expect(out).toContain('token sha256-abcdefgh…  3 slots');
  });
});

describe('renderExplanation', () => {
  it('shows every layer and the decision per replica', () => {
    const e: Explanation = {
      sandboxId: 'sb-1',
      query: 'default/demo',
      generatedAtMs: 0,
      gateway: { row: { phase: 'Provisioning', layout: 'head', conditions: [{ type: 'Ready', status: 'False', reason: 'SupervisorNotConnected', message: '' }], ageMs: 3_000 }, leaseHolder: { holder: 'r0', renewedAgoMs: 1_000 } },
      owner: { replicaId: 'r1', epoch: 4, live: true, claimedAgeMs: 60_000, ownerHoldsSession: true },
      replicas: [
        {
          replicaId: 'r0',
          error: null,
          view: {
            replicaId: 'r0',
            session: null,
            claimInFlight: false,
            lastKnown: { target: 'r1@4', ageMs: 5_000 },
            layers: {
              memory: { state: 'hit', owner: { sandboxId: 'sb-1', replicaId: 'r1', peerUrl: 'x', epoch: 4, claimedAtMs: 0 }, ageMs: 200, ttlLeftMs: 4_800 },
              redis: { state: 'miss' },
              postgres: { state: 'row', replicaId: 'r1', epoch: 4, claimedAgeMs: 60_000, peerUrl: 'x', leaseLeftMs: 8_000, live: true },
            },
            shadows: null,
            decision: { action: 'forward', to: { replicaId: 'r1', epoch: 4 }, why: 'r1 owns it' },
          },
        },
        { replicaId: 'r2', error: 'no answer from http://c within 2000 ms', view: null },
      ],
      slots: [{ rule: 'ssh-per-sandbox', max: 20, held: 2, scope: 'cluster' }],
      summary: 'owned by r1 at epoch 4',
    };
    const out = renderExplanation(e);
    expect(out).toContain('sandbox sb-1 (default/demo)');
    expect(out).toContain('gateway row: Provisioning (head layout), written 3.0 s ago; conditions: Ready=False (SupervisorNotConnected)');
    expect(out).toMatch(/^r0\s+-\s+r1@4 \(age 0\.2 s, 4\.8 s left\)\s+miss\s+r1@4 live, 8\.0 s left\s+r1@4 \(5\.0 s ago\)\s+forward → r1@4$/m);
    expect(out).toMatch(/^r2\s.*\(no answer: no answer from http:\/\/c within 2000 ms\)$/m);
    expect(out).toContain('slots: ssh-per-sandbox 2/20 (cluster)');
    expect(seconds(-12_000)).toBe('-12 s');
  });
});
