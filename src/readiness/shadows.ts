// Keeps sandboxes Ready on 2026-08 gateways (reference §10). On Postgres one gateway replica holds
// the reconciler lease and composes every sandbox's phase from *its own* session registry: a
// sandbox whose supervisor session lives on another replica is demoted to Provisioning within a
// minute, however well traffic is routed. The owner's sidecar therefore registers the supervisor's
// session, as the supervisor sent it (its own headers and sandbox JWT, its own Hello), on every other
// replica's gateway too: a *shadow*. A shadow only listens: the sidecar answers nothing on a
// gateway's behalf, and client traffic still goes to the owner, so no shadow is ever asked for a
// relay. Shadows end with the real session, before a handoff is acknowledged, so the handoff's fence
// covers their disconnect writes too.
//
// Order matters on each gateway (reference §6): a newer registration supersedes an older one
// without a demoting cleanup, while the cleanup of the *current* one writes Provisioning. Hence a
// shadow is replaced by opening the new one first, and the backstop repair (a live sandbox seen
// demoted) re-registers a shadow, whose connect writes Ready again.
import http2 from 'node:http2';
import type { Logger } from 'pino';
import type { SidecarMetrics } from '../metrics/registry.ts';
import type { GatewayObjects } from '../ownership/gateway-objects.ts';
import type { OwnershipStore, ReplicaRecord } from '../ownership/types.ts';
import { withPeerHeaders, PEER_NOT_OWNER } from '../peers/protocol.ts';
import type { SessionPool } from '../proxy/h2-sessions.ts';
import { PHASE_PROVISIONING } from '../wire/gateway-payloads.ts';
import { forgetSentHeaders } from '../proxy/sent-headers.ts';

const { NGHTTP2_CANCEL, NGHTTP2_FLAG_END_STREAM } = http2.constants;

export const SHADOW_CLASS = 'shadow';

export interface ShadowOptions {
  store: OwnershipStore;
  peerPool: SessionPool;
  peerSecret: string;
  gatewayObjects: GatewayObjects;
  metrics: SidecarMetrics;
  logger: Logger;
  /** How often the live replica set is compared with the shadows held (default 2 s). */
  reconcileIntervalMs?: number;
  /** How often owned sandboxes' phases are checked for a demotion to repair (default 1 s; 0 = never). */
  repairIntervalMs?: number;
  /** A session younger than this is not judged: its own Ready write may still be on its way. */
  repairGraceMs?: number;
  /** Least time between two repairs of one sandbox (default 5 s). */
  repairMinIntervalMs?: number;
}

interface Shadow {
  replicaId: string;
  peerUrl: string;
  /** The registration of the replica this shadow was made for (a restart registers again). */
  startedAtMs: number;
  stream: http2.ClientHttp2Stream | undefined;
  /** The gateway answered (SessionAccepted comes next): the registration exists. */
  accepted: boolean;
  failures: number;
  retry: NodeJS.Timeout | undefined;
}

interface Entry {
  sandboxId: string;
  epoch: number;
  /** The supervisor's request headers (authorization included), minus hop-by-hop and x-ohs-*. */
  headers: http2.OutgoingHttpHeaders;
  /** The Hello as the supervisor framed it. */
  hello: Buffer;
  sinceMs: number;
  lastRepairMs: number;
  shadows: Map<string, Shadow>;
}

export interface ShadowRegistry {
  /** A verified supervisor session started here: mirror it on every other live replica's gateway. */
  add(sandboxId: string, epoch: number, headers: http2.OutgoingHttpHeaders, hello: Buffer): void;
  /**
   * The session ended here or is being handed off: every shadow goes at once. Resolves when their
   * streams closed (bounded), so a fence can wait for their disconnects to reach the gateways.
   */
  drop(sandboxId: string): Promise<void>;
  /**
   * The session moved to another replica without ending (a parked shed handed over): the shadows
   * stay until the new owner's registrations supersede them on each gateway (which closes them,
   * without a demoting cleanup), and close after `lingerMs` at the latest. No longer renewed.
   */
  handOver(sandboxId: string, lingerMs: number): void;
  /** Shadows with an accepted registration, per replica (for metrics, status and tests). */
  held(): Map<string, number>;
  /** The shadows of one sandbox's session (none: not a session of this replica), for explain. */
  forSandbox(sandboxId: string): { epoch: number; sinceMs: number; shadows: Array<{ replicaId: string; accepted: boolean; failures: number }> } | undefined;
  close(): Promise<void>;
}

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30_000;
const DROP_WAIT_MS = 1_000;

export function createShadowRegistry(opts: ShadowOptions): ShadowRegistry {
  const log = opts.logger;
  const self = opts.store.replicaId;
  const entries = new Map<string, Entry>();
  let live: ReplicaRecord[] = [];
  let closed = false;

  const updateGauge = (): void => {
    let n = 0;
    for (const e of entries.values()) for (const s of e.shadows.values()) if (s.accepted) n++;
    opts.metrics.shadowSessions.set(n);
  };

  const scheduleRetry = (entry: Entry, shadow: Shadow): void => {
    if (closed || entries.get(entry.sandboxId) !== entry || entry.shadows.get(shadow.replicaId) !== shadow) return;
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(shadow.failures, 10));
    shadow.failures++;
    clearTimeout(shadow.retry);
    shadow.retry = setTimeout(() => {
      shadow.retry = undefined;
      if (entries.get(entry.sandboxId) === entry && entry.shadows.get(shadow.replicaId) === shadow) open(entry, shadow);
    }, delay);
    shadow.retry.unref();
  };

  /** Registers the session on one replica's gateway, through that replica's sidecar. */
  const open = (entry: Entry, shadow: Shadow, onAccepted?: () => void): void => {
    opts.peerPool.get(shadow.peerUrl).then(
      (session) => {
        if (closed || entries.get(entry.sandboxId) !== entry) return;
        let stream: http2.ClientHttp2Stream;
        try {
          stream = session.request(
            withPeerHeaders(entry.headers, { secret: opts.peerSecret, origin: self, sandboxId: entry.sandboxId, epoch: entry.epoch, cls: SHADOW_CLASS, hop: 1 }),
            { endStream: false },
          );
          forgetSentHeaders(stream);
        } catch (err) {
          log.debug({ sandbox: entry.sandboxId, replica: shadow.replicaId, err: (err as Error).message }, 'shadow: peer session closing');
          scheduleRetry(entry, shadow);
          return;
        }
        shadow.stream = stream;
        stream.on('error', () => undefined);
        stream.on('response', (h, flags) => {
          const refused = Number(h[':status']) !== 200 || h[PEER_NOT_OWNER] !== undefined || (flags & NGHTTP2_FLAG_END_STREAM) !== 0;
          if (refused) {
            log.info({ sandbox: entry.sandboxId, replica: shadow.replicaId, status: h[':status'], grpcStatus: h['grpc-status'], error: h['x-ohs-error'] }, 'shadow registration refused');
            stream.close(NGHTTP2_CANCEL);
            return;
          }
          shadow.accepted = true;
          shadow.failures = 0;
          updateGauge();
          log.debug({ sandbox: entry.sandboxId, replica: shadow.replicaId }, 'shadow registered');
          onAccepted?.();
        });
        // GatewayMessages (SessionAccepted, heartbeats) are read and dropped: a shadow only listens.
        stream.on('data', () => undefined);
        stream.on('close', () => {
          if (shadow.stream !== stream) return;
          shadow.stream = undefined;
          const wasAccepted = shadow.accepted;
          shadow.accepted = false;
          updateGauge();
          // Dropped or handed over: nothing to renew.
          if (entries.get(entry.sandboxId) !== entry) return;
          if (wasAccepted) {
            log.info({ sandbox: entry.sandboxId, replica: shadow.replicaId }, 'shadow registration ended; renewing');
            // That gateway's cleanup of a current session writes Provisioning (reference §6): look
            // at the phase soon instead of at the next tick.
            checkSoon();
          }
          scheduleRetry(entry, shadow);
        });
        stream.write(entry.hello);
      },
      () => scheduleRetry(entry, shadow),
    );
  };

  const closeShadow = (shadow: Shadow): Promise<void> => {
    clearTimeout(shadow.retry);
    shadow.retry = undefined;
    const stream = shadow.stream;
    shadow.stream = undefined;
    shadow.accepted = false;
    if (!stream || stream.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, DROP_WAIT_MS);
      timer.unref();
      stream.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      stream.close(NGHTTP2_CANCEL);
    });
  };

  const targets = (): ReplicaRecord[] => live.filter((r) => r.replicaId !== self);

  const ensure = (entry: Entry): void => {
    const want = new Map(targets().map((r) => [r.replicaId, r]));
    for (const r of want.values()) {
      const existing = entry.shadows.get(r.replicaId);
      if (existing && existing.peerUrl === r.peerUrl && existing.startedAtMs === r.startedAtMs) continue;
      // A replica that restarted (often at a new address) is a new gateway: the old shadow may be
      // retrying a dead address with a long backoff, and the new gateway, possibly the next lease
      // holder, would never see the session.
      if (existing) void closeShadow(existing);
      const shadow: Shadow = { replicaId: r.replicaId, peerUrl: r.peerUrl, startedAtMs: r.startedAtMs, stream: undefined, accepted: false, failures: 0, retry: undefined };
      entry.shadows.set(r.replicaId, shadow);
      open(entry, shadow);
    }
    for (const [id, shadow] of entry.shadows) {
      if (!want.has(id)) {
        entry.shadows.delete(id);
        void closeShadow(shadow);
      }
    }
  };

  const reconcile = async (): Promise<void> => {
    try {
      live = await opts.store.liveReplicas();
    } catch {
      return; // keep what we have while the store is out
    }
    for (const entry of entries.values()) ensure(entry);
    updateGauge();
  };

  /**
   * Re-registers a shadow so its connect writes Ready again: the new registration first, then the
   * old stream closes (superseded, so its cleanup writes nothing).
   */
  const repair = (entry: Entry, leaseHolder: string | undefined): void => {
    // A registration that exists now (its replica is up), the lease holder's first.
    const candidates = [...entry.shadows.values()].filter((s) => s.accepted);
    const shadow = candidates.find((s) => s.replicaId === leaseHolder) ?? candidates[0];
    if (!shadow) return;
    const old = shadow.stream;
    shadow.stream = undefined;
    shadow.accepted = false;
    clearTimeout(shadow.retry);
    open(entry, shadow, () => {
      if (old && !old.closed) old.close(NGHTTP2_CANCEL);
    });
    if (!old) return;
    // If the new registration never comes, the old one must not linger either.
    setTimeout(() => {
      if (!old.closed) old.close(NGHTTP2_CANCEL);
    }, 10_000).unref();
  };

  const checkPhases = async (): Promise<void> => {
    const now = Date.now();
    const judged = [...entries.values()].filter((e) => now - e.sinceMs >= (opts.repairGraceMs ?? 3_000) && e.shadows.size > 0);
    if (judged.length === 0) return;
    const phases = await opts.gatewayObjects.sandboxPhases(judged.map((e) => e.sandboxId));
    if (!phases) return;
    let lease: string | undefined;
    for (const entry of judged) {
      if (phases.get(entry.sandboxId) !== PHASE_PROVISIONING) continue;
      if (entries.get(entry.sandboxId) !== entry) continue;
      opts.metrics.readinessDemotionsTotal.inc();
      if (now - entry.lastRepairMs < (opts.repairMinIntervalMs ?? 5_000)) continue;
      entry.lastRepairMs = now;
      lease ??= (await opts.gatewayObjects.reconcilerLease())?.holder ?? '';
      log.warn({ sandbox: entry.sandboxId, leaseHolder: lease || null }, 'live sandbox seen demoted to Provisioning; re-registering a shadow to restore Ready');
      opts.metrics.readinessRepairsTotal.inc();
      repair(entry, lease || undefined);
    }
  };

  let soon: NodeJS.Timeout | undefined;
  const checkSoon = (): void => {
    if (soon || closed) return;
    soon = setTimeout(() => {
      soon = undefined;
      runCheck();
    }, 250);
    soon.unref();
  };
  const reconcileTimer = setInterval(() => void reconcile(), opts.reconcileIntervalMs ?? 2_000);
  reconcileTimer.unref();
  const repairEvery = opts.repairIntervalMs ?? 1_000;
  let checking = false;
  const runCheck = (): void => {
    if (checking || repairEvery <= 0) return;
    checking = true;
    checkPhases().finally(() => {
      checking = false;
    });
  };
  const repairTimer = repairEvery > 0 ? setInterval(runCheck, repairEvery) : undefined;
  repairTimer?.unref();
  void reconcile();

  return {
    add(sandboxId, epoch, headers, hello) {
      if (closed) return;
      const previous = entries.get(sandboxId);
      const entry: Entry = { sandboxId, epoch, headers, hello, sinceMs: Date.now(), lastRepairMs: 0, shadows: new Map() };
      entries.set(sandboxId, entry);
      if (previous) {
        // The supervisor reconnected to this same replica: open the new shadows, then let the old go
        // (each gateway's newer registration supersedes the older one without a demoting cleanup).
        ensure(entry);
        setTimeout(() => {
          for (const s of previous.shadows.values()) void closeShadow(s);
        }, 2_000).unref();
        return;
      }
      ensure(entry);
    },
    async drop(sandboxId) {
      const entry = entries.get(sandboxId);
      if (!entry) return;
      entries.delete(sandboxId);
      await Promise.all([...entry.shadows.values()].map(closeShadow));
      updateGauge();
    },
    handOver(sandboxId, lingerMs) {
      const entry = entries.get(sandboxId);
      if (!entry) return;
      entries.delete(sandboxId);
      for (const shadow of entry.shadows.values()) {
        clearTimeout(shadow.retry);
        shadow.retry = undefined;
        const stream = shadow.stream;
        if (!stream || stream.closed) continue;
        setTimeout(() => {
          if (!stream.closed) stream.close(NGHTTP2_CANCEL);
        }, lingerMs).unref();
      }
      updateGauge();
    },
    held() {
      const out = new Map<string, number>();
      for (const e of entries.values()) for (const s of e.shadows.values()) if (s.accepted) out.set(s.replicaId, (out.get(s.replicaId) ?? 0) + 1);
      return out;
    },
    forSandbox(sandboxId) {
      const e = entries.get(sandboxId);
      if (!e) return undefined;
      return { epoch: e.epoch, sinceMs: e.sinceMs, shadows: [...e.shadows.values()].map((s) => ({ replicaId: s.replicaId, accepted: s.accepted, failures: s.failures })) };
    },
    async close() {
      closed = true;
      clearInterval(reconcileTimer);
      clearTimeout(soon);
      if (repairTimer) clearInterval(repairTimer);
      const all = [...entries.values()];
      entries.clear();
      await Promise.all(all.flatMap((e) => [...e.shadows.values()].map(closeShadow)));
    },
  };
}
