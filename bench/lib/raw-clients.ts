// Raw clients of both SSH data paths, for measuring proxies rather than SSH: a 2026-04
// `CONNECT /connect/ssh` tunnel (bytes on a TCP socket) and a 2026-08 `ForwardTcp` gRPC stream
// (init message, then `data` messages), each as a byte channel with a counter of bytes received.
// Every wait is bounded in time; every loop in count and time.
import http2 from 'node:http2';
import net from 'node:net';
import type { Writable } from 'node:stream';
import { BinaryWriter, WireType } from '@bufbuild/protobuf/wire';

export const FORWARD_TCP = '/openshell.v1.OpenShell/ForwardTcp';
export const CONNECT_SUPERVISOR = '/openshell.v1.OpenShell/ConnectSupervisor';

/** `[0][u32 length][message]`: one uncompressed gRPC message. */
export function grpcFrame(message: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(5 + message.length);
  out[0] = 0;
  out.writeUInt32BE(message.length, 1);
  out.set(message, 5);
  return out;
}

/** TcpForwardFrame{ data = bytes } as one gRPC message. */
export function frameData(data: Uint8Array): Buffer {
  return grpcFrame(new BinaryWriter().tag(2, WireType.LengthDelimited).bytes(data).finish());
}

/** TcpForwardFrame{ init = TcpForwardInit{ sandbox_id, service_id, ssh {}, authorization_token } }. */
export function forwardInitFrame(sandboxId: string, token: string): Buffer {
  const w = new BinaryWriter().tag(1, WireType.LengthDelimited).fork();
  w.tag(1, WireType.LengthDelimited).string(sandboxId);
  w.tag(4, WireType.LengthDelimited).string(`ssh-proxy:${sandboxId}`);
  w.tag(5, WireType.LengthDelimited).fork().join();
  w.tag(7, WireType.LengthDelimited).string(token);
  return grpcFrame(w.join().finish());
}

/** SupervisorMessage{ hello = SupervisorHello{ sandbox_id, instance_id } }. */
export function helloFrame(sandboxId: string, instanceId = 'bench'): Buffer {
  const w = new BinaryWriter().tag(1, WireType.LengthDelimited).fork();
  w.tag(1, WireType.LengthDelimited).string(sandboxId);
  w.tag(2, WireType.LengthDelimited).string(instanceId);
  return grpcFrame(w.join().finish());
}

/** 64 KiB of raw tunnel bytes. */
export const RAW_BULK_CHUNK = Buffer.alloc(64 * 1024, 0x61);
// A 16 KiB gRPC message: 5-byte prefix + tag + 2-byte varint length + 16 376 data bytes.
const GRPC_DATA_BYTES = 16 * 1024 - 8;
/** 64 KiB of gRPC stream bytes: four whole `data` messages. */
export const GRPC_BULK_CHUNK = Buffer.concat(Array.from({ length: 4 }, () => frameData(Buffer.alloc(GRPC_DATA_BYTES, 0x61))));
if (GRPC_BULK_CHUNK.length !== 64 * 1024) throw new Error(`gRPC bulk chunk is ${GRPC_BULK_CHUNK.length} bytes`);

export const PING = Buffer.from('0123456789abcdef0123456789abcdef');
/** What a ping is on each path: 32 raw bytes, or one `data` message carrying them. */
export const PING_BYTES = { connect: PING, grpc: frameData(PING) } as const;
/** Length of the sink's acknowledgement on each path. */
export const ACK_BYTES = { connect: 1, grpc: frameData(Buffer.from('K')).length } as const;

/** Counts bytes arriving on a readable and lets a caller wait (bounded) until a total is reached. */
export class ByteCounter {
  received = 0;
  #target = Infinity;
  #resolve: (() => void) | undefined;
  #reject: ((err: Error) => void) | undefined;
  #failed: Error | undefined;

  constructor(source: NodeJS.ReadableStream & { on(ev: 'close', f: () => void): unknown }) {
    source.on('data', (d: Buffer) => {
      this.received += d.length;
      if (this.received >= this.#target) this.#settle();
    });
    const fail = (err?: Error): void => {
      this.#failed ??= err ?? new Error('closed before the expected bytes arrived');
      const reject = this.#reject;
      this.#resolve = undefined;
      this.#reject = undefined;
      reject?.(this.#failed);
    };
    source.on('error', fail);
    source.on('close', () => fail());
  }

  #settle(): void {
    const resolve = this.#resolve;
    this.#resolve = undefined;
    this.#reject = undefined;
    this.#target = Infinity;
    resolve?.();
  }

  /** Resolves once `total` bytes arrived in all; rejects on close, error or after `timeoutMs`. */
  until(total: number, timeoutMs: number): Promise<void> {
    if (this.received >= total) return Promise.resolve();
    if (this.#failed) return Promise.reject(this.#failed);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#resolve = undefined;
        this.#reject = undefined;
        this.#target = Infinity;
        reject(new Error(`timed out after ${timeoutMs} ms with ${this.received}/${total} bytes`));
      }, timeoutMs);
      this.#target = total;
      this.#resolve = () => {
        clearTimeout(timer);
        resolve();
      };
      this.#reject = (err) => {
        clearTimeout(timer);
        reject(err);
      };
    });
  }
}

export type Proto = 'connect' | 'grpc';

/** Where one path's client connects, and what it presents. */
export interface Endpoint {
  proto: Proto;
  port: number;
  sandboxId: string;
  token: string;
}

export interface Channel {
  out: Writable;
  counter: ByteCounter;
  /** Ends the channel; resolves once it is gone on our side (bounded). */
  close(): Promise<void>;
}

const HEAD_TIMEOUT_MS = 10_000;
const CLOSE_WAIT_MS = 5_000;

export function connectHead(ep: Endpoint, mode: string): string {
  return (
    'CONNECT /connect/ssh HTTP/1.1\r\nhost: gateway\r\n' +
    `x-sandbox-id: ${ep.sandboxId}\r\nx-sandbox-token: ${ep.token}\r\nx-bench-mode: ${mode}\r\n\r\n`
  );
}

/** A CONNECT tunnel, open once the proxy (or gateway) answered 200. */
export function openTunnel(ep: Endpoint, mode: string): Promise<Channel> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port: ep.port, noDelay: true });
    let head: Buffer = Buffer.alloc(0);
    const timer = setTimeout(() => fail(new Error('no CONNECT answer in time')), HEAD_TIMEOUT_MS);
    const fail = (err: Error): void => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    };
    const onData = (chunk: Buffer): void => {
      head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', fail);
      socket.off('close', onEarlyClose);
      const status = head.subarray(0, 12).toString('latin1');
      if (!status.startsWith('HTTP/1.1 200')) return fail(new Error(`CONNECT refused: ${head.subarray(0, end).toString('latin1').split('\r\n')[0]}`));
      socket.pause();
      const rest = head.subarray(end + 4);
      if (rest.length > 0) socket.unshift(rest);
      socket.on('error', () => undefined);
      const counter = new ByteCounter(socket);
      socket.resume();
      resolve({
        out: socket,
        counter,
        close: async () => {
          socket.destroy();
        },
      });
    };
    const onEarlyClose = (): void => fail(new Error('closed before the CONNECT answer'));
    socket.on('data', onData);
    socket.on('error', fail);
    socket.on('close', onEarlyClose);
    socket.write(connectHead(ep, mode));
  });
}

/** One h2c client connection per path for gRPC streams, with the same window the sidecar uses (Node's http2 sets TCP_NODELAY itself). */
export function connectH2(port: number, windowBytes = 1024 * 1024): Promise<http2.ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://127.0.0.1:${port}`, { settings: { initialWindowSize: windowBytes, enablePush: false } });
    const timer = setTimeout(() => {
      session.destroy();
      reject(new Error(`h2 connect to ${port} timed out`));
    }, HEAD_TIMEOUT_MS);
    session.once('connect', () => {
      clearTimeout(timer);
      session.off('error', reject);
      session.on('error', () => undefined);
      try {
        session.setLocalWindowSize(windowBytes);
      } catch {
        // already large enough
      }
      resolve(session);
    });
    session.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** A ForwardTcp stream on `session`: init message first, then bytes; no wait for the answer headers. */
export function openForward(session: http2.ClientHttp2Session, ep: Endpoint, mode: string, first?: Buffer): Channel {
  const stream = session.request(
    { ':method': 'POST', ':path': FORWARD_TCP, 'content-type': 'application/grpc', te: 'trailers', 'x-bench-mode': mode },
    { endStream: false },
  );
  stream.on('error', () => undefined);
  const counter = new ByteCounter(stream);
  const init = forwardInitFrame(ep.sandboxId, ep.token);
  stream.write(first ? Buffer.concat([init, first]) : init);
  return {
    out: stream,
    counter,
    close: () =>
      new Promise<void>((resolve) => {
        if (stream.closed || stream.destroyed) return resolve();
        const timer = setTimeout(() => {
          stream.close(http2.constants.NGHTTP2_CANCEL);
          resolve();
        }, CLOSE_WAIT_MS);
        stream.once('close', () => {
          clearTimeout(timer);
          resolve();
        });
        stream.end();
      }),
  };
}

/** Writes `total` bytes of `chunk` repeated, waiting for drain when the writable asks; bounded by `deadline`. */
export async function writeAll(out: Writable, chunk: Buffer, total: number, deadline: number): Promise<void> {
  for (let left = total; left > 0; left -= chunk.length) {
    if (Date.now() > deadline) throw new Error('bulk write past its deadline');
    if (out.destroyed) throw new Error('channel closed during bulk write');
    if (!out.write(left >= chunk.length ? chunk : chunk.subarray(0, left))) {
      await new Promise<void>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('no drain in time')), Math.max(1, deadline - Date.now()));
        out.once('drain', () => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }
}
