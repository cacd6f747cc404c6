// Everything the operator sees beyond /metrics, built in one call from the composition root: the
// inspect view (also answered on the peer port), the access-checked admin endpoints, and the
// gauges the shipped alerts need (heartbeat age against the lease).
import { Gauge } from 'prom-client';
import type { Logger } from 'pino';
import { createAdminAccess, type AdminAccessCheck } from './access.ts';
import type { InspectDeps } from './inspect.ts';
import { createOpsRoutes, type OpsRoutes } from './ops-routes.ts';

export interface OperatorSurface {
  ops: OpsRoutes;
  /** The admin access check (loopback, allowed CIDRs, bearer token), also guarding /debug/*. */
  access: AdminAccessCheck;
  close(): Promise<void>;
}

export function createOperatorSurface(inspect: InspectDeps, logger: Logger): OperatorSurface {
  const { config, store, metrics } = inspect;
  const access = createAdminAccess({ allowCidrs: config.adminAllowCidrs, token: config.adminToken });
  const ops = createOpsRoutes({
    access,
    inspect,
    logger,
  });
  if (config.mode === 'cluster') {
    // Read at scrape time: how long since this replica's heartbeat last reached Postgres, next to
    // the lease it must renew within (alert OhsReplicaLeaseExpiring).
    new Gauge({
      name: 'ohs_heartbeat_age_seconds',
      help: "Seconds since this replica's last heartbeat that reached Postgres (its lease expires at ohs_replica_lease_ttl_seconds).",
      registers: [metrics.registry],
      collect() {
        const at = store.lastHeartbeatAtMs?.();
        this.set(at === undefined ? config.replicaLeaseTtlMs / 1000 : (Date.now() - at) / 1000);
      },
    });
    new Gauge({ name: 'ohs_replica_lease_ttl_seconds', help: 'Heartbeat lease of a replica in Postgres (replicaLeaseTtlMs).', registers: [metrics.registry] }).set(config.replicaLeaseTtlMs / 1000);
  }
  return { ops, access, close: () => ops.close() };
}
