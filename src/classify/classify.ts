// Pure classification of incoming traffic (2026-04 protocol, reference §2.9 "seed"): which
// connections speak which protocol, and which requests are sandbox-scoped.

export type TrafficClass =
  | 'supervisor-control'
  | 'supervisor-relay'
  | 'ssh-tunnel'
  | 'exec'
  | 'logs-push'
  | 'logs-get'
  | 'watch'
  | 'passthrough';

/** Classes whose routing key is in the first gRPC request message (reference §2.0). */
export type KeyedGrpcClass = Exclude<TrafficClass, 'ssh-tunnel' | 'passthrough'>;

export const OPENSHELL_SERVICE_PREFIX = '/openshell.v1.OpenShell/';

const GRPC_METHOD_CLASSES: ReadonlyMap<string, KeyedGrpcClass> = new Map([
  [`${OPENSHELL_SERVICE_PREFIX}ConnectSupervisor`, 'supervisor-control'],
  [`${OPENSHELL_SERVICE_PREFIX}RelayStream`, 'supervisor-relay'],
  [`${OPENSHELL_SERVICE_PREFIX}ExecSandbox`, 'exec'],
  [`${OPENSHELL_SERVICE_PREFIX}PushSandboxLogs`, 'logs-push'],
  [`${OPENSHELL_SERVICE_PREFIX}GetSandboxLogs`, 'logs-get'],
  [`${OPENSHELL_SERVICE_PREFIX}WatchSandbox`, 'watch'],
]);

/**
 * Class of a gRPC request by its `:path`. Matching is exact: everything else, including
 * `CreateSshSession` and `/openshell.inference.v1.Inference/*`, is DB-backed and safe on any
 * replica (reference §2.9), so it goes to the local gateway untouched.
 */
export function classifyGrpcPath(path: string): TrafficClass {
  return GRPC_METHOD_CLASSES.get(path) ?? 'passthrough';
}

export function isKeyedGrpcClass(cls: TrafficClass): cls is KeyedGrpcClass {
  return cls !== 'ssh-tunnel' && cls !== 'passthrough';
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
