// Fenced handoff (DESIGN §4): a new owner's gateway gets the supervisor's Hello only after the
// previous owner's sidecar closed its stream to its gateway and that gateway's disconnect write
// could land — or after the previous owner is provably gone.
import http2 from 'node:http2';
import type { Logger } from 'pino';
import { PHASE_READY } from '../ownership/gateway-objects.ts';
import type { OwnerRecord } from '../ownership/types.ts';
import type { ProxyContext } from '../proxy/context.ts';
import { ATTR_REPLICA, ATTR_SANDBOX, activeTraceHeaders, endSpan, startSpan, tracingEnabled, withSpan } from '../tracing/tracing.ts';
import { PEER_EPOCH, PEER_ORIGIN, PEER_SANDBOX, withPeerHeaders } from './protocol.ts';

export const RELEASE_PATH = '/ohs/v1/release';

export type HandoffReason = 'none' | 'same-replica' | 'acknowledged' | 'peer-refused' | 'lease-expired' | 'timeout' | 'skipped';

const LEASE_POLL_MS = 250;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}

/** Asks the previous owner to release; resolves with its HTTP status, or rejects with the cause. */
function requestRelease(ctx: ProxyContext, previous: OwnerRecord, sandboxId: string, timeoutMs: number): Promise<number> {
  return ctx.peerPool.get(previous.peerUrl).then(
    (session) =>
      new Promise<number>((resolve, reject) => {
        const req = session.request(
          withPeerHeaders(
            { ':method': 'POST', ':path': RELEASE_PATH },
            { secret: ctx.peerSecret ?? '', origin: ctx.store.replicaId, sandboxId, epoch: previous.epoch, cls: 'handoff', hop: 1 },
            activeTraceHeaders(),
          ),
          { endStream: true },
        );
        const timer = setTimeout(() => {
          req.close(http2.constants.NGHTTP2_CANCEL);
          reject(new Error('release request timed out'));
        }, timeoutMs);
        timer.unref();
        req.on('response', (h) => {
          clearTimeout(timer);
          resolve(Number(h[':status']));
          req.resume();
        });
        req.on('error', (err) => {
          clearTimeout(timer);
          reject(err);
        });
      }),
  );
}

function isRefused(err: unknown): boolean {
  const e = err as { details?: { errno?: string }; code?: string; cause?: { code?: string } };
  return e?.details?.errno === 'ECONNREFUSED' || e?.code === 'ECONNREFUSED' || e?.cause?.code === 'ECONNREFUSED';
}

/**
 * Fences the previous owner of a sandbox this replica just claimed. Never throws; always ends
 * within handoffTimeoutMs. The caller forwards the Hello afterwards.
 */
export async function fencePreviousOwner(ctx: ProxyContext, sandboxId: string, previous: OwnerRecord | null, log: Logger): Promise<HandoffReason> {
  const started = Date.now();
  const span = !tracingEnabled() ? undefined : startSpan('ohs.handoff', { [ATTR_SANDBOX]: sandboxId, [ATTR_REPLICA]: ctx.store.replicaId, 'ohs.previous_owner': previous ? `${previous.replicaId}@${previous.epoch}` : 'none' });
  const reason = await withSpan(span, () => fence(ctx, sandboxId, previous, log));
  span?.setAttribute('ohs.fence', reason);
  endSpan(span);
  const ms = Date.now() - started;
  ctx.metrics.handoffsTotal.inc({ reason });
  ctx.metrics.handoffDurationSeconds.observe({ reason }, ms / 1000);
  if (previous && reason !== 'same-replica') {
    log.info({ previous: `${previous.replicaId}@${previous.epoch}`, reason, durationMs: ms }, 'ownership handoff fenced');
  }
  return reason;
}

async function fence(ctx: ProxyContext, sandboxId: string, previous: OwnerRecord | null, log: Logger): Promise<HandoffReason> {
  if (!previous) return 'none';
  // Same process on the gateway side: its own supersede is safe (remove_if_current, reference §6).
  if (previous.replicaId === ctx.store.replicaId) return 'same-replica';
  if (ctx.config.handoffMode === 'off') return 'skipped';
  const deadline = Date.now() + ctx.config.handoffTimeoutMs;
  try {
    const remaining = Math.max(100, deadline - Date.now());
    const status = await requestRelease(ctx, previous, sandboxId, Math.min(remaining, ctx.config.handoffDisconnectWaitMs + ctx.config.peerConnectTimeoutMs + 1000));
    if (status === 200) return 'acknowledged';
    log.warn({ previous: previous.replicaId, status }, 'previous owner refused the release; waiting for its lease');
  } catch (err) {
    if (isRefused(err)) {
      // Its peer port refuses: the sidecar is gone, so are its upstream connections; give the
      // gateway's disconnect write a moment to land.
      await sleep(ctx.config.handoffRefusedGraceMs);
      return 'peer-refused';
    }
    log.warn({ previous: previous.replicaId, err: (err as Error).message }, 'previous owner did not answer the release; waiting for its lease to expire');
  }
  // No answer: the previous owner is provably gone only once its heartbeat lease expired.
  while (Date.now() < deadline) {
    try {
      const live = await ctx.store.liveReplicas();
      if (!live.some((r) => r.replicaId === previous.replicaId)) return 'lease-expired';
    } catch {
      // store unreachable: keep waiting within the bound
    }
    await sleep(LEASE_POLL_MS);
  }
  return 'timeout';
}

/** Peer side of the fence: close our session for the sandbox and wait for our gateway's write. */
export async function handleRelease(ctx: ProxyContext, stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, log: Logger): Promise<void> {
  const sandboxId = String(headers[PEER_SANDBOX] ?? '');
  const epoch = Number(headers[PEER_EPOCH] ?? '-1');
  const started = Date.now();
  // A session this replica shed a moment ago: its gateway's disconnect write is being awaited.
  await ctx.localSessions.shedSettled(sandboxId);
  // Shed and parked: the registration is handed over, and no disconnect write comes.
  if (await ctx.localSessions.handOverIf(sandboxId, epoch)) {
    const waitedMs = Date.now() - started;
    log.info({ sandbox: sandboxId, epoch, waitedMs, origin: headers[PEER_ORIGIN] }, 'handed a parked supervisor session over to its new owner');
    if (stream.destroyed) return;
    stream.respond({ ':status': 200, 'content-type': 'application/json' });
    stream.end(JSON.stringify({ released: true, handedOver: true, waitedMs }));
    return;
  }
  const before = await ctx.gatewayObjects.sandboxState(sandboxId);
  const closed = ctx.localSessions.closeIf(sandboxId, epoch);
  let sawWrite: boolean | null = null;
  // At HEAD the disconnect write is made only over Ready (reference §8), so a sandbox that was not
  // Ready gets none to wait for. The seed gateway writes whatever the phase was.
  const writeExpected = !(before && before.layout === 'head' && before.phase !== PHASE_READY);
  if (closed && writeExpected) {
    // The gateway's disconnect write (Provisioning) follows the stream's end. Wait until the row
    // changes; if its earlier state could not be read, until it is no longer Ready.
    const limit = Date.now() + ctx.config.handoffDisconnectWaitMs;
    sawWrite = false;
    while (Date.now() < limit) {
      await sleep(25);
      const now = await ctx.gatewayObjects.sandboxState(sandboxId);
      if (now && (before ? now.fingerprint !== before.fingerprint : now.phase !== PHASE_READY)) {
        sawWrite = true;
        break;
      }
    }
    if (!sawWrite) log.warn({ sandbox: sandboxId, waitedMs: Date.now() - started }, "gateway's disconnect write not seen within the bound; acknowledging anyway");
  }
  const waitedMs = Date.now() - started;
  log.info({ sandbox: sandboxId, epoch, closed, sawWrite, waitedMs, origin: headers[PEER_ORIGIN] }, closed ? 'released supervisor session for a new owner' : 'release requested for a session not held here');
  if (stream.destroyed) return;
  stream.respond({ ':status': 200, 'content-type': 'application/json' });
  stream.end(JSON.stringify({ released: closed, waitedMs }));
}
