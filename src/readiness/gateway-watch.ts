// What the local gateway is, watched while the sidecar runs: who holds the reconciler lease (HEAD on
// Postgres, reference §10), and whether the gateway is a native-HA build that routes and keeps
// readiness itself (upstream's unmerged owner records and PeerRelay, reference §10), in which case
// the sidecar steps aside: it neither shadows nor re-routes what the gateway already routes.
import type http2 from 'node:http2';
import type { Logger } from 'pino';
import type { SidecarMetrics } from '../metrics/registry.ts';
import type { GatewayObjects } from '../ownership/gateway-objects.ts';
import type { SessionPool } from '../proxy/h2-sessions.ts';

const PEER_RELAY_PATH = '/openshell.v1.OpenShell/PeerRelay';
const GRPC_UNIMPLEMENTED = '12';
const GRPC_PERMISSION_DENIED = '7';

export interface GatewayWatch {
  /** True once the local gateway showed it does owner routing itself. */
  nativeHa(): boolean;
  leaseHolder(): string | undefined;
  close(): void;
}

/** Asks the gateway for PeerRelay with no credentials: UNIMPLEMENTED at HEAD, PERMISSION_DENIED on the HA branch. */
export async function probePeerRelay(pool: SessionPool, origin: string, timeoutMs = 2_000): Promise<'native' | 'classic' | 'unknown'> {
  let session: http2.ClientHttp2Session;
  try {
    session = await pool.get(origin);
  } catch {
    return 'unknown';
  }
  return new Promise((resolve) => {
    let req: http2.ClientHttp2Stream;
    try {
      req = session.request({ ':method': 'POST', ':path': PEER_RELAY_PATH, 'content-type': 'application/grpc', te: 'trailers' });
    } catch {
      resolve('unknown');
      return;
    }
    const timer = setTimeout(() => {
      req.close();
      resolve('unknown');
    }, timeoutMs);
    timer.unref();
    const decide = (status: unknown): void => {
      clearTimeout(timer);
      resolve(status === GRPC_PERMISSION_DENIED ? 'native' : status === GRPC_UNIMPLEMENTED ? 'classic' : 'unknown');
    };
    let status: unknown;
    req.on('response', (h) => {
      status = h['grpc-status'];
    });
    req.on('trailers', (t) => {
      status ??= t['grpc-status'];
    });
    req.on('error', () => undefined);
    req.on('close', () => decide(status));
    req.resume();
    req.end(Buffer.alloc(5));
  });
}

export function watchGateway(opts: {
  objects: GatewayObjects;
  gatewayPool: SessionPool;
  gatewayOrigin: string;
  metrics: SidecarMetrics;
  logger: Logger;
  intervalMs?: number;
}): GatewayWatch {
  const log = opts.logger;
  let holder: string | undefined;
  let native = false;
  let checkedNative = 0;
  const tick = async (): Promise<void> => {
    const lease = await opts.objects.reconcilerLease();
    if (lease !== undefined) {
      const now = lease?.holder;
      if (now !== holder) {
        if (holder !== undefined) opts.metrics.reconcilerLeaseHolder.remove({ holder });
        if (now !== undefined) opts.metrics.reconcilerLeaseHolder.set({ holder: now }, 1);
        log.info({ from: holder ?? null, to: now ?? null }, 'reconciler lease holder changed');
        holder = now;
      }
    }
    if (native || Date.now() - checkedNative < 60_000) return;
    checkedNative = Date.now();
    const rows = await opts.objects.hasNativeOwnerRecords();
    const probe = await probePeerRelay(opts.gatewayPool, opts.gatewayOrigin);
    if (rows === true || probe === 'native') {
      native = true;
      log.warn({ ownerRecords: rows, peerRelay: probe }, 'the local gateway routes supervisor sessions itself (native HA): stepping aside, no shadows, no re-routing; PeerRelay and x-openshell-peer-replica pass through untouched');
    } else if (checkedNative !== 0) {
      log.debug({ ownerRecords: rows ?? null, peerRelay: probe }, 'gateway does no owner routing of its own');
    }
  };
  let running = false;
  const run = (): void => {
    if (running) return;
    running = true;
    tick().finally(() => {
      running = false;
    });
  };
  const timer = setInterval(run, opts.intervalMs ?? 5_000);
  timer.unref();
  run();
  return {
    nativeHa: () => native,
    leaseHolder: () => holder,
    close: () => clearInterval(timer),
  };
}
