// Helpers for tests of the 2026-08 emulators: calls with metadata, streams collected, a WebSocket
// client over a raw socket, and HTTP with an explicit Host header.
import http from 'node:http';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { encodeWsFrame, wsAcceptKey, WsFrameParser } from '../../emulator/supervisor/echo-service.ts';
import type { OpenShellClient } from './grpc-client.ts';

export function bearer(token: string): grpc.Metadata {
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${token}`);
  return md;
}

export function unaryMd<T>(client: OpenShellClient, method: string, req: unknown, md = new grpc.Metadata(), deadlineMs = 20_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const fn = client[method] as (r: unknown, md: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, v: T) => void) => void;
    fn.call(client, req, md, { deadline: Date.now() + deadlineMs }, (err, value) => (err ? reject(err) : resolve(value)));
  });
}

/** Rejection of `p` as `{code, details}`, or null if it resolved. */
export async function failure(p: Promise<unknown>): Promise<{ code: number; details: string } | null> {
  try {
    await p;
    return null;
  } catch (err) {
    const e = err as grpc.ServiceError;
    return { code: e.code, details: e.details };
  }
}

/** Opens a bidi call, writes `first`, resolves with its final status (and any messages seen). */
export function bidiStatus<T>(
  client: OpenShellClient,
  method: string,
  messages: unknown[],
  opts: { md?: grpc.Metadata; endAfterWrite?: boolean; timeoutMs?: number } = {},
): Promise<{ status: grpc.StatusObject; messages: T[] }> {
  return new Promise((resolve) => {
    const call = (client[method] as (md: grpc.Metadata, o: grpc.CallOptions) => grpc.ClientDuplexStream<unknown, T>).call(
      client,
      opts.md ?? new grpc.Metadata(),
      { deadline: Date.now() + (opts.timeoutMs ?? 30_000) },
    );
    const seen: T[] = [];
    call.on('data', (m: T) => seen.push(m));
    call.on('error', () => undefined);
    call.on('status', (status) => resolve({ status, messages: seen }));
    for (const m of messages) call.write(m);
    if (opts.endAfterWrite) call.end();
  });
}

/** Collects a server stream until it ends, errors, or `untilMs` passes (then cancels). */
export function collectStream<T>(
  client: OpenShellClient,
  method: string,
  req: unknown,
  opts: { md?: grpc.Metadata; untilMs?: number; stopWhen?: (seen: T[]) => boolean } = {},
): Promise<{ messages: T[]; status: grpc.StatusObject | null; cancelled: boolean }> {
  return new Promise((resolve) => {
    const call = (client[method] as (r: unknown, md: grpc.Metadata) => grpc.ClientReadableStream<T>).call(client, req, opts.md ?? new grpc.Metadata());
    const seen: T[] = [];
    let cancelled = false;
    const timer = setTimeout(() => {
      cancelled = true;
      call.cancel();
    }, opts.untilMs ?? 5000);
    call.on('data', (m: T) => {
      seen.push(m);
      if (opts.stopWhen?.(seen)) {
        cancelled = true;
        call.cancel();
      }
    });
    call.on('error', () => undefined);
    call.on('status', (status) => {
      clearTimeout(timer);
      resolve({ messages: seen, status: cancelled ? null : status, cancelled });
    });
  });
}

export function httpGet(port: number, host: string, path = '/', headers: Record<string, string> = {}): Promise<{ status: number; body: string; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method: 'GET', headers: { host, ...headers }, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), headers: res.headers }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(40_000, () => req.destroy(new Error('http timeout')));
    req.end();
  });
}

/** A WebSocket handshake by Host, then each message sent and its echo read back. */
export function wsEcho(port: number, host: string, messages: string[], path = '/ws'): Promise<{ status: number; replies: string[] }> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    const key = randomBytes(16).toString('base64');
    let buf = Buffer.alloc(0);
    let upgraded = false;
    const parser = new WsFrameParser();
    const replies: string[] = [];
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`websocket echo timed out (${replies.length} replies)`));
    }, 40_000);
    const done = (status: number): void => {
      clearTimeout(timer);
      sock.end(encodeWsFrame(0x8, Buffer.alloc(0), true));
      sock.destroy();
      resolve({ status, replies });
    };
    sock.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    sock.on('connect', () =>
      sock.write(`GET ${path} HTTP/1.1\r\nHost: ${host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`),
    );
    sock.on('data', (chunk: Buffer) => {
      if (!upgraded) {
        buf = Buffer.concat([buf, chunk]);
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.subarray(0, end).toString('latin1');
        const status = Number(head.split(' ')[1]);
        if (status !== 101 || !head.includes(wsAcceptKey(key))) {
          clearTimeout(timer);
          sock.destroy();
          resolve({ status, replies });
          return;
        }
        upgraded = true;
        const rest = buf.subarray(end + 4);
        for (const m of messages) sock.write(encodeWsFrame(0x1, Buffer.from(m), true));
        chunk = rest;
      }
      for (const f of parser.push(chunk)) {
        if (f.opcode === 0x1) replies.push(f.payload.toString('utf8'));
        if (replies.length === messages.length) return done(101);
      }
    });
  });
}
