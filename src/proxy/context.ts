// What every proxy handler needs, built once by the sidecar's composition root.
import type { Logger } from 'pino';
import type { SandboxJwtVerifier } from '../auth/sandbox-jwt.ts';
import type { InspectDeps } from '../admin/inspect.ts';
import type { SshTokenCheck } from '../auth/ssh-tokens.ts';
import type { SidecarConfig } from '../config/schema.ts';
import type { SlotLimiter } from '../limits/slots.ts';
import type { SidecarMetrics } from '../metrics/registry.ts';
import type { GatewayObjects } from '../ownership/gateway-objects.ts';
import type { OwnershipStore } from '../ownership/types.ts';
import type { LocalSessions, OwnerRouter } from '../routing/router.ts';
import type { SandboxKeys } from '../routing/sandbox-keys.ts';
import type { ByteBudget } from './byte-budget.ts';
import type { GatewayTransport } from './gateway-transport.ts';
import type { SessionPool, SpreadPool } from './h2-sessions.ts';
import type { GatewayWatch } from '../readiness/gateway-watch.ts';
import type { ShadowRegistry } from '../readiness/shadows.ts';
import type { PeerAuth } from '../peers/peer-auth.ts';

export interface ProxyContext {
  config: SidecarConfig;
  logger: Logger;
  metrics: SidecarMetrics;
  store: OwnershipStore;
  router: OwnerRouter;
  localSessions: LocalSessions;
  /** Cluster-wide connection limits, checked at the ingress before any peer hop (DESIGN §5). */
  limiter: SlotLimiter;
  /** Read-only view of the gateway's `objects` table (sandbox existence, disconnect writes). */
  gatewayObjects: GatewayObjects;
  /** Sandbox ids behind names and service hosts (the gateway's table, cached). */
  sandboxKeys: SandboxKeys;
  /** Verifies supervisors' sandbox JWTs with the local gateway's published keys. */
  jwt: SandboxJwtVerifier;
  /** SSH session tokens checked against the gateway's table before a slot is taken. */
  sshTokens: SshTokenCheck;
  /** The local gateway: origin (http:// or https://), TLS settings, raw connections. */
  gateway: GatewayTransport;
  /** Origin of the local gateway, e.g. http://127.0.0.1:18080 (https:// when it speaks TLS). */
  gatewayOrigin: string;
  gatewayHost: string;
  gatewayPort: number;
  /** Shared sessions to the local gateway (non-supervisor streams) and to peers. */
  gatewayPool: SessionPool;
  peerPool: SessionPool;
  /** Connections to the local gateway for shadow registrations hosted here (many long-lived streams). */
  shadowUpstreams: SpreadPool;
  /** Shadows other replicas registered on our gateway, by sandbox (their RelayOpens reach nobody). */
  hostedShadows: Map<string, number>;
  /** Shadow registrations of this replica's supervisor sessions on the other replicas' gateways. */
  shadows: ShadowRegistry | undefined;
  /** Set once the replica drains (SIGTERM, POST /drain): no new supervisor sessions. */
  drainState: { draining: boolean };
  /** Lease holder and native-HA detection for the local gateway. */
  gatewayWatch: GatewayWatch;
  /** Shared secret for the peer protocol; undefined in embedded mode, and with peer mTLS alone. */
  peerSecret: string | undefined;
  /** First-message bytes all client connections together may have buffered (config totalBufferBytes). */
  bufferBudget: ByteBudget;
  /** Peer mTLS: identities of peers checked against the replica registry (undefined: no peer TLS). */
  peerAuth?: PeerAuth;
  nextConnId(): string;
  /** What the peer port's inspect endpoint reads (status, explain, live page). */
  inspect?: InspectDeps;
}
