// How this sidecar reaches its own gateway: plaintext (`http://`, the gateway started with
// disable_tls) or TLS (`https://`). A 2026-08 gateway with TLS on treats a plaintext HTTP/2 preface as
// plain HTTP and gives it only the service router (reference §1.2, §8), so in front of a TLS gateway
// every hop must speak TLS: HTTP/2 sessions (gRPC), raw tunnels (CONNECT, upgrades) and HTTP/1.1.
// Certificates are read once at start, so a missing file fails at start, not on the first request.
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import type { GatewayTlsConfig } from '../config/schema.ts';

export interface GatewayTransport {
  /** `http://host:port` or `https://host:port`. */
  origin: string;
  host: string;
  port: number;
  /** TLS settings for every connection to the gateway, undefined for plaintext. */
  tls: tls.ConnectionOptions | undefined;
  /** A raw byte stream to the gateway (TCP, or TLS with ALPN http/1.1 for tunnels and HTTP/1.1). */
  connect(onConnect?: () => void): net.Socket;
}

/**
 * What Node's Socket constructor sets on its copy of the options anyway (net.js: `{ ...options }`,
 * then these four). Present already, they are assignments to keys the copy has; absent, V8 (Node 20)
 * makes a new map for each key added to a spread's copy, on every tunnel to the gateway.
 */
export const SOCKET_DEFAULTS = Object.freeze({ allowHalfOpen: false, emitClose: false, autoDestroy: true, decodeStrings: false });

export function createGatewayTransport(gatewayUrl: string, gatewayTls: GatewayTlsConfig | undefined): GatewayTransport {
  const url = new URL(gatewayUrl);
  const secure = url.protocol === 'https:';
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const port = Number(url.port || (secure ? 443 : 80));
  const origin = `${secure ? 'https' : 'http'}://${url.host}`;
  const options: tls.ConnectionOptions | undefined = secure
    ? {
        ...(gatewayTls?.caFile ? { ca: readFileSync(gatewayTls.caFile) } : {}),
        ...(gatewayTls?.certFile ? { cert: readFileSync(gatewayTls.certFile) } : {}),
        ...(gatewayTls?.keyFile ? { key: readFileSync(gatewayTls.keyFile) } : {}),
        // Always set: left unset, Node's HTTPS agent would take the server name from the request's
        // Host (a sandbox service subdomain). '' means no SNI; the certificate is then checked
        // against the IP address.
        servername: gatewayTls?.serverName ?? (net.isIP(host) ? '' : host),
      }
    : undefined;
  return {
    origin,
    host,
    port,
    tls: options,
    connect(onConnect) {
      if (!options) return net.connect({ host, port, ...SOCKET_DEFAULTS }, onConnect);
      const socket = tls.connect({ ...options, host, port, ALPNProtocols: ['http/1.1'] });
      if (onConnect) socket.once('secureConnect', onConnect);
      return socket;
    },
  };
}
