// The client side of 2026-08 SSH and port forwards (reference §2.3 HEAD): one gRPC `ForwardTcp`
// bidi stream whose first frame is `init` (sandbox id, service id, ssh or tcp target, the SSH session
// token), then `data` frames both ways, exposed as a byte Duplex; and an SSH session over it, like the
// CLI's `openshell ssh-proxy` plus ssh.
import { Duplex } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { openShellClient } from './proto.ts';
import { runSshCommand, type SshCommandResult } from './ssh-client.ts';

interface Frame {
  payload?: 'init' | 'data';
  data?: Buffer | null;
}

type ForwardCall = grpc.ClientDuplexStream<unknown, Frame>;

interface ForwardClient extends grpc.Client {
  ForwardTcp(metadata: grpc.Metadata, options?: grpc.CallOptions): ForwardCall;
}

export interface ForwardTcpInit {
  sandboxId: string;
  /** `ssh` (default) or a loopback tcp target inside the sandbox. */
  target?: { ssh: true } | { tcp: { host: string; port: number } };
  token?: string;
  serviceId?: string;
}

export interface ForwardTcpStream {
  /** Bytes to and from the target; destroyed with the call's error if the call fails. */
  socket: Duplex;
  /** The call's final status (OK, or the gateway's refusal). */
  status: Promise<grpc.StatusObject>;
  call: ForwardCall;
}

/** A grpc-js client on its own connection (no shared subchannel), so a balancer places each anew. */
export function forwardClient(endpoint: string): grpc.Client {
  const Ctor = openShellClient();
  return new Ctor(endpoint, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
}

export function openForwardTcp(client: grpc.Client, init: ForwardTcpInit, metadata = new grpc.Metadata()): ForwardTcpStream {
  const call = (client as ForwardClient).ForwardTcp(metadata);
  const target = init.target ?? { ssh: true };
  call.write({
    init: {
      sandbox_id: init.sandboxId,
      service_id: init.serviceId ?? `ssh-proxy:${init.sandboxId}`,
      ...('ssh' in target ? { ssh: {} } : { tcp: target.tcp }),
      authorization_token: init.token ?? '',
    },
  });
  const socket = new Duplex({
    write(chunk: Buffer, _enc, cb) {
      if (call.writableEnded) return cb(new Error('forward stream closed'));
      if (!call.write({ data: chunk })) call.once('drain', () => cb());
      else cb();
    },
    final(cb) {
      call.end();
      cb();
    },
    read() {
      call.resume();
    },
    destroy(err, cb) {
      call.cancel();
      cb(err);
    },
  });
  call.on('data', (f: Frame) => {
    if (f.data && f.data.length > 0 && !socket.push(f.data)) call.pause();
  });
  call.on('end', () => socket.push(null));
  call.on('error', (err: grpc.ServiceError) => socket.destroy(err));
  const status = new Promise<grpc.StatusObject>((resolve) => call.on('status', resolve));
  return { socket, status, call };
}

export interface SshViaForwardResult extends SshCommandResult {
  /** grpc status code of the ForwardTcp call when it was refused (null when SSH ran). */
  grpcCode: number | null;
  grpcDetails: string;
}

/** ForwardTcp with an ssh target, then one SSH command over it (the CLI's ssh-proxy + ssh). */
export async function sshViaForwardTcp(opts: {
  endpoint: string;
  sandboxId: string;
  token: string;
  command: string;
  stdin?: string | Buffer;
  timeoutMs?: number;
}): Promise<SshViaForwardResult> {
  const client = forwardClient(opts.endpoint);
  const fwd = openForwardTcp(client, { sandboxId: opts.sandboxId, token: opts.token });
  fwd.socket.on('error', () => undefined);
  try {
    const ran = runSshCommand(fwd.socket, opts.command, { stdin: opts.stdin, timeoutMs: opts.timeoutMs ?? 30_000 }).then(
      (r) => ({ ok: true as const, r }),
      (err: unknown) => ({ ok: false as const, err }),
    );
    const outcome = await ran;
    if (outcome.ok) return { ...outcome.r, grpcCode: null, grpcDetails: '' };
    const st = await Promise.race([fwd.status, new Promise<null>((r) => setTimeout(() => r(null), 1000).unref())]);
    if (st && st.code !== grpc.status.OK) return { stdout: '', stderr: '', code: null, grpcCode: st.code, grpcDetails: st.details };
    throw outcome.err;
  } finally {
    fwd.socket.destroy();
    client.close();
  }
}
