// The few OpenShell RPCs the interop suite calls itself, encoded by hand from upstream's field numbers
// (reference §2.1, §2.3) with a real wire writer/reader, over grpc-js generic calls. Every call gets
// its own client (its own TCP connection), so a round-robin balancer spreads them like kube-proxy.
import * as grpc from '@grpc/grpc-js';
import { BinaryReader, BinaryWriter, WireType } from '@bufbuild/protobuf/wire';

const SERVICE = '/openshell.v1.OpenShell';
const passthrough = {
  serialize: (b: Buffer): Buffer => b,
  deserialize: (b: Buffer): Buffer => b,
};

function client(endpoint: string): grpc.Client {
  return new grpc.Client(endpoint, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
}

function fields(bytes: Uint8Array): Map<number, Uint8Array | number | bigint> {
  const out = new Map<number, Uint8Array | number | bigint>();
  const r = new BinaryReader(bytes);
  while (r.pos < r.len) {
    const [no, wt] = r.tag();
    if (wt === WireType.LengthDelimited) out.set(no, r.bytes());
    else if (wt === WireType.Varint) out.set(no, r.uint64() as unknown as bigint);
    else r.skip(wt, no);
  }
  return out;
}

const text = (v: unknown): string => (v instanceof Uint8Array ? Buffer.from(v).toString('utf8') : '');

export interface RpcError {
  code: grpc.status;
  details: string;
}

export function asRpcError(err: unknown): RpcError {
  const e = err as Partial<grpc.ServiceError>;
  return { code: e.code ?? grpc.status.UNKNOWN, details: e.details ?? String(err) };
}

export interface SshSession {
  sandboxId: string;
  token: string;
  gatewayHost: string;
  gatewayPort: number;
  gatewayScheme: string;
}

/** `CreateSshSession{sandbox_id=1}` → `{sandbox_id=1, token=2, gateway_host=3, gateway_port=4, gateway_scheme=5}`. */
export function createSshSession(endpoint: string, sandboxId: string, deadlineMs = 15_000): Promise<SshSession> {
  const c = client(endpoint);
  const req = Buffer.from(new BinaryWriter().tag(1, WireType.LengthDelimited).string(sandboxId).finish());
  return new Promise<SshSession>((resolve, reject) => {
    c.makeUnaryRequest(
      `${SERVICE}/CreateSshSession`,
      passthrough.serialize,
      passthrough.deserialize,
      req,
      new grpc.Metadata(),
      { deadline: Date.now() + deadlineMs },
      (err, res) => {
        c.close();
        if (err || !res) return reject(err ?? new Error('empty CreateSshSession answer'));
        const f = fields(res);
        resolve({
          sandboxId: text(f.get(1)),
          token: text(f.get(2)),
          gatewayHost: text(f.get(3)),
          gatewayPort: Number(f.get(4) ?? 0),
          gatewayScheme: text(f.get(5)),
        });
      },
    );
  });
}

/** `TcpForwardFrame{init=1: TcpForwardInit{sandbox_id=1, service_id=4, ssh=5 {}, authorization_token=7}}`. */
export function forwardTcpInit(sandboxId: string, token: string, serviceId = `ssh-proxy:${sandboxId}`): Buffer {
  const init = new BinaryWriter()
    .tag(1, WireType.LengthDelimited)
    .string(sandboxId)
    .tag(4, WireType.LengthDelimited)
    .string(serviceId)
    .tag(5, WireType.LengthDelimited)
    .bytes(new Uint8Array(0));
  if (token) init.tag(7, WireType.LengthDelimited).string(token);
  return Buffer.from(new BinaryWriter().tag(1, WireType.LengthDelimited).bytes(init.finish()).finish());
}

export interface HeldForward {
  /** Resolves with `open` once the sandbox's SSH banner came back, or with the call's error. */
  outcome: Promise<{ open: true; banner: string } | { open: false; error: RpcError }>;
  close(): void;
}

/**
 * Opens one ForwardTcp stream to the sandbox's SSH target and keeps it open (a held SSH tunnel, as
 * `openshell ssh-proxy` makes): the slot it takes counts against the 3-per-token and
 * 20-per-sandbox caps until `close()`.
 */
export function holdForwardTcp(endpoint: string, sandboxId: string, token: string, timeoutMs = 20_000): HeldForward {
  const c = client(endpoint);
  const call = c.makeBidiStreamRequest(`${SERVICE}/ForwardTcp`, passthrough.serialize, passthrough.deserialize, new grpc.Metadata(), {});
  let settled = false;
  const outcome = new Promise<{ open: true; banner: string } | { open: false; error: RpcError }>((resolve) => {
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      resolve({ open: false, error: { code: grpc.status.DEADLINE_EXCEEDED, details: `no SSH banner within ${timeoutMs} ms` } });
    }, timeoutMs);
    call.on('data', (frame: Buffer) => {
      if (settled) return;
      const data = fields(frame).get(2);
      if (!(data instanceof Uint8Array)) return;
      settled = true;
      clearTimeout(timer);
      resolve({ open: true, banner: Buffer.from(data).toString('utf8').trim() });
    });
    call.on('error', (err) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({ open: false, error: asRpcError(err) });
    });
    call.on('end', () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve({ open: false, error: { code: grpc.status.UNKNOWN, details: 'stream ended before any data' } });
    });
  });
  call.write(forwardTcpInit(sandboxId, token));
  return {
    outcome,
    close() {
      call.cancel();
      c.close();
    },
  };
}

/** `SupervisorMessage{hello=1: SupervisorHello{sandbox_id=1, instance_id=2}}`. */
export function supervisorHello(sandboxId: string, instanceId: string): Buffer {
  const hello = new BinaryWriter().tag(1, WireType.LengthDelimited).string(sandboxId).tag(2, WireType.LengthDelimited).string(instanceId).finish();
  return Buffer.from(new BinaryWriter().tag(1, WireType.LengthDelimited).bytes(hello).finish());
}

export type HelloOutcome =
  | { kind: 'accepted'; sessionId: string }
  | { kind: 'rejected'; reason: string }
  | { kind: 'error'; error: RpcError }
  | { kind: 'no-answer' };

/**
 * Sends a `ConnectSupervisor` Hello for `sandboxId` (with `bearer` as the sandbox JWT, or none) and
 * reports the first answer: `SessionAccepted`, `SessionRejected`, or the call's error. The stream
 * is cancelled right after.
 */
export function sendHello(endpoint: string, sandboxId: string, bearer: string | undefined, waitMs = 10_000): Promise<HelloOutcome> {
  const c = client(endpoint);
  const md = new grpc.Metadata();
  if (bearer !== undefined) md.set('authorization', `Bearer ${bearer}`);
  const call = c.makeBidiStreamRequest(`${SERVICE}/ConnectSupervisor`, passthrough.serialize, passthrough.deserialize, md, {});
  return new Promise<HelloOutcome>((resolve) => {
    let done = false;
    const finish = (o: HelloOutcome): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      call.cancel();
      c.close();
      resolve(o);
    };
    const timer = setTimeout(() => finish({ kind: 'no-answer' }), waitMs);
    call.on('data', (msg: Buffer) => {
      const f = fields(msg);
      const accepted = f.get(1);
      const rejected = f.get(2);
      if (accepted instanceof Uint8Array) finish({ kind: 'accepted', sessionId: text(fields(accepted).get(1)) });
      else if (rejected instanceof Uint8Array) finish({ kind: 'rejected', reason: text(fields(rejected).get(1)) });
    });
    call.on('error', (err) => finish({ kind: 'error', error: asRpcError(err) }));
    call.on('end', () => finish({ kind: 'no-answer' }));
    call.write(supervisorHello(sandboxId, `forged-${Date.now()}`));
  });
}
