// gRPC authentication and method authorization of the 2026-08 gateway, as read from upstream
// v0.0.111 (reference §2.1 HEAD, §8 "Auth modes"):
// - AuthGrpcRouter::call (multiplex.rs@v0.0.111:976-1048): Health bypasses auth; the chain runs;
//   Ok(None) (no bearer, or a bearer whose kid is not the sandbox-JWT kid) becomes the local dev
//   user when `allow_unauthenticated_users` is set, else UNAUTHENTICATED "missing authorization
//   header"; an authenticator error (bad signature, expired, undecodable) is returned as is.
//   A user principal on a `sandbox`-mode method gets PERMISSION_DENIED "this method requires a
//   sandbox principal"; a sandbox principal on a method that is not `sandbox`/`dual` gets
//   PERMISSION_DENIED "sandbox principals may not call this method".
// - SandboxJwtAuthenticator (auth/sandbox_jwt.rs@v0.0.111:278-322, 358-372): see jwt.ts.
// - Handlers then scope the principal: ensure_sandbox_principal_scope (auth/guard.rs@v0.0.111:78-97)
//   on Hello and relay claims; ensure_sandbox_scope (guard.rs:30-49) on log pushes.
// Auth modes are the `(openshell.options.v1.authorization)` annotations in proto/openshell.proto@v0.0.111.
import { status as Status, type Metadata } from '@grpc/grpc-js';
import { GatewayError } from '../registry.ts';
import type { SandboxJwt } from './jwt.ts';

export type AuthMode = 'unauthenticated' | 'sandbox' | 'bearer' | 'dual';

export const METHOD_AUTH_MODES: Record<string, AuthMode> = {
  Health: 'unauthenticated',
  CreateSandbox: 'bearer',
  GetSandbox: 'bearer',
  ListSandboxes: 'bearer',
  DeleteSandbox: 'bearer',
  StopSandbox: 'bearer',
  StartSandbox: 'bearer',
  CreateSshSession: 'bearer',
  ExposeService: 'bearer',
  GetService: 'bearer',
  ListServices: 'bearer',
  DeleteService: 'bearer',
  ExecSandbox: 'bearer',
  ForwardTcp: 'bearer',
  ExecSandboxInteractive: 'bearer',
  GetSandboxLogs: 'bearer',
  PushSandboxLogs: 'sandbox',
  ConnectSupervisor: 'sandbox',
  RelayStream: 'sandbox',
  WatchSandbox: 'bearer',
  GetSandboxConfig: 'dual',
  ReportPolicyStatus: 'sandbox',
};

export type Principal = { kind: 'sandbox'; sandboxId: string } | { kind: 'user'; subject: string };

/** unauthenticated_dev_user_principal (multiplex.rs@v0.0.111:945-955). */
const DEV_USER: Principal = { kind: 'user', subject: 'unauthenticated-local-dev' };

export interface AuthOptions {
  jwt: SandboxJwt;
  /** `[openshell.gateway.auth] allow_unauthenticated_users`; the emulator's default is true so SDK/CLI calls work without OIDC. */
  allowUnauthenticatedUsers: boolean;
}

function bearer(md: Metadata): string | null {
  const v = md.get('authorization')[0];
  if (typeof v !== 'string' || !v.startsWith('Bearer ')) return null;
  return v.slice('Bearer '.length);
}

/** Resolves the caller's principal for `method`, or throws the status the router answers with. */
export async function authenticate(opts: AuthOptions, md: Metadata, method: string): Promise<Principal | null> {
  const mode = METHOD_AUTH_MODES[method] ?? 'bearer';
  if (mode === 'unauthenticated') return null;
  const token = bearer(md);
  let principal: Principal;
  const checked = token === null ? ({ kind: 'not-mine' } as const) : await opts.jwt.check(token);
  if (checked.kind === 'invalid') throw new GatewayError(Status.UNAUTHENTICATED, checked.message);
  if (checked.kind === 'sandbox') principal = { kind: 'sandbox', sandboxId: checked.sandboxId };
  else if (opts.allowUnauthenticatedUsers) principal = DEV_USER;
  else throw new GatewayError(Status.UNAUTHENTICATED, 'missing authorization header');

  if (principal.kind === 'user' && mode === 'sandbox') {
    throw new GatewayError(Status.PERMISSION_DENIED, 'this method requires a sandbox principal');
  }
  if (principal.kind === 'sandbox' && mode !== 'sandbox' && mode !== 'dual') {
    throw new GatewayError(Status.PERMISSION_DENIED, 'sandbox principals may not call this method');
  }
  return principal;
}

/** ensure_sandbox_principal_scope: supervisor RPCs need the sandbox itself. */
export function ensureSandboxPrincipalScope(principal: Principal | null, sandboxId: string): void {
  if (!principal) throw new GatewayError(Status.UNAUTHENTICATED, 'supervisor RPCs require an authenticated sandbox principal');
  if (principal.kind === 'user') throw new GatewayError(Status.PERMISSION_DENIED, 'supervisor RPCs require a sandbox principal');
  ensureSandboxScope(principal, sandboxId);
}

/** ensure_sandbox_scope: users pass (RBAC is their gate); a sandbox only reaches its own id. */
export function ensureSandboxScope(principal: Principal | null, sandboxId: string): void {
  if (!principal) throw new GatewayError(Status.UNAUTHENTICATED, 'sandbox-scoped methods require an authenticated caller');
  if (principal.kind === 'sandbox' && principal.sandboxId !== sandboxId) {
    throw new GatewayError(Status.PERMISSION_DENIED, 'cross-sandbox access denied: principal does not own this sandbox');
  }
}
