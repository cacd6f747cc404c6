// Per-process supervisor session registry, modelled on the seed gateway's
// SupervisorSessionRegistry (reference §6): sessions by sandbox id with supersede and
// remove-if-current, and pending relays by channel id with a 10 s claim deadline.
import { randomUUID } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { status as Status } from '@grpc/grpc-js';
import type { GatewayMessage, RelayOpenMessage } from '../proto.ts';

/** 2026-08: what the supervisor should dial for a relay (reference §2.1 RelayOpen). */
export type RelayTarget = { kind: 'ssh' } | { kind: 'tcp'; host: string; port: number };

export const RELAY_PENDING_TIMEOUT_MS = 10_000;
export const SESSION_WAIT_INITIAL_BACKOFF_MS = 100;
export const SESSION_WAIT_MAX_BACKOFF_MS = 2_000;
export const MAX_PENDING_RELAYS = 256;
export const MAX_PENDING_RELAYS_PER_SANDBOX = 32;

/** An error carrying the gRPC status the real gateway would answer with. */
export class GatewayError extends Error {
  constructor(
    readonly code: Status,
    message: string,
  ) {
    super(message);
  }
}

export interface LiveSession {
  sandboxId: string;
  sessionId: string;
  send(msg: GatewayMessage): void;
  /** Ends the session loop (supersede); the stream closes and the loop does its cleanup. */
  shutdown(reason: string): void;
}

interface PendingRelay {
  sandboxId: string;
  createdAtMs: number;
  relayOpen: RelayOpenMessage;
  resolve(stream: Duplex): void;
  reject(err: Error): void;
}

export class SessionRegistry {
  private readonly sessions = new Map<string, LiveSession>();
  private readonly pending = new Map<string, PendingRelay>();
  private readonly reaper: NodeJS.Timeout;

  /**
   * `sessionWaitMs`: when set, how long every call waits for the sandbox's supervisor session in
   * place of the wait its protocol path gives (upstream: 30 s for SSH, exec and relays). Tests that
   * measure a mis-routed call's failure, not the wait, shorten it.
   */
  constructor(private readonly sessionWaitMs?: number) {
    // reference §6: a reaper drops relay entries older than the pending timeout every 30 s.
    this.reaper = setInterval(() => this.reap(Date.now()), 30_000);
    this.reaper.unref();
  }

  /**
   * Set once the process shuts down. The 2026-08 gateway (v0.0.111) stops its listeners, releases the
   * lease and returns: session tasks are dropped, so a session that ends then writes nothing
   * (measured: 0 `supervisor session: ended` lines and no Provisioning write between SIGTERM and exit
   * for the 11-12 registrations a gateway still held).
   */
  closing = false;

  close(): void {
    this.closing = true;
    clearInterval(this.reaper);
    for (const p of this.pending.values()) p.reject(new GatewayError(Status.UNAVAILABLE, 'gateway shutting down'));
    this.pending.clear();
    for (const s of [...this.sessions.values()]) s.shutdown('gateway shutting down');
  }

  has(sandboxId: string): boolean {
    return this.sessions.has(sandboxId);
  }

  sandboxIds(): string[] {
    return [...this.sessions.keys()];
  }

  get(sandboxId: string): LiveSession | undefined {
    return this.sessions.get(sandboxId);
  }

  /**
   * 2026-08 `disconnect` (StopSandbox, reference §2.9): removes the entry first, so the ending
   * session's remove-if-current cleanup finds nothing and writes no phase, then shuts it down.
   */
  disconnect(sandboxId: string): boolean {
    const s = this.sessions.get(sandboxId);
    if (!s) return false;
    this.sessions.delete(sandboxId);
    s.shutdown('sandbox stopped');
    return true;
  }

  /** Inserts the session, superseding (shutting down) any older one for the same sandbox. */
  register(session: LiveSession): LiveSession | undefined {
    const old = this.sessions.get(session.sandboxId);
    this.sessions.set(session.sandboxId, session);
    if (old) old.shutdown('superseded by reconnect');
    return old;
  }

  /** Removes the entry only if it is still this session, so a late exit cannot evict a successor. */
  removeIfCurrent(sandboxId: string, sessionId: string): boolean {
    const cur = this.sessions.get(sandboxId);
    if (cur && cur.sessionId === sessionId) {
      this.sessions.delete(sandboxId);
      return true;
    }
    return false;
  }

  /** Polls the local map with 100 ms doubling to 2 s backoff, like wait_for_session (reference §6). */
  async waitForSession(sandboxId: string, timeoutMs: number): Promise<LiveSession> {
    const deadline = Date.now() + timeoutMs;
    let backoff = SESSION_WAIT_INITIAL_BACKOFF_MS;
    for (;;) {
      const s = this.sessions.get(sandboxId);
      if (s) return s;
      if (Date.now() + backoff > deadline) {
        throw new GatewayError(Status.UNAVAILABLE, 'supervisor session not connected');
      }
      await new Promise((r) => setTimeout(r, backoff).unref());
      backoff = Math.min(backoff * 2, SESSION_WAIT_MAX_BACKOFF_MS);
    }
  }

  /**
   * open_relay: waits for a local session, registers a pending relay and sends RelayOpen on the
   * session's control stream. `stream` resolves when the supervisor's RelayStream claims it.
   */
  async openRelay(
    sandboxId: string,
    sessionWaitMs: number,
    opts: { target?: RelayTarget; serviceId?: string } = {},
  ): Promise<{ channelId: string; stream: Promise<Duplex> }> {
    const session = await this.waitForSession(sandboxId, this.sessionWaitMs ?? sessionWaitMs);
    if (this.pending.size >= MAX_PENDING_RELAYS) {
      throw new GatewayError(Status.RESOURCE_EXHAUSTED, `gateway relay capacity reached (${MAX_PENDING_RELAYS} in flight)`);
    }
    let perSandbox = 0;
    for (const p of this.pending.values()) if (p.sandboxId === sandboxId) perSandbox++;
    if (perSandbox >= MAX_PENDING_RELAYS_PER_SANDBOX) {
      throw new GatewayError(Status.RESOURCE_EXHAUSTED, `per-sandbox relay limit reached (${MAX_PENDING_RELAYS_PER_SANDBOX} in flight for ${sandboxId})`);
    }
    const channelId = randomUUID();
    // Seed RelayOpen carries only the channel id; 2026-08 adds target and service id.
    const relayOpen: RelayOpenMessage = { channel_id: channelId };
    if (opts.target?.kind === 'ssh') relayOpen.ssh = {};
    else if (opts.target?.kind === 'tcp') relayOpen.tcp = { host: opts.target.host, port: opts.target.port };
    if (opts.serviceId) relayOpen.service_id = opts.serviceId;
    let timer: NodeJS.Timeout | undefined;
    const stream = new Promise<Duplex>((resolve, reject) => {
      this.pending.set(channelId, {
        sandboxId,
        createdAtMs: Date.now(),
        relayOpen,
        resolve: (s) => {
          clearTimeout(timer);
          resolve(s);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      timer = setTimeout(() => {
        if (this.pending.delete(channelId)) {
          reject(new GatewayError(Status.DEADLINE_EXCEEDED, 'relay stream did not arrive in time'));
        }
      }, RELAY_PENDING_TIMEOUT_MS);
      timer.unref();
    });
    // Callers that never await `stream` must not produce an unhandled rejection.
    stream.catch(() => undefined);
    session.send({ relay_open: relayOpen });
    return { channelId, stream };
  }

  /**
   * 2026-08 `fail_pending_relay`: a RelayOpenResult{success=false} fails the waiter at once with
   * UNAVAILABLE carrying the supervisor's error (reference §8 "Relays").
   */
  failRelay(channelId: string, error: string): boolean {
    const p = this.pending.get(channelId);
    if (!p) return false;
    this.pending.delete(channelId);
    p.reject(new GatewayError(Status.UNAVAILABLE, error));
    return true;
  }

  /**
   * claim_relay: NOT_FOUND for unknown ids, DEADLINE_EXCEEDED past the pending timeout. At 2026-08
   * `authorize` checks the caller's sandbox principal against the entry first and the timeout
   * message is "relay channel timed out" (supervisor_session.rs@v0.0.111:367-385).
   */
  claimRelay(
    channelId: string,
    nowMs = Date.now(),
    opts: { authorize?: (sandboxId: string) => void; expiredMessage?: string } = {},
  ): PendingRelay {
    const p = this.pending.get(channelId);
    if (!p) throw new GatewayError(Status.NOT_FOUND, 'unknown or expired relay channel');
    opts.authorize?.(p.sandboxId);
    this.pending.delete(channelId);
    if (nowMs - p.createdAtMs > RELAY_PENDING_TIMEOUT_MS) {
      const err = new GatewayError(Status.DEADLINE_EXCEEDED, opts.expiredMessage ?? 'relay channel expired');
      p.reject(err);
      throw err;
    }
    return p;
  }

  /** After a supersede in this process, pending RelayOpens for the sandbox are re-sent. */
  replayPendingRelays(session: LiveSession): number {
    let n = 0;
    for (const p of this.pending.values()) {
      if (p.sandboxId === session.sandboxId) {
        session.send({ relay_open: p.relayOpen });
        n++;
      }
    }
    return n;
  }

  private reap(nowMs: number): void {
    for (const [id, p] of this.pending) {
      if (nowMs - p.createdAtMs > RELAY_PENDING_TIMEOUT_MS) {
        this.pending.delete(id);
        p.reject(new GatewayError(Status.DEADLINE_EXCEEDED, 'relay channel expired'));
      }
    }
  }
}
