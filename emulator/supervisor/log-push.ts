// The 2026-08 supervisor's lifetime log push: one `PushSandboxLogs` client stream on a connection of
// its own (log_push.rs@v0.0.111:127 opens its own client), every batch carrying the sandbox id,
// started before `ConnectSupervisor` (reference §2.1 "Other supervisor RPCs", §8). A broken stream is
// reopened with backoff; lines queued meanwhile are kept (bounded).
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { openShellClient } from '../proto.ts';

const FLUSH_INTERVAL_MS = 200;
const MAX_QUEUED_LINES = 1000;
/** The gateway keeps at most 100 lines of a batch (reference §8), so batches never exceed that. */
const MAX_BATCH_LINES = 100;

interface Line {
  sandbox_id: string;
  timestamp_ms: number;
  level: string;
  target: string;
  message: string;
  source: string;
}

type PushCall = grpc.ClientWritableStream<{ sandbox_id: string; logs: Line[] }>;

interface PushClient extends grpc.Client {
  PushSandboxLogs(metadata: grpc.Metadata, cb: (err: grpc.ServiceError | null) => void): PushCall;
}

export class LogPusher {
  private client: PushClient | null = null;
  private call: PushCall | null = null;
  private readonly queue: Line[] = [];
  private timer: NodeJS.Timeout | null = null;
  private retry: NodeJS.Timeout | null = null;
  private backoffMs = 1000;
  private stopped = false;
  /** Batches written so far (for tests). */
  batches = 0;

  constructor(
    private readonly opts: { endpoint: string; sandboxId: string; metadata: () => grpc.Metadata; logger: Logger },
  ) {}

  start(): void {
    this.open();
    this.timer = setInterval(() => this.flush(), FLUSH_INTERVAL_MS);
    this.timer.unref();
  }

  push(message: string, level = 'INFO'): void {
    if (this.stopped) return;
    this.queue.push({ sandbox_id: this.opts.sandboxId, timestamp_ms: Date.now(), level, target: 'openshell_sandbox', message, source: 'sandbox' });
    if (this.queue.length > MAX_QUEUED_LINES) this.queue.splice(0, this.queue.length - MAX_QUEUED_LINES);
  }

  private open(): void {
    if (this.stopped) return;
    const Ctor = openShellClient();
    const client = new Ctor(this.opts.endpoint, grpc.credentials.createInsecure(), {
      'grpc.use_local_subchannel_pool': 1,
    }) as unknown as PushClient;
    this.client = client;
    const call = client.PushSandboxLogs(this.opts.metadata(), (err) => {
      if (this.call === call) this.call = null;
      client.close();
      if (this.client === client) this.client = null;
      if (this.stopped) return;
      this.opts.logger.debug({ err: err?.details }, 'log push stream ended; reopening');
      this.retry = setTimeout(() => {
        this.retry = null;
        this.open();
      }, this.backoffMs);
      this.retry.unref();
      this.backoffMs = Math.min(this.backoffMs * 2, 30_000);
    });
    call.on('error', () => undefined);
    this.call = call;
  }

  /** Writes the queued lines now (a batch of at most 100). */
  flush(): void {
    const call = this.call;
    if (!call || this.queue.length === 0 || call.writableEnded) return;
    const logs = this.queue.splice(0, MAX_BATCH_LINES);
    call.write({ sandbox_id: this.opts.sandboxId, logs });
    this.batches++;
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.flush();
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    if (this.retry) clearTimeout(this.retry);
    const call = this.call;
    const client = this.client;
    this.call = null;
    this.client = null;
    if (call && !call.writableEnded) {
      // Half-close so the gateway answers; do not wait long for it.
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 500);
        t.unref();
        call.once('status', () => {
          clearTimeout(t);
          resolve();
        });
        call.end();
      });
    }
    client?.close();
  }
}
