// The client side of seed SSH (reference §2.3): an HTTP/1.1 `CONNECT /connect/ssh` tunnel carrying the
// sandbox id and token headers, then an SSH session to the sandbox through it.
import http from 'node:http';
import type { IncomingHttpHeaders } from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import ssh2 from 'ssh2';
import { SANDBOX_SSH_PASSWORD, SANDBOX_SSH_USER } from './supervisor/ssh-server.ts';

/** Longer than the gateway's 30 s session wait, so a misrouted attempt reports its 502 (reference §6). */
const DEFAULT_TUNNEL_TIMEOUT_MS = 45_000;
const DEFAULT_SSH_TIMEOUT_MS = 30_000;
/** After `client.end()`, how long the tunnel gets to close before it is destroyed. */
const SOCKET_CLOSE_GRACE_MS = 1000;

export interface ConnectTunnelOptions {
  host: string;
  port: number;
  sandboxId?: string;
  token?: string;
  extraHeaders?: Record<string, string>;
  /** Request method; anything but CONNECT is for checking the gateway's 405. */
  method?: string;
  timeoutMs?: number;
}

export interface ConnectTunnelResult {
  status: number;
  headers: Record<string, string>;
  body: string;
  /** The tunnel, on 200 only; the caller owns it. */
  socket: net.Socket | null;
}

export interface SshCommandResult {
  stdout: string;
  stderr: string;
  code: number | null;
}

export interface SshViaGatewayResult extends SshCommandResult {
  status: number;
  /** The gateway's response body when the tunnel was refused. */
  body: string;
}

function flattenHeaders(headers: IncomingHttpHeaders): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined) out[name] = Array.isArray(value) ? value.join(', ') : value;
  }
  return out;
}

/** Decodes a complete chunked body, or returns null while the terminating chunk has not arrived. */
function decodeChunked(raw: Buffer): Buffer | null {
  const parts: Buffer[] = [];
  let at = 0;
  for (;;) {
    const eol = raw.indexOf('\r\n', at);
    if (eol < 0) return null;
    const size = parseInt(raw.subarray(at, eol).toString('latin1').split(';')[0] ?? '', 16);
    if (!Number.isFinite(size)) return Buffer.concat(parts);
    if (size === 0) return Buffer.concat(parts);
    if (raw.length < eol + 2 + size + 2) return null;
    parts.push(raw.subarray(eol + 2, eol + 2 + size));
    at = eol + 2 + size + 2;
  }
}

/**
 * Node parses any answer to a CONNECT as a tunnel, so a refusal's body arrives as raw socket bytes
 * (starting with the parser's `head`): read it by content-length, chunked framing, or until close.
 */
function readRefusalBody(socket: net.Socket, head: Buffer, headers: IncomingHttpHeaders): Promise<string> {
  const length = headers['content-length'] === undefined ? null : Number(headers['content-length']);
  const chunked = /chunked/i.test(headers['transfer-encoding'] ?? '');
  return new Promise((resolve) => {
    let raw = head;
    const complete = (): Buffer | null => {
      if (length !== null) return raw.length >= length ? raw.subarray(0, length) : null;
      if (chunked) return decodeChunked(raw);
      return null;
    };
    const finish = (body: Buffer): void => {
      socket.off('data', onData).off('end', onEnd).off('close', onEnd);
      resolve(body.toString('utf8'));
    };
    const onData = (chunk: Buffer): void => {
      raw = Buffer.concat([raw, chunk]);
      const body = complete();
      if (body) finish(body);
    };
    const onEnd = (): void => finish(complete() ?? raw);
    const body = complete();
    if (body) return finish(body);
    socket.on('data', onData).on('end', onEnd).on('close', onEnd);
  });
}

/** Opens `CONNECT /connect/ssh` like the seed CLI; on 200 hands back the tunnel socket. */
export function openConnectTunnel(opts: ConnectTunnelOptions): Promise<ConnectTunnelResult> {
  const headers: Record<string, string> = { ...opts.extraHeaders };
  if (opts.sandboxId !== undefined) headers['x-sandbox-id'] = opts.sandboxId;
  if (opts.token !== undefined) headers['x-sandbox-token'] = opts.token;
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TUNNEL_TIMEOUT_MS;

  return new Promise((resolve, reject) => {
    const req = http.request({
      method: opts.method ?? 'CONNECT',
      host: opts.host,
      port: opts.port,
      path: '/connect/ssh',
      headers,
      agent: false,
    });
    let settled = false;
    const settle = (fn: () => void): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      fn();
    };
    const timer = setTimeout(() => {
      settle(() => reject(new Error(`CONNECT to ${opts.host}:${opts.port} got no answer within ${timeoutMs} ms`)));
      req.destroy();
    }, timeoutMs);
    timer.unref();

    req.on('error', (err) => settle(() => reject(err)));
    req.on('connect', (res, socket, head) => {
      // Node drops its own listeners from a tunnel socket; one bad peer must not crash the tests.
      socket.on('error', () => undefined);
      const status = res.statusCode ?? 0;
      const resHeaders = flattenHeaders(res.headers);
      if (status === 200) {
        if (settled) return void socket.destroy();
        if (head.length > 0) socket.unshift(head);
        settle(() => resolve({ status, headers: resHeaders, body: '', socket }));
        return;
      }
      void readRefusalBody(socket, head, res.headers).then((body) => {
        socket.destroy();
        settle(() => resolve({ status, headers: resHeaders, body, socket: null }));
      });
    });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('error', (err) => settle(() => reject(err)));
      res.on('end', () => {
        req.destroy();
        settle(() =>
          resolve({
            status: res.statusCode ?? 0,
            headers: flattenHeaders(res.headers),
            body: Buffer.concat(chunks).toString('utf8'),
            socket: null,
          }),
        );
      });
    });
    req.end();
  });
}

/** Runs one command over SSH on `sock` (password auth as the sandbox user); stdin, if any, then EOF. */
export function runSshCommand(
  sock: Duplex,
  command: string,
  opts: { stdin?: string | Buffer; timeoutMs?: number } = {},
): Promise<SshCommandResult> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_SSH_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const client = new ssh2.Client();
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    let code: number | null = null;
    let settled = false;

    const finish = (err?: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      client.end();
      if (!sock.destroyed) {
        const force = setTimeout(() => sock.destroy(), SOCKET_CLOSE_GRACE_MS);
        force.unref();
        sock.once('close', () => clearTimeout(force));
      }
      if (err) reject(err);
      else resolve({ stdout: Buffer.concat(stdout).toString('utf8'), stderr: Buffer.concat(stderr).toString('utf8'), code });
    };
    const timer = setTimeout(() => finish(new Error(`ssh '${command}' timed out after ${timeoutMs} ms`)), timeoutMs);
    timer.unref();

    sock.on('error', () => undefined);
    // The client's side of the same Nagle stalls as the sandbox's SSH server (ssh-server.ts).
    if (sock instanceof net.Socket) sock.setNoDelay(true);
    client.on('error', (err) => finish(err));
    client.on('close', () => finish(new Error(`ssh connection closed before '${command}' finished`)));
    client.on('ready', () => {
      client.exec(command, (err, channel) => {
        if (err) return finish(err);
        channel.on('data', (chunk: Buffer) => stdout.push(chunk));
        channel.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
        channel.on('error', (e: Error) => finish(e));
        channel.on('exit', (exitCode: number | null) => {
          code = typeof exitCode === 'number' ? exitCode : null;
        });
        channel.on('close', () => finish());
        if (opts.stdin !== undefined) channel.end(opts.stdin);
        else channel.end();
      });
    });
    client.connect({ sock, username: SANDBOX_SSH_USER, password: SANDBOX_SSH_PASSWORD, readyTimeout: timeoutMs });
  });
}

/** CONNECT through the gateway, then SSH; a refused tunnel comes back as its status and body. */
export async function sshViaGateway(opts: {
  host: string;
  port: number;
  sandboxId: string;
  token: string;
  command: string;
  stdin?: string | Buffer;
  timeoutMs?: number;
}): Promise<SshViaGatewayResult> {
  const tunnel = await openConnectTunnel({ host: opts.host, port: opts.port, sandboxId: opts.sandboxId, token: opts.token, timeoutMs: opts.timeoutMs });
  if (tunnel.status !== 200 || !tunnel.socket) {
    return { status: tunnel.status, body: tunnel.body, stdout: '', stderr: '', code: null };
  }
  const result = await runSshCommand(tunnel.socket, opts.command, { stdin: opts.stdin, timeoutMs: opts.timeoutMs });
  return { status: tunnel.status, body: '', ...result };
}
