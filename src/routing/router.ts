// Owner resolution: which replica a sandbox-scoped request must reach (DESIGN §2, §4), and the
// hold: a request for a sandbox with no reachable owner waits for an ownership event.
import type { Logger } from 'pino';
import { toOhsError } from '../errors.ts';
import type { SidecarMetrics } from '../metrics/registry.ts';
import type { GatewayObjects } from '../ownership/gateway-objects.ts';
import { phaseWillNotReconnect } from '../wire/gateway-payloads.ts';
import type { LookupResult, OwnershipStore } from '../ownership/types.ts';
import { ATTR_REPLICA, ATTR_SANDBOX, endSpan, startSpan, tracingEnabled } from '../tracing/tracing.ts';

export type Target =
  | { kind: 'local'; epoch: number | null; reason: 'owner' | 'no-owner' }
  | { kind: 'peer'; replicaId: string; peerUrl: string; epoch: number };

export type PeerTarget = Extract<Target, { kind: 'peer' }>;

export interface ResolveOptions {
  /** Past the caches (a "not owner" answer proved them wrong). */
  fresh?: boolean;
  /**
   * When the store refuses the lookup because its queue is full and nothing is known of the
   * sandbox, throw OHS_ERR_OVERLOADED (the caller answers UNAVAILABLE) instead of answering "local".
   */
  refuseWhenOverloaded?: boolean;
}

interface LocalSession {
  /** Identifies one supervisor stream; a newer stream for the same sandbox replaces it. */
  id: number;
  epoch: number;
  /** Closes the supervisor's connection and its 1:1 upstream to the gateway. */
  close: () => void;
  /** Ends the control stream so the supervisor reconnects elsewhere; its open relays go on. */
  shed?: (reason: string) => void;
  /** Relays open on the supervisor's connection. */
  relays?: () => number;
  /**
   * A shed session still parked on the gateway hands its registration over to the next owner
   * without a demoting write; false when it cannot (the fence then closes it as usual).
   */
  handOver?: () => Promise<boolean>;
  sinceMs: number;
  /** Set when a shed began: no new requests are sent to this session. */
  shedding?: boolean;
  /** Resolves once the local gateway accepted this stream (or it ended); undefined once it did. */
  accepted?: Promise<void>;
  markAccepted?: () => void;
}

/** Longest a request waits for the local gateway to take a session this replica just claimed. */
const ACCEPT_WAIT_MS = 10_000;

/** One local session as drain and rebalance see it. */
export interface LocalSessionInfo {
  sandboxId: string;
  epoch: number;
  relays: number;
  sinceMs: number;
  /** Shed already: parked until the next owner fences it. */
  shedding: boolean;
}

/** Supervisor sessions whose control stream passes through this sidecar, by sandbox. */
export class LocalSessions {
  private readonly sessions = new Map<string, LocalSession>();
  private readonly claiming = new Map<string, Promise<void>>();
  private seq = 0;
  /** Sessions in `sessions` that are being shed: `held` is the rest, without a pass over every session. */
  private shedCount = 0;

  /**
   * Marks an ownership claim in flight for a sandbox: other replicas hear of the claim (pub/sub) a
   * moment before the session is registered here, and a request they forward meanwhile must not be
   * answered "not owner". Returns the function that ends the mark.
   */
  beginClaim(sandboxId: string): () => void {
    let end!: () => void;
    const p = new Promise<void>((resolve) => {
      end = resolve;
    });
    this.claiming.set(sandboxId, p);
    return () => {
      if (this.claiming.get(sandboxId) === p) this.claiming.delete(sandboxId);
      end();
    };
  }

  /** Resolves once no claim for the sandbox is in flight here (at once when none is). */
  claimSettled(sandboxId: string): Promise<void> | undefined {
    return this.claiming.get(sandboxId);
  }

  /** Registers a supervisor stream; returns its id for removeSession. */
  set(
    sandboxId: string,
    epoch: number,
    close: () => void = () => undefined,
    controls: { shed?: (reason: string) => void; relays?: () => number; handOver?: () => Promise<boolean> } = {},
  ): number {
    const id = ++this.seq;
    const session: LocalSession = { id, epoch, close, ...controls, sinceMs: Date.now() };
    session.accepted = new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ACCEPT_WAIT_MS);
      timer.unref();
      session.markAccepted = () => {
        clearTimeout(timer);
        session.accepted = undefined;
        resolve();
      };
    });
    if (this.sessions.get(sandboxId)?.shedding) this.shedCount--;
    this.sessions.set(sandboxId, session);
    return id;
  }

  /** The local gateway took this supervisor stream (its response arrived). */
  markAccepted(sandboxId: string, id: number): void {
    const s = this.sessions.get(sandboxId);
    if (s?.id === id) s.markAccepted?.();
  }

  /**
   * Until the local gateway took the session this replica just claimed (the fence and the Hello are
   * still under way), another replica's shadow of the previous session may be all that gateway
   * holds: a request sent now would get a RelayOpen down that shadow, which nobody answers
   * (DEADLINE_EXCEEDED "relay open timed out" 10 s later). Such requests wait for this, bounded.
   */
  acceptedSettled(sandboxId: string): Promise<void> | undefined {
    return this.sessions.get(sandboxId)?.accepted;
  }

  list(): LocalSessionInfo[] {
    return [...this.sessions].map(([sandboxId, s]) => ({ sandboxId, epoch: s.epoch, relays: s.relays?.() ?? 0, sinceMs: s.sinceMs, shedding: s.shedding === true }));
  }

  /** Sheds a session (drain, rebalance); false when there is none or it cannot be shed. */
  shed(sandboxId: string, reason: string): boolean {
    const s = this.sessions.get(sandboxId);
    if (!s?.shed || s.shedding) return false;
    s.shedding = true;
    this.shedCount++;
    s.shed(reason);
    return true;
  }

  private readonly inflight = new Map<string, number>();

  /**
   * A request on its way to this replica's gateway for a sandbox whose session is here, until the
   * gateway answered (it has then sent its RelayOpen): a shed waits for these. Returns the end.
   */
  beginRequest(sandboxId: string): () => void {
    this.inflight.set(sandboxId, (this.inflight.get(sandboxId) ?? 0) + 1);
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      const n = (this.inflight.get(sandboxId) ?? 1) - 1;
      if (n <= 0) this.inflight.delete(sandboxId);
      else this.inflight.set(sandboxId, n);
      if (this.sessions.has(sandboxId)) this.lastAnswered.set(sandboxId, Date.now());
    };
  }

  inflightRequests(sandboxId: string): number {
    return this.inflight.get(sandboxId) ?? 0;
  }

  private readonly lastAnswered = new Map<string, number>();

  /**
   * Whether the gateway answered a request for this sandbox within `ms`. Its RelayOpen goes down
   * the control stream, another connection, and may reach us a moment after the answer: a shed
   * waits that moment out before it counts the relays still awaited.
   */
  answeredWithin(sandboxId: string, ms: number, now = Date.now()): boolean {
    const at = this.lastAnswered.get(sandboxId);
    return at !== undefined && now - at < ms;
  }

  /** A session being shed takes no new requests: they wait for the supervisor's next owner. */
  isShedding(sandboxId: string): boolean {
    return this.sessions.get(sandboxId)?.shedding === true;
  }

  private readonly sheds = new Map<string, Promise<void>>();

  /**
   * A shed session's gateway makes its disconnect write after the control stream ended: until it
   * landed, the ownership row stays and a new owner's fence waits for it (DESIGN §4).
   */
  markShedding(sandboxId: string, done: Promise<void>): void {
    this.sheds.set(sandboxId, done);
    void done.finally(() => {
      if (this.sheds.get(sandboxId) === done) this.sheds.delete(sandboxId);
    });
  }

  shedSettled(sandboxId: string): Promise<void> | undefined {
    return this.sheds.get(sandboxId);
  }

  /** Removes the stream's entry if it is still current; returns the epoch it held. */
  removeSession(sandboxId: string, id: number): number | undefined {
    const s = this.sessions.get(sandboxId);
    if (!s || s.id !== id) return undefined;
    s.markAccepted?.();
    if (s.shedding) this.shedCount--;
    this.sessions.delete(sandboxId);
    this.lastAnswered.delete(sandboxId);
    return s.epoch;
  }

  /** Updates the epoch of a session accepted while the store was down, once its claim lands. */
  setEpoch(sandboxId: string, from: number, to: number): boolean {
    const s = this.sessions.get(sandboxId);
    if (!s || s.epoch !== from) return false;
    s.epoch = to;
    return true;
  }

  /**
   * Fence: closes the session if it is at (or before) the epoch a new owner superseded. Epoch 0
   * marks a session accepted while the store was down; it is always older than a real claim.
   */
  closeIf(sandboxId: string, epoch: number): boolean {
    const s = this.sessions.get(sandboxId);
    if (!s || (s.epoch !== 0 && s.epoch > epoch)) return false;
    s.close();
    return true;
  }

  /**
   * Fence of a session that was shed and is parked: hands its gateway registration over (see
   * LocalSession.handOver). False when there is no such session at or before `epoch`, or it could
   * not be handed over.
   */
  async handOverIf(sandboxId: string, epoch: number): Promise<boolean> {
    const s = this.sessions.get(sandboxId);
    if (!s?.shedding || !s.handOver || (s.epoch !== 0 && s.epoch > epoch)) return false;
    return s.handOver();
  }

  /** The id of the sandbox's current stream here (see `set`). */
  current(sandboxId: string): number | undefined {
    return this.sessions.get(sandboxId)?.id;
  }

  epoch(sandboxId: string): number | undefined {
    return this.sessions.get(sandboxId)?.epoch;
  }

  /** Every session here, parked (shed, awaiting their next owner's fence) ones included. */
  get size(): number {
    return this.sessions.size;
  }

  /** Sessions held here and not shed: what this replica counts as its share. */
  get held(): number {
    return this.sessions.size - this.shedCount;
  }

  entries(): Array<[string, number]> {
    return [...this.sessions].map(([id, s]) => [id, s.epoch]);
  }
}

/** How long (in hold bounds) a previous owner counts as evidence that a new one is coming. */
export const OWNER_MEMORY_FACTOR = 4;
/** Sandboxes whose last ownership change is remembered at most. */
const MAX_CHANGE_MEMORY = 100_000;

export class OwnerRouter {
  /** Requests held right now (bounded by maxHeld). */
  private holding = 0;
  private lastHoldRefusalLog = 0;
  /** Last owner resolved per sandbox: routing keeps working from it while the store is down. */
  private readonly lastKnown = new Map<string, { target: Target; atMs: number }>();

  /**
   * When each sandbox's ownership last changed anywhere in the cluster (claims and releases are
   * published to every replica): a sandbox in motion, even one this replica never routed, is
   * worth holding a request for.
   */
  private readonly lastChange = new Map<string, number>();

  constructor(
    private readonly store: OwnershipStore,
    private readonly local: LocalSessions,
    private readonly gatewayObjects: GatewayObjects,
    private readonly metrics: SidecarMetrics,
    private readonly logger: Logger,
    private readonly ownerWaitMs: number,
    /** Requests held at once at most; past it the local gateway answers at once (its own refusal). */
    private readonly maxHeld = Number.POSITIVE_INFINITY,
  ) {
    store.onChange((id) => {
      const now = Date.now();
      this.lastChange.delete(id);
      this.lastChange.set(id, now);
      // Oldest first (insertion order): drop what is past the memory window, and bound the map.
      for (const [k, at] of this.lastChange) {
        if (now - at < this.ownerWaitMs * OWNER_MEMORY_FACTOR && this.lastChange.size <= MAX_CHANGE_MEMORY) break;
        this.lastChange.delete(k);
      }
    });
  }

  /** The last owner this replica resolved for a sandbox and how long ago, without changing anything (explain). */
  peekLastKnown(sandboxId: string): { target: Target; ageMs: number } | undefined {
    const k = this.lastKnown.get(sandboxId);
    return k ? { target: k.target, ageMs: Date.now() - k.atMs } : undefined;
  }

  /**
   * Resolves the target for a sandbox. A session held here always wins when it is at least as
   * new as the store's record; otherwise the store decides. No live owner → local with reason
   * 'no-owner'.
   */
  async resolve(sandboxId: string, opts: ResolveOptions = {}): Promise<Target> {
    if (!tracingEnabled()) return this.resolveUntraced(sandboxId, opts);
    const span = startSpan('ohs.owner_lookup', { [ATTR_SANDBOX]: sandboxId, [ATTR_REPLICA]: this.store.replicaId, 'ohs.fresh': opts.fresh === true });
    const target = await this.resolveUntraced(sandboxId, opts);
    span?.setAttribute('ohs.target', describe(target));
    endSpan(span);
    return target;
  }

  private async resolveUntraced(sandboxId: string, opts: ResolveOptions): Promise<Target> {
    // A session being shed is leaving: requests wait for the next owner instead (hold).
    const localEpoch = this.local.isShedding(sandboxId) ? undefined : this.local.epoch(sandboxId);
    let result;
    try {
      result = await this.store.lookup(sandboxId, opts.fresh === true ? { fresh: true } : {});
    } catch (err) {
      const known = this.lastKnown.get(sandboxId)?.target;
      if (toOhsError(err).code === 'OHS_ERR_OVERLOADED') {
        // The lookup queue is full (a flood of lookups): no log line per refusal (the store logs
        // them, rate-limited). What we know still routes; with nothing known the caller says so.
        if (localEpoch !== undefined) return { kind: 'local', epoch: localEpoch, reason: 'owner' };
        if (known) return known;
        if (opts.refuseWhenOverloaded === true) throw err;
        return { kind: 'local', epoch: null, reason: 'no-owner' };
      }
      this.logger.warn({ err: (err as Error).message, sandbox: sandboxId, fallback: known ? describe(known) : 'local' }, 'owner lookup failed; using last known owner');
      if (localEpoch !== undefined) return { kind: 'local', epoch: localEpoch, reason: 'owner' };
      return known ?? { kind: 'local', epoch: null, reason: 'no-owner' };
    }
    this.metrics.ownerLookupsTotal.cell(result.source).inc();
    return this.targetFor(sandboxId, result, localEpoch);
  }

  /** The target a lookup result means, with this replica's own session taken into account. */
  private targetFor(sandboxId: string, result: LookupResult, localEpoch: number | undefined): Target {
    const owner = result.owner;
    let target: Target;
    if (!owner) {
      target = { kind: 'local', epoch: localEpoch ?? null, reason: localEpoch !== undefined ? 'owner' : 'no-owner' };
    } else if (owner.replicaId === this.store.replicaId) {
      target = this.local.isShedding(sandboxId) ? { kind: 'local', epoch: null, reason: 'no-owner' } : { kind: 'local', epoch: owner.epoch, reason: 'owner' };
    } else if (localEpoch !== undefined && localEpoch >= owner.epoch) {
      target = { kind: 'local', epoch: localEpoch, reason: 'owner' };
    } else {
      target = { kind: 'peer', replicaId: owner.replicaId, peerUrl: owner.peerUrl, epoch: owner.epoch };
    }
    // "No owner" does not erase what we knew: it is the evidence that an owner is moving.
    if (target.kind === 'peer' || target.reason === 'owner') this.lastKnown.set(sandboxId, { target, atMs: Date.now() });
    return target;
  }

  /**
   * The hot path: a usable target (an owner, here or on a peer) straight from the in-process cache,
   * with no promise and no round trip; undefined when `resolveHeld` has to decide (cache miss, no
   * usable owner, or tracing on, which wants its lookup span).
   */
  resolveCached(sandboxId: string): Target | undefined {
    if (this.store.cachedLookup === undefined || tracingEnabled()) return undefined;
    const result = this.store.cachedLookup(sandboxId);
    if (result === undefined) return undefined;
    const localEpoch = this.local.isShedding(sandboxId) ? undefined : this.local.epoch(sandboxId);
    // No owner is never answered from here: whether to hold is resolveHeld's call.
    if (result.owner === null && localEpoch === undefined) return undefined;
    const target = this.targetFor(sandboxId, result, localEpoch);
    if (target.kind === 'local' && target.reason !== 'owner') return undefined;
    this.metrics.ownerLookupsTotal.cell(result.source).inc();
    return target;
  }

  /**
   * Resolves, holding while there is no usable owner: none at all, or only `exclude` (an owner
   * that just proved unreachable). Waits for ownership events, not by polling, up to
   * ownerWaitMs. Returns null when the bound passes with no usable owner.
   */
  async resolveHeld(sandboxId: string, opts: ResolveOptions & { exclude?: PeerTarget } = {}): Promise<Target | null> {
    const usable = (t: Target): boolean =>
      t.kind === 'peer' ? !(opts.exclude && t.replicaId === opts.exclude.replicaId && t.epoch === opts.exclude.epoch) : t.reason === 'owner';
    const known = this.lastKnown.get(sandboxId);
    const first = await this.resolve(sandboxId, { ...(opts.fresh ? { fresh: true } : {}), ...(opts.refuseWhenOverloaded ? { refuseWhenOverloaded: true } : {}) });
    if (usable(first)) return first;
    // Hold only with evidence that an owner is moving: it just proved unreachable, or the sandbox
    // had an owner recently. A sandbox that never had one (unknown, never connected, cleanly
    // gone) gets the gateway's own answer at once (404, 412, …).
    const changedAt = this.lastChange.get(sandboxId);
    const recentlyOwned =
      this.local.isShedding(sandboxId) ||
      (known !== undefined && Date.now() - known.atMs < this.ownerWaitMs * OWNER_MEMORY_FACTOR) ||
      (changedAt !== undefined && Date.now() - changedAt < this.ownerWaitMs * OWNER_MEMORY_FACTOR);
    if (!opts.exclude && !recentlyOwned) return first;
    if (first.kind === 'local') {
      // Gone, stopped, being deleted or failed: no owner is coming, so the gateway answers at once
      // (NOT_FOUND, FAILED_PRECONDITION) instead of after the hold bound.
      const state = await this.gatewayObjects.sandboxState(sandboxId);
      if (state === undefined ? (await this.gatewayObjects.sandboxExists(sandboxId)) === false : phaseWillNotReconnect(state.phase)) return first;
    }
    // The store says "no live owner" but we knew one: its lease may only have lapsed (e.g. right
    // after a Postgres outage, before its next heartbeat). The peer itself is the ground truth:
    // try it; a not-owner answer or a refused connection brings us back here with it excluded.
    if (known && known.target.kind === 'peer' && recentlyOwned && usable(known.target)) return known.target;
    if (this.ownerWaitMs <= 0) return null;
    const release = this.holdSlot(sandboxId, 'an owner');
    if (release === undefined) return null;
    try {
      return await this.hold(sandboxId, usable, opts);
    } finally {
      release();
    }
  }

  /**
   * A place among the requests held at once (`--max-held-requests`), whatever they wait for: an
   * owner to appear, or a live sandbox to be Ready again (grpc-streams). Past the cap: undefined,
   * counted in ohs_protections_total{reason="held_requests"} and logged at most once a second; the
   * caller then lets the gateway answer at once. The release is idempotent.
   */
  holdSlot(sandboxId: string, waitingFor: 'an owner' | 'the sandbox to be Ready'): (() => void) | undefined {
    if (this.holding >= this.maxHeld) {
      this.metrics.protectionsTotal.inc({ reason: 'held_requests' });
      if (Date.now() - this.lastHoldRefusalLog > 1000) {
        this.lastHoldRefusalLog = Date.now();
        this.logger.warn({ sandbox: sandboxId, maxHeld: this.maxHeld }, `too many requests held for ${waitingFor}; this one is not held (the local gateway answers)`);
      }
      return undefined;
    }
    this.holding++;
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      this.holding--;
    };
  }

  private async hold(sandboxId: string, usable: (t: Target) => boolean, opts: { exclude?: PeerTarget }): Promise<Target | null> {
    const started = Date.now();
    const log = this.logger.child({ sandbox: sandboxId });
    log.info({ waitMs: this.ownerWaitMs, unreachable: opts.exclude ? describe(opts.exclude) : null }, 'no reachable owner; holding request for an ownership event');
    this.metrics.heldRequests.inc();
    const span = !tracingEnabled() ? undefined : startSpan('ohs.hold', { [ATTR_SANDBOX]: sandboxId, [ATTR_REPLICA]: this.store.replicaId, 'ohs.wait_ms': this.ownerWaitMs });
    try {
      const target = await new Promise<Target | null>((resolve) => {
        let done = false;
        let checking = false;
        let recheck = false;
        const finish = (t: Target | null): void => {
          if (done) return;
          done = true;
          clearTimeout(timer);
          unsubscribe();
          resolve(t);
        };
        // An ownership event after the hold began is a new claim or release: a claim by the very
        // replica that was excluded (its supervisor came straight back; the epoch restarts at 1
        // once the old row is gone, so the record looks the same) is a new session and usable.
        let changed = false;
        const check = (): void => {
          if (done) return;
          if (checking) {
            recheck = true;
            return;
          }
          checking = true;
          this.resolve(sandboxId, { fresh: true }).then(
            (t) => {
              checking = false;
              if (usable(t) || (changed && t.kind === 'peer')) finish(t);
              else if (recheck) {
                recheck = false;
                check();
              }
            },
            () => {
              checking = false;
            },
          );
        };
        const unsubscribe = this.store.onChange((id) => {
          if (id !== sandboxId) return;
          changed = true;
          check();
        });
        const timer = setTimeout(() => finish(null), this.ownerWaitMs);
        timer.unref();
        // An event may have landed between the first lookup and the subscription.
        check();
      });
      log.info({ heldMs: Date.now() - started, target: target ? describe(target) : 'none' }, target ? 'owner appeared; releasing held request' : 'no owner within the wait bound');
      this.metrics.heldSeconds.observe((Date.now() - started) / 1000);
      span?.setAttribute('ohs.target', target ? describe(target) : 'none');
      return target;
    } finally {
      this.metrics.heldRequests.dec();
      endSpan(span);
    }
  }
}

export function describe(t: Target): string {
  return t.kind === 'peer' ? `${t.replicaId}@${t.epoch}` : `local(${t.reason})`;
}
