// Small promise helpers over the grpc-js OpenShell client, for tests.
import * as grpc from '@grpc/grpc-js';
import { openShellClient, type ExecSandboxEvent } from '../../emulator/proto.ts';

export type OpenShellClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

export function gatewayClient(endpoint: string): OpenShellClient {
  const Ctor = openShellClient();
  return new Ctor(endpoint, grpc.credentials.createInsecure(), {
    'grpc.use_local_subchannel_pool': 1,
  }) as unknown as OpenShellClient;
}

export function unary<T>(client: OpenShellClient, method: string, req: unknown, deadlineMs = 20_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const fn = client[method] as (r: unknown, md: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, v: T) => void) => void;
    fn.call(client, req, new grpc.Metadata(), { deadline: Date.now() + deadlineMs }, (err, value) =>
      err ? reject(err) : resolve(value),
    );
  });
}

export interface ExecResult {
  stdout: string;
  stderr: string;
  exitCode: number | null;
}

/** ExecSandbox to completion; with `deadlineMs` the call ends DEADLINE_EXCEEDED after that long. */
export function exec(client: OpenShellClient, sandboxId: string, command: string[], stdin?: string, deadlineMs?: number): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const req = { sandbox_id: sandboxId, command, stdin: stdin ? Buffer.from(stdin) : Buffer.alloc(0) };
    const fn = client.ExecSandbox as (r: unknown, md?: grpc.Metadata, o?: grpc.CallOptions) => grpc.ClientReadableStream<ExecSandboxEvent>;
    const call = deadlineMs === undefined ? fn.call(client, req) : fn.call(client, req, new grpc.Metadata(), { deadline: Date.now() + deadlineMs });
    const out: ExecResult = { stdout: '', stderr: '', exitCode: null };
    call.on('data', (ev: ExecSandboxEvent) => {
      if (ev.stdout) out.stdout += ev.stdout.data.toString();
      if (ev.stderr) out.stderr += ev.stderr.data.toString();
      if (ev.exit) out.exitCode = ev.exit.exit_code;
    });
    call.on('error', reject);
    call.on('end', () => resolve(out));
  });
}

export function pushLogs(client: OpenShellClient, batches: Array<{ sandbox_id: string; logs: Array<{ message: string; level?: string }> }>): Promise<void> {
  return new Promise((resolve, reject) => {
    const call = (client.PushSandboxLogs as (cb: (e: grpc.ServiceError | null) => void) => grpc.ClientWritableStream<unknown>).call(
      client,
      (err) => (err ? reject(err) : resolve()),
    );
    for (const b of batches) {
      call.write({
        sandbox_id: b.sandbox_id,
        logs: b.logs.map((l, i) => ({ sandbox_id: b.sandbox_id, timestamp_ms: Date.now() + i, level: l.level ?? 'INFO', message: l.message, source: 'sandbox' })),
      });
    }
    call.end();
  });
}

/** Error code of a rejected call, or undefined. */
export async function grpcCode(p: Promise<unknown>): Promise<number | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    return (err as grpc.ServiceError).code;
  }
}
