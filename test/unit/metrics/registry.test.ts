import { describe, expect, it } from 'vitest';
import { createMetrics } from '../../../src/metrics/registry.ts';

describe('createMetrics', () => {
  it('exposes every sidecar metric under the ohs_ prefix', async () => {
    const m = createMetrics({ defaultMetrics: false });
    m.requestsTotal.inc({ class: 'exec', target: 'peer', outcome: 'ok' });
    m.forwardsTotal.inc({ class: 'ssh-tunnel', peer: 'replica-b', outcome: 'ok' });
    m.activeStreams.inc({ class: 'watch', target: 'local' });
    m.activeTunnels.set({ target: 'local' }, 2);
    m.ownerLookupsTotal.inc({ source: 'redis' });
    m.ownerClaimsTotal.inc();
    m.ownershipChangesTotal.inc();
    m.classifyErrorsTotal.inc({ reason: 'OHS_ERR_MALFORMED_MESSAGE' });
    m.tunnelBytesTotal.inc({ direction: 'to_sandbox' }, 1024);
    m.requestDurationSeconds.observe({ class: 'exec', target: 'local' }, 0.2);
    m.storeUp.set({ store: 'postgres' }, 1);
    m.supervisorSessions.set(3);
    m.peerSessions.set(1);

    const names = (await m.registry.getMetricsAsJSON()).map((metric) => metric.name).sort();
    expect(names).toEqual(
      [
        'ohs_active_streams',
        'ohs_active_tunnels',
        'ohs_classify_errors_total',
        'ohs_protections_total',
        'ohs_internal_errors_total',
        'ohs_log_lines_dropped_total',
        'ohs_forwards_total',
        'ohs_handoff_duration_seconds',
        'ohs_handoffs_total',
        'ohs_held_duration_seconds',
        'ohs_held_requests',
        'ohs_owner_claim_batch_size',
        'ohs_owner_claims_total',
        'ohs_owner_lookups_total',
        'ohs_ownership_changes_total',
        'ohs_peer_sessions',
        'ohs_pending_store_writes',
        'ohs_request_duration_seconds',
        'ohs_requests_total',
        'ohs_store_up',
        'ohs_supervisor_sessions',
        'ohs_tunnel_bytes_total',
        'ohs_unverified_hellos_total',
        'ohs_limit_skips_total',
        'ohs_stream_moves_total',
        'ohs_shadow_sessions',
        'ohs_shadows_hosted',
        'ohs_readiness_demotions_total',
        'ohs_readiness_repairs_total',
        'ohs_rebalance_stepped_out',
        'ohs_reconciler_lease_holder',
        'ohs_not_ready_holds_total',
        'ohs_conflict_retries_total',
        'ohs_watch_refreshes_total',
        'ohs_sessions_shed_total',
        'ohs_parked_sessions_total',
        'ohs_draining',
        'ohs_drain_duration_seconds',
        'ohs_session_imbalance',
      ].sort(),
    );
    const text = await m.registry.metrics();
    expect(text).toContain('ohs_requests_total{class="exec",target="peer",outcome="ok"} 1');
    expect(text).toContain('ohs_tunnel_bytes_total{direction="to_sandbox"} 1024');
    expect(text).toContain('ohs_request_duration_seconds_bucket{le="0.25",class="exec",target="local"} 1');
  });

  it('keeps each registry separate so several sidecars can share a process', async () => {
    const a = createMetrics({ defaultMetrics: false });
    const b = createMetrics({ defaultMetrics: false });
    a.ownerClaimsTotal.inc(5);
    expect(await b.registry.metrics()).toContain('ohs_owner_claims_total 0');
  });

  it('includes process metrics by default', async () => {
    const m = createMetrics();
    const text = await m.registry.metrics();
    expect(text).toContain('process_cpu_user_seconds_total');
    expect(text).toContain('nodejs_eventloop_lag_seconds');
  });
});
