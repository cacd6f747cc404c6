// Plain HTTP/1.1 on the main port of the 2026-08 gateway: the sandbox service routing middleware
// runs first (reference §1.1 HEAD, §2.7), then `/.well-known/jwks.json` (auth/http.rs@v0.0.111:62).
// There is no `/connect/ssh` any more (reference §8: removed in upstream #1029).
import http, { type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { Phase } from '../../proto.ts';
import { writeStatus } from '../ssh-tunnel.ts';
import type { Gen2Context } from './context.ts';
import { RELAY_CLAIM_WAIT_MS, RELAY_SESSION_WAIT_MS } from './relay-calls.ts';
import { withTimeout } from './rpc.ts';
import { endpointKey } from './store.ts';

/** parse_host (service_routing.rs@v0.0.111:94-123): `<ws>--<sandbox>[--<service>].<base>`, port stripped. */
export function parseServiceHost(rawHost: string, baseDomains: string[]): { workspace: string; sandbox: string; service: string } | null {
  const host = rawHost.split(':')[0] ?? '';
  for (const base of baseDomains) {
    const suffix = `.${base}`;
    if (!host.endsWith(suffix)) continue;
    const encoded = host.slice(0, -suffix.length);
    const i = encoded.indexOf('--');
    if (i < 0) return null;
    const workspace = encoded.slice(0, i);
    const rest = encoded.slice(i + 2);
    if (!workspace) return null;
    let sandbox = rest;
    let service = '';
    const j = rest.indexOf('--');
    if (j >= 0) {
      sandbox = rest.slice(0, j);
      service = rest.slice(j + 2);
      if (!service || service.includes('--')) return null;
    }
    if (!sandbox) return null;
    return { workspace, sandbox, service };
  }
  return null;
}

class RouteError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

// ServiceRouteError values (service_routing.rs@v0.0.111:156-212).
const endpointNotFound = (): RouteError => new RouteError(404, 'Service endpoint not found');
const endpointUnavailable = (): RouteError => new RouteError(404, 'Service endpoint is not available');
const sandboxNotReady = (): RouteError => new RouteError(412, 'Sandbox is not ready');
const unreachable = (): RouteError => new RouteError(502, 'Service endpoint is not reachable');

const HOP_BY_HOP = new Set(['connection', 'host', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade']);
const GATEWAY_AUTH = new Set(['authorization', 'cf-access-jwt-assertion', 'x-forwarded-client-cert', 'x-ssl-client-cert', 'x-client-cert']);

/** build_upstream_request: hop-by-hop and gateway-auth headers dropped, Host = 127.0.0.1:<port>. */
function upstreamHeaders(headers: IncomingHttpHeaders, targetPort: number, websocket: boolean): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    const keepForWs = websocket && (name === 'connection' || name === 'upgrade');
    if ((HOP_BY_HOP.has(name) && !keepForWs) || GATEWAY_AUTH.has(name)) continue;
    out[name] = value;
  }
  out.host = `127.0.0.1:${targetPort}`;
  return out;
}

function isWebSocketUpgrade(req: IncomingMessage): boolean {
  const upgrade = String(req.headers.upgrade ?? '').toLowerCase();
  const connection = String(req.headers.connection ?? '')
    .split(',')
    .map((t) => t.trim().toLowerCase());
  return req.method === 'GET' && upgrade === 'websocket' && connection.includes('upgrade');
}

/** Endpoint → sandbox → Ready → relay to tcp 127.0.0.1:target_port (proxy_to_endpoint, service_routing.rs@v0.0.111:228-430). */
async function openServiceRelay(ctx: Gen2Context, target: { workspace: string; sandbox: string; service: string }): Promise<{ relay: Duplex; port: number }> {
  const endpoint = await ctx.store.serviceEndpoint(target.workspace, endpointKey(target.sandbox, target.service));
  if (!endpoint) throw endpointNotFound();
  if (!endpoint.domain || endpoint.targetPort === 0 || endpoint.targetPort > 65535) throw endpointUnavailable();
  const sandbox = await ctx.store.sandboxById(endpoint.sandboxId);
  if (!sandbox) throw endpointUnavailable();
  if (sandbox.phase !== Phase.READY) throw sandboxNotReady();
  let stream: Promise<Duplex>;
  try {
    ({ stream } = await ctx.registry.openRelay(sandbox.id, RELAY_SESSION_WAIT_MS, {
      target: { kind: 'tcp', host: '127.0.0.1', port: endpoint.targetPort },
      serviceId: endpoint.id,
    }));
  } catch {
    throw unreachable();
  }
  try {
    const relay = await withTimeout(stream, RELAY_CLAIM_WAIT_MS, () => unreachable());
    return { relay, port: endpoint.targetPort };
  } catch {
    throw unreachable();
  }
}

function sendError(res: ServerResponse, err: unknown): void {
  const status = err instanceof RouteError ? err.status : 500;
  const message = err instanceof RouteError ? err.message : 'Service endpoint is not available';
  if (res.headersSent) {
    res.destroy();
    return;
  }
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' }).end(message);
}

function proxyService(ctx: Gen2Context, req: IncomingMessage, res: ServerResponse, target: { workspace: string; sandbox: string; service: string }): void {
  openServiceRelay(ctx, target).then(
    ({ relay, port }) => {
      relay.on('error', () => undefined);
      const upstream = http.request({
        method: req.method,
        path: req.url ?? '/',
        headers: upstreamHeaders(req.headers, port, false),
        createConnection: () => relay as unknown as Socket,
      });
      const cleanup = (): void => {
        upstream.destroy();
        relay.destroy();
      };
      upstream.on('error', (err) => {
        ctx.logger.debug({ err }, 'service upstream failed');
        sendError(res, unreachable());
        cleanup();
      });
      upstream.on('response', (upRes) => {
        const headers: Record<string, string | string[]> = {};
        for (const [k, v] of Object.entries(upRes.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) headers[k] = v;
        res.writeHead(upRes.statusCode ?? 502, headers);
        upRes.pipe(res);
        upRes.on('error', cleanup);
        res.on('close', cleanup);
      });
      res.on('close', () => {
        if (!res.writableFinished) cleanup();
      });
      req.pipe(upstream);
    },
    (err: unknown) => sendError(res, err),
  );
}

/** WebSocket upgrades to a service host are passed through to the service over the relay. */
function proxyServiceUpgrade(
  ctx: Gen2Context,
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  target: { workspace: string; sandbox: string; service: string },
): void {
  socket.on('error', () => undefined);
  openServiceRelay(ctx, target).then(
    ({ relay, port }) => {
      relay.on('error', () => undefined);
      let done = false;
      const cleanup = (): void => {
        if (done) return;
        done = true;
        socket.destroy();
        relay.destroy();
      };
      socket.once('close', cleanup);
      const upstream = http.request({
        method: 'GET',
        path: req.url ?? '/',
        headers: upstreamHeaders(req.headers, port, true),
        createConnection: () => relay as unknown as Socket,
      });
      upstream.on('error', () => {
        if (!socket.destroyed) writeStatus(socket, 502, 'Service endpoint is not reachable');
      });
      upstream.on('response', (upRes) => {
        // Not upgraded: relay the plain answer.
        const lines = [`HTTP/1.1 ${upRes.statusCode ?? 502} ${upRes.statusMessage ?? ''}`];
        for (let i = 0; i < upRes.rawHeaders.length; i += 2) lines.push(`${upRes.rawHeaders[i]}: ${upRes.rawHeaders[i + 1]}`);
        socket.write(`${lines.join('\r\n')}\r\n\r\n`);
        upRes.pipe(socket);
      });
      upstream.on('upgrade', (upRes, upSocket, upHead) => {
        const lines = [`HTTP/1.1 101 ${upRes.statusMessage ?? 'Switching Protocols'}`];
        for (let i = 0; i < upRes.rawHeaders.length; i += 2) lines.push(`${upRes.rawHeaders[i]}: ${upRes.rawHeaders[i + 1]}`);
        socket.write(`${lines.join('\r\n')}\r\n\r\n`);
        if (upHead.length > 0) socket.write(upHead);
        if (head.length > 0) upSocket.write(head);
        upSocket.on('error', cleanup);
        upSocket.on('close', cleanup);
        socket.pipe(upSocket);
        upSocket.pipe(socket);
      });
      upstream.end();
    },
    (err: unknown) => {
      const status = err instanceof RouteError ? err.status : 500;
      writeStatus(socket, status, err instanceof RouteError ? err.message : 'Service endpoint is not available');
    },
  );
}

export function gen2HttpHandler(ctx: Gen2Context) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    const target = parseServiceHost(String(req.headers.host ?? ''), ctx.serviceBaseDomains);
    if (target) return proxyService(ctx, req, res, target);
    const path = (req.url ?? '').split('?')[0];
    if (path === '/.well-known/jwks.json' && (req.method === 'GET' || req.method === 'HEAD')) {
      ctx.jwt.jwks().then(
        (doc) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(doc)),
        () => res.writeHead(500).end(),
      );
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
  };
}

export function gen2UpgradeHandler(ctx: Gen2Context) {
  return (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    const target = parseServiceHost(String(req.headers.host ?? ''), ctx.serviceBaseDomains);
    if (target && isWebSocketUpgrade(req)) return proxyServiceUpgrade(ctx, req, socket, head, target);
    socket.on('error', () => undefined);
    writeStatus(socket, 404, 'not found');
  };
}
