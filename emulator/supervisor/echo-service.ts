// A sandbox's HTTP service for 2026-08 service-subdomain tests: plain HTTP answers describe the
// request (sandbox id, method, path, host, body) and a WebSocket upgrade echoes every message back.
// The WebSocket part is a minimal RFC 6455 codec (no extensions, no fragmentation on send), enough
// for an echo and for the test client in test/helpers; the project carries no `ws` package.
import { createHash } from 'node:crypto';
import http from 'node:http';
import type net from 'node:net';
import type { Duplex } from 'node:stream';

const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

export function wsAcceptKey(key: string): string {
  return createHash('sha1').update(key + WS_GUID).digest('base64');
}

export interface WsFrame {
  fin: boolean;
  opcode: number;
  payload: Buffer;
}

/** Encodes one frame; clients must mask (RFC 6455 §5.3), servers must not. */
export function encodeWsFrame(opcode: number, payload: Buffer, mask: boolean): Buffer {
  const len = payload.length;
  const head: number[] = [0x80 | opcode];
  const maskBit = mask ? 0x80 : 0;
  if (len < 126) head.push(maskBit | len);
  else if (len < 65536) head.push(maskBit | 126, len >> 8, len & 0xff);
  else {
    head.push(maskBit | 127, 0, 0, 0, 0);
    head.push((len >>> 24) & 0xff, (len >>> 16) & 0xff, (len >>> 8) & 0xff, len & 0xff);
  }
  if (!mask) return Buffer.concat([Buffer.from(head), payload]);
  const key = Buffer.from([0x12, 0x34, 0x56, 0x78].map((b) => b ^ (len & 0xff)));
  const body = Buffer.alloc(len);
  for (let i = 0; i < len; i++) body[i] = (payload[i] ?? 0) ^ (key[i % 4] ?? 0);
  return Buffer.concat([Buffer.from(head), key, body]);
}

/** Incremental frame parser: feed bytes, get whole frames. */
export class WsFrameParser {
  private buf = Buffer.alloc(0);

  push(chunk: Buffer): WsFrame[] {
    this.buf = Buffer.concat([this.buf, chunk]);
    const frames: WsFrame[] = [];
    for (;;) {
      if (this.buf.length < 2) break;
      const b0 = this.buf[0] ?? 0;
      const b1 = this.buf[1] ?? 0;
      let len = b1 & 0x7f;
      let off = 2;
      if (len === 126) {
        if (this.buf.length < 4) break;
        len = this.buf.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (this.buf.length < 10) break;
        len = Number(this.buf.readBigUInt64BE(2));
        off = 10;
      }
      const masked = (b1 & 0x80) !== 0;
      const total = off + (masked ? 4 : 0) + len;
      if (this.buf.length < total) break;
      let payload = this.buf.subarray(off + (masked ? 4 : 0), total);
      if (masked) {
        const key = this.buf.subarray(off, off + 4);
        payload = Buffer.from(payload.map((b, i) => b ^ (key[i % 4] ?? 0)));
      } else {
        payload = Buffer.from(payload);
      }
      frames.push({ fin: (b0 & 0x80) !== 0, opcode: b0 & 0x0f, payload });
      this.buf = this.buf.subarray(total);
    }
    return frames;
  }
}

export interface EchoService {
  port: number;
  close(): Promise<void>;
}

/** Starts the echo service on 127.0.0.1 (port 0 = any). */
export async function startEchoService(opts: { sandboxId: string; port?: number }): Promise<EchoService> {
  const sockets = new Set<Duplex>();
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json' }).end(
        JSON.stringify({
          sandboxId: opts.sandboxId,
          method: req.method,
          path: req.url,
          host: req.headers.host ?? '',
          authorization: req.headers.authorization ?? null,
          body: Buffer.concat(chunks).toString('utf8'),
        }),
      );
    });
  });
  server.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  server.on('upgrade', (req, socket, head) => {
    socket.on('error', () => undefined);
    const key = req.headers['sec-websocket-key'];
    if (typeof key !== 'string' || String(req.headers.upgrade).toLowerCase() !== 'websocket') {
      socket.end('HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
      return;
    }
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${wsAcceptKey(key)}\r\n\r\n`,
    );
    const parser = new WsFrameParser();
    const onBytes = (chunk: Buffer): void => {
      for (const f of parser.push(chunk)) {
        if (f.opcode === 0x8) {
          socket.end(encodeWsFrame(0x8, f.payload, false));
          return;
        }
        if (f.opcode === 0x9) socket.write(encodeWsFrame(0xa, f.payload, false));
        else if (f.opcode === 0x1 || f.opcode === 0x2) socket.write(encodeWsFrame(f.opcode, f.payload, false));
      }
    };
    if (head.length > 0) onBytes(head);
    socket.on('data', onBytes);
  });
  const port = await new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
