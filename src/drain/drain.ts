// Graceful drain (DESIGN §6): on SIGTERM or POST /drain the replica leaves the Service (readiness
// 503, `draining` in ohs_replicas), takes no new supervisor sessions, tells its clients' HTTP/2
// connections to go elsewhere for new requests (GOAWAY), sheds its supervisor sessions in paced
// steps so that they all move within a share of the grace period (each supervisor reconnects
// through the Service to another replica; requests for a sandbox in motion are held until its new
// owner appears), and lets open relays, tunnels and short streams finish within the rest of the
// grace. It ends when nothing is left or at the deadline, and says what moved and what was cut.
import type { Logger } from 'pino';
import type { SidecarMetrics } from '../metrics/registry.ts';
import type { OwnershipStore } from '../ownership/types.ts';
import type { LocalSessions } from '../routing/router.ts';

/** Streams that end on their own; watches and log pushes live as long as their client. */
const SHORT_LIVED_CLASSES = new Set(['supervisor-relay', 'exec', 'tcp-forward', 'logs-get', 'sandbox-stop', 'sandbox-affine', 'service-http', 'passthrough']);

export interface DrainReport {
  reason: string;
  durationMs: number;
  sessionsShed: number;
  /**
   * What was still open when the deadline came (cut by the exit). `parked`: of `sessions`, those
   * already shed whose supervisor had not reconnected elsewhere yet (in its reconnect backoff): their
   * gateway registrations end with the exit, so those sandboxes show Provisioning until it does.
   */
  cut: { sessions: number; parked: number; relays: number; tunnels: number; streams: number };
  endedBy: 'empty' | 'deadline';
}

export interface Drainer {
  readonly state: { draining: boolean };
  /** Starts the drain (once; later calls get the same run) and resolves when it is over. */
  start(reason: string, budgetMs?: number): Promise<DrainReport>;
  /** null before a drain started. */
  report(): DrainReport | null;
}

export interface DrainDeps {
  /** Shared with the proxy, which refuses new supervisor sessions once it says draining. */
  state: { draining: boolean };
  localSessions: LocalSessions;
  store: OwnershipStore;
  metrics: SidecarMetrics;
  logger: Logger;
  /** Whole drain budget: the pod's grace period minus what exit needs. */
  graceMs: number;
  /** Share of graceMs within which every session is shed. */
  shedShare: number;
  /** Asks clients' HTTP/2 connections (not supervisors') to take new requests elsewhere. */
  goawayClients: () => void;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms).unref());

async function openWork(metrics: SidecarMetrics): Promise<{ tunnels: number; streams: number; relays: number }> {
  let tunnels = 0;
  for (const v of (await metrics.activeTunnels.get()).values) tunnels += v.value;
  // Requests held for an owner (or for Ready) are in flight too: cutting them loses them.
  let streams = 0;
  for (const v of (await metrics.heldRequests.get()).values) streams += v.value;
  let relays = 0;
  for (const v of (await metrics.activeStreams.get()).values) {
    const cls = String(v.labels.class ?? '');
    if (!SHORT_LIVED_CLASSES.has(cls)) continue;
    if (cls === 'supervisor-relay') relays += v.value;
    else streams += v.value;
  }
  return { tunnels, streams, relays };
}

export function createDrainer(deps: DrainDeps): Drainer {
  const state = deps.state;
  let run: Promise<DrainReport> | undefined;
  let last: DrainReport | null = null;
  const log = deps.logger;

  const drain = async (reason: string, graceMs: number): Promise<DrainReport> => {
    const started = Date.now();
    const deadline = started + graceMs;
    state.draining = true;
    deps.metrics.draining.set(1);
    await deps.store.setState('draining').catch((err: unknown) => log.warn({ err: (err as Error).message }, 'could not mark the replica draining in the store'));
    deps.goawayClients();
    const sessions = deps.localSessions.list();
    // Sessions with no relay in flight first: they move without cutting anything.
    sessions.sort((a, b) => a.relays - b.relays || a.sinceMs - b.sinceMs);
    const shedWindowMs = graceMs * deps.shedShare;
    const paceMs = sessions.length > 0 ? Math.max(20, Math.floor(shedWindowMs / sessions.length)) : 0;
    log.info({ reason, sessions: sessions.length, graceMs, shedWindowMs, paceMs }, 'drain started: leaving the Service, shedding supervisor sessions');
    let shed = 0;
    const attempted = new Set<string>();
    for (const s of sessions) {
      if (Date.now() >= deadline) break;
      attempted.add(s.sandboxId);
      if (deps.localSessions.shed(s.sandboxId, 'draining')) shed++;
      await sleep(paceMs);
    }
    // What is left: relays of shed sessions, tunnels and short streams finishing.
    let endedBy: DrainReport['endedBy'] = 'deadline';
    while (Date.now() < deadline) {
      // A session whose control stream was still being set up when its turn came is shed now.
      for (const s of deps.localSessions.list()) {
        if (attempted.has(s.sandboxId)) continue;
        attempted.add(s.sandboxId);
        if (deps.localSessions.shed(s.sandboxId, 'draining')) shed++;
      }
      const work = await openWork(deps.metrics);
      if (deps.localSessions.size === 0 && work.tunnels + work.streams + work.relays === 0) {
        endedBy = 'empty';
        break;
      }
      await sleep(100);
    }
    const left = await openWork(deps.metrics);
    const report: DrainReport = {
      reason,
      durationMs: Date.now() - started,
      sessionsShed: shed,
      cut:
        endedBy === 'empty'
          ? { sessions: 0, parked: 0, relays: 0, tunnels: 0, streams: 0 }
          : { sessions: deps.localSessions.size, parked: deps.localSessions.list().filter((s) => s.shedding).length, ...left },
      endedBy,
    };
    deps.metrics.drainDurationSeconds.set(report.durationMs / 1000);
    if (endedBy === 'empty') log.info(report, 'drain complete: every session moved and every open stream finished');
    else log.warn(report, 'drain deadline reached: what is still open is cut by the exit');
    last = report;
    return report;
  };

  return {
    state,
    start(reason, budgetMs) {
      run ??= drain(reason, budgetMs ?? deps.graceMs);
      return run;
    },
    report: () => last,
  };
}
