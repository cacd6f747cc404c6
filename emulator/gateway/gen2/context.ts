// What every 2026-08 handler of one gateway emulator replica shares.
import type { Logger } from 'pino';
import type { LogBus, WatchBus } from '../buses.ts';
import type { SessionRegistry } from '../registry.ts';
import type { SshSlots } from '../ssh-tunnel.ts';
import type { AuthOptions } from './auth.ts';
import type { SandboxJwt } from './jwt.ts';
import type { Gen2Store } from './store.ts';

/** Default service-routing base domain (crates/openshell-core/src/config.rs@v0.0.111, reference §2.7). */
export const DEFAULT_SERVICE_BASE_DOMAIN = 'openshell.localhost';

/**
 * The gateway's per-process `sync_lock` (compute/mod.rs@v0.0.111:567,691-700): session phase writes and
 * the reconciler's snapshot applies of one replica run one at a time. Not shared between replicas.
 */
export class SyncLock {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.tail.then(fn, fn);
    this.tail = next.catch(() => undefined);
    return next;
  }
}

export interface Gen2Context {
  replica: string;
  version: string;
  store: Gen2Store;
  registry: SessionRegistry;
  logs: LogBus;
  watch: WatchBus;
  /** Per-process ForwardTcp connection counters (3 per token, 20 per sandbox). */
  slots: SshSlots;
  logger: Logger;
  heartbeatIntervalSecs: number;
  jwt: SandboxJwt;
  auth: AuthOptions;
  /** Base domains of sandbox service hosts, first one used for URLs. */
  serviceBaseDomains: string[];
  /** This replica's sync_lock. */
  syncLock: SyncLock;
  /** Phase writes in flight, awaited before the store closes on shutdown. */
  inflight: Set<Promise<unknown>>;
  /** Emulator instrumentation: session phase writes lost to a CAS conflict (only logged upstream; docs/interop.md U1). */
  lostSessionWrites: { ready: number; disconnected: number };
  /** Test instrumentation: a pause between a session phase write's read and its CAS (see GatewayOptions). */
  debugSessionWriteDelayMs?: number;
  /** Test instrumentation set over the health port: lifecycle writes that will meet a concurrent rewrite of their row. */
  debug: { lifecycleConflicts: number };
  /** The gateway's bind address and scheme (CreateSshSession, service URLs). */
  advertised: () => { host: string; port: number; scheme: 'http' | 'https' };
}
