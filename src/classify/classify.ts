// Pure classification of incoming traffic for both gateway generations at once (reference §2.9,
// "seed" and "HEAD" tables): which connections speak which protocol, which requests are
// sandbox-scoped, and where each one's routing key lives.
import type { KeySpec } from '../wire/routing-key.ts';

export type TrafficClass =
  | 'supervisor-control'
  | 'supervisor-relay'
  | 'ssh-tunnel'
  | 'tcp-forward'
  | 'exec'
  | 'logs-push'
  | 'logs-get'
  | 'watch'
  | 'sandbox-stop'
  | 'sandbox-affine'
  | 'service-http'
  | 'passthrough';

/**
 * How a class is routed:
 * - `owner`: must reach the replica holding the supervisor session; held while the owner moves.
 * - `owner-rehome`: goes to the owner, and a stream opened before any owner existed moves to the
 *   owner once one appears (watch and the supervisor's early log push, reference §8).
 * - `affine`: any replica can serve it, but its in-memory side effects (watch notifications) stay
 *   on the replica that served it, so it goes to the owner when one is reachable; never held.
 */
export type RoutePolicy = 'owner' | 'owner-rehome' | 'affine' | 'supervisor' | 'local';

/**
 * Classes whose request makes the gateway send a RelayOpen down the supervisor's control stream
 * (reference §2.2): a shed waits for these to be answered. Others (a log push, a watch) can stay open
 * for the session's whole life and are not waited for.
 */
export const RELAY_CLASSES: ReadonlySet<TrafficClass> = new Set<TrafficClass>(['ssh-tunnel', 'tcp-forward', 'exec', 'service-http']);

export const ROUTE_POLICY: Readonly<Record<TrafficClass, RoutePolicy>> = {
  'supervisor-control': 'supervisor',
  'supervisor-relay': 'supervisor',
  'ssh-tunnel': 'owner',
  'tcp-forward': 'owner',
  exec: 'owner',
  'logs-get': 'owner',
  'sandbox-stop': 'owner',
  'service-http': 'owner',
  watch: 'owner-rehome',
  'logs-push': 'owner-rehome',
  'sandbox-affine': 'affine',
  passthrough: 'local',
};

export interface GrpcMethod {
  /** Method name, e.g. `ForwardTcp`. */
  name: string;
  /**
   * Its `:path`, one string for every request: what a held stream keeps (its log bindings, its
   * headers) refers to this, not to a copy per stream.
   */
  path: string;
  cls: Exclude<TrafficClass, 'ssh-tunnel' | 'service-http' | 'passthrough'>;
  key: KeySpec;
}

export const OPENSHELL_SERVICE_PREFIX = '/openshell.v1.OpenShell/';

const field1 = (what: string): KeySpec => ({ kind: 'sandbox-id', field: 1, what });
const byName = (nameField: number, workspaceField: number, unlessTrue?: number): KeySpec => ({
  kind: 'sandbox-name',
  nameField,
  workspaceField,
  what: 'name',
  ...(unlessTrue !== undefined ? { unlessTrue } : {}),
});

/** Field numbers from reference §2.0 and §2.9 (proto/openshell.proto at seed and at HEAD). */
const METHODS: ReadonlyArray<Omit<GrpcMethod, 'path'>> = [
  // SupervisorMessage{ oneof { hello=1 SupervisorHello{sandbox_id=1}, heartbeat=2, relay_open_result=3, relay_close=4 } }
  { name: 'ConnectSupervisor', cls: 'supervisor-control', key: { kind: 'sandbox-id', field: 1, within: { field: 1, oneof: [1, 2, 3, 4], what: 'hello' }, what: 'hello.sandbox_id' } },
  // RelayFrame{ oneof { init=1 RelayInit{channel_id=1}, data=2 } }
  { name: 'RelayStream', cls: 'supervisor-relay', key: { kind: 'channel-id', field: 1, within: { field: 1, oneof: [1, 2], what: 'init' }, what: 'init.channel_id' } },
  // TcpForwardFrame{ oneof { init=1 TcpForwardInit{sandbox_id=1, authorization_token=7}, data=2 } }
  { name: 'ForwardTcp', cls: 'tcp-forward', key: { kind: 'sandbox-id', field: 1, within: { field: 1, oneof: [1, 2], what: 'init' }, tokenField: 7, what: 'init.sandbox_id' } },
  { name: 'ExecSandbox', cls: 'exec', key: field1('sandbox_id') },
  // ExecSandboxInput{ oneof { start=1 ExecSandboxRequest{sandbox_id=1}, stdin=2, resize=3 } }
  { name: 'ExecSandboxInteractive', cls: 'exec', key: { kind: 'sandbox-id', field: 1, within: { field: 1, oneof: [1, 2, 3], what: 'start' }, what: 'start.sandbox_id' } },
  { name: 'PushSandboxLogs', cls: 'logs-push', key: field1('sandbox_id') },
  { name: 'GetSandboxLogs', cls: 'logs-get', key: field1('sandbox_id') },
  { name: 'WatchSandbox', cls: 'watch', key: field1('id') },
  // StopSandboxRequest{name=1, workspace=2}: the gateway drops the live session locally (reference §2.9).
  { name: 'StopSandbox', cls: 'sandbox-stop', key: byName(1, 2) },
  // Softer affinity (reference §8): served anywhere, but only the serving replica's watchers hear of it.
  { name: 'StartSandbox', cls: 'sandbox-affine', key: byName(1, 2) },
  { name: 'DeleteSandbox', cls: 'sandbox-affine', key: byName(1, 2) },
  { name: 'ReportMainProcessExit', cls: 'sandbox-affine', key: field1('sandbox_id') },
  { name: 'ReportPolicyStatus', cls: 'sandbox-affine', key: field1('sandbox_id') },
  // UpdateConfigRequest{name=1, global=6, workspace=10}: a global update names no sandbox.
  { name: 'UpdateConfig', cls: 'sandbox-affine', key: byName(1, 10, 6) },
  { name: 'SubmitPolicyAnalysis', cls: 'sandbox-affine', key: byName(4, 6) },
  { name: 'ApproveDraftChunk', cls: 'sandbox-affine', key: byName(1, 3) },
  { name: 'RejectDraftChunk', cls: 'sandbox-affine', key: byName(1, 4) },
  { name: 'ApproveAllDraftChunks', cls: 'sandbox-affine', key: byName(1, 3) },
  { name: 'EditDraftChunk', cls: 'sandbox-affine', key: byName(1, 4) },
  { name: 'UndoDraftChunk', cls: 'sandbox-affine', key: byName(1, 3) },
  { name: 'ClearDraftChunks', cls: 'sandbox-affine', key: byName(1, 2) },
];

const GRPC_METHODS: ReadonlyMap<string, GrpcMethod> = new Map(
  METHODS.map((m) => {
    const path = `${OPENSHELL_SERVICE_PREFIX}${m.name}`;
    return [path, { ...m, path }];
  }),
);

/**
 * The sandbox-scoped method a gRPC request's `:path` names, or undefined. Matching is exact:
 * everything else, including `CreateSshSession` and `/openshell.inference.v1.Inference/*`, is
 * DB-backed and safe on any replica (reference §2.9), so it goes to the local gateway untouched.
 */
export function grpcMethod(path: string): GrpcMethod | undefined {
  return GRPC_METHODS.get(path);
}

/** Class of a gRPC request by its `:path`. */
export function classifyGrpcPath(path: string): TrafficClass {
  return GRPC_METHODS.get(path)?.cls ?? 'passthrough';
}

/** The method spec by name (tests and tools). */
export function methodNamed(name: string): GrpcMethod {
  const m = GRPC_METHODS.get(`${OPENSHELL_SERVICE_PREFIX}${name}`);
  if (!m) throw new Error(`no sandbox-scoped method ${name}`);
  return m;
}

/** The gateway's default `--ssh-connect-path` (reference §2.3). */
export const DEFAULT_SSH_CONNECT_PATH = '/connect/ssh';

/**
 * Class of an HTTP/1.1 request. Only `CONNECT <sshConnectPath>` with that exact request-target is
 * an SSH tunnel (the CLI writes origin-form, reference §2.3). A CONNECT in authority-form
 * (`host:port`) or to any other target, and any other method on the SSH path (the gateway answers
 * 405), go to the local gateway.
 */
export function classifyHttp1(
  method: string,
  requestTarget: string,
  sshConnectPath: string = DEFAULT_SSH_CONNECT_PATH,
): TrafficClass {
  return method === 'CONNECT' && requestTarget === sshConnectPath ? 'ssh-tunnel' : 'passthrough';
}

/** The gateway routes on `content-type: application/grpc*` (reference §0.1). */
export function isGrpcContentType(contentType: string | undefined): boolean {
  return contentType !== undefined && contentType.toLowerCase().startsWith('application/grpc');
}

export type Preface = 'h2' | 'http1' | 'tls' | 'need-more' | 'garbage';

export const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

const TLS_HANDSHAKE_RECORD = 0x16;
const TLS_MAJOR_VERSION = 0x03;
// Longest registered HTTP method made only of letters is UPDATEREDIRECTREF (17).
const MAX_METHOD_LENGTH = 20;

/**
 * What a new connection speaks, from its first bytes (the gateway also sniffs rather than
 * trusting ALPN, reference §0.1). `need-more` until the bytes decide it.
 */
export function detectPreface(firstBytes: Uint8Array): Preface {
  if (firstBytes.length === 0) return 'need-more';

  const h2Compared = Math.min(firstBytes.length, H2_PREFACE.length);
  if (Buffer.compare(firstBytes.subarray(0, h2Compared), H2_PREFACE.subarray(0, h2Compared)) === 0) {
    return h2Compared === H2_PREFACE.length ? 'h2' : 'need-more';
  }

  if (firstBytes[0] === TLS_HANDSHAKE_RECORD) {
    if (firstBytes.length === 1) return 'need-more';
    return firstBytes[1] === TLS_MAJOR_VERSION ? 'tls' : 'garbage';
  }

  // HTTP/1.x request line: method token (uppercase letters here) then a single space.
  for (let i = 0; i < firstBytes.length && i <= MAX_METHOD_LENGTH; i++) {
    const b = firstBytes[i] as number;
    if (b === 0x20) return i > 0 ? 'http1' : 'garbage';
    if (b < 0x41 || b > 0x5a) return 'garbage';
  }
  return firstBytes.length <= MAX_METHOD_LENGTH ? 'need-more' : 'garbage';
}

/** Prefix of the headers sidecars use between themselves. */
export const INTERNAL_HEADER_PREFIX = 'x-ohs-';

/**
 * Removes every `x-ohs-*` header (any case) from `headers`, in place, and returns what was
 * removed. Run on every public request so clients cannot forge hop counts or peer claims.
 */
export function stripInternalHeaders<V>(headers: Record<string, V>): Record<string, V> {
  const removed: Record<string, V> = {};
  for (const name of Object.keys(headers)) {
    if (name.toLowerCase().startsWith(INTERNAL_HEADER_PREFIX)) {
      removed[name] = headers[name] as V;
      delete headers[name];
    }
  }
  return removed;
}
