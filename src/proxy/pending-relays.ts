// Relays the gateway asked a supervisor for (RelayOpen down its control stream) whose RelayStream
// has not arrived yet. A shed ends the control stream only once these arrived (or failed, or aged
// past the gateway's own 10 s wait): a relay lost with the control stream is a client's ForwardTcp,
// exec or service request failing with DEADLINE_EXCEEDED "relay open timed out" (reference §2.2).
import { grpcMethod, OPENSHELL_SERVICE_PREFIX } from '../classify/classify.ts';
import { GRPC_FRAME_HEADER_BYTES, GrpcMessageSplitter } from '../wire/grpc-frame.ts';
import { extractRoutingKey } from '../wire/routing-key.ts';

const RELAY_KEY = grpcMethod(`${OPENSHELL_SERVICE_PREFIX}RelayStream`)?.key;

/** The channel a RelayStream's first frame claims (the routing key the classifier reads), if it is an init frame. */
export function relayInitChannel(message: Uint8Array): string | undefined {
  if (!RELAY_KEY) return undefined;
  try {
    const key = extractRoutingKey(RELAY_KEY, message, 'RelayStream');
    return 'channelId' in key ? key.channelId : undefined;
  } catch {
    return undefined;
  }
}

/** The gateway drops a pending relay after this long (RELAY_PENDING_TIMEOUT, reference §6). */
export const RELAY_PENDING_MS = 10_000;
/** The gateway's MAX_PENDING_RELAYS_PER_SANDBOX is 32; more than this cannot be pending. */
const MAX_TRACKED = 64;
/** Control-stream messages are small; anything larger is not watched further. */
const MAX_WATCHED_MESSAGE_BYTES = 64 * 1024;

export class PendingRelays {
  private readonly awaited = new Map<string, number>();

  opened(channelId: string, now = Date.now()): void {
    this.prune(now);
    if (this.awaited.size >= MAX_TRACKED) {
      const oldest = this.awaited.keys().next().value;
      if (oldest !== undefined) this.awaited.delete(oldest);
    }
    this.awaited.set(channelId, now);
  }

  /** The RelayStream arrived, or the supervisor reported it could not open it. */
  settled(channelId: string): void {
    this.awaited.delete(channelId);
  }

  /** Relays still awaited that the gateway is still waiting for. */
  count(now = Date.now()): number {
    this.prune(now);
    return this.awaited.size;
  }

  private prune(now: number): void {
    for (const [id, at] of this.awaited) {
      if (now - at < RELAY_PENDING_MS) break;
      this.awaited.delete(id);
    }
  }
}

/**
 * Feeds the whole uncompressed gRPC messages of a byte stream to `onMessage` until it returns false
 * or the bytes stop making sense; never throws (watching must not disturb the stream it watches).
 */
export function messageWatcher(onMessage: (message: Buffer) => boolean): (chunk: Buffer) => void {
  const splitter = new GrpcMessageSplitter(MAX_WATCHED_MESSAGE_BYTES);
  let watching = true;
  return (chunk) => {
    if (!watching) return;
    try {
      for (const framed of splitter.push(chunk)) {
        if (framed[0] !== 0) continue; // compressed: not ours to read
        if (!onMessage(framed.subarray(GRPC_FRAME_HEADER_BYTES))) {
          watching = false;
          splitter.reset();
          return;
        }
      }
    } catch {
      watching = false;
      splitter.reset();
    }
  };
}
