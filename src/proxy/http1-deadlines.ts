// Deadlines for HTTP/1.1 connections the public listener hands to Node's HTTP server with
// emit('connection'). Node enforces headersTimeout and requestTimeout only for a server that
// listens itself, so here they are kept per socket: a request head must be complete within
// `headersTimeoutMs` of the connection (or of the previous response on a keep-alive connection),
// and a request body within `requestTimeoutMs` of its head. A client that trickles bytes is cut
// with 408 instead of holding its connection forever.
import type http from 'node:http';
import type net from 'node:net';

export interface Http1DeadlineOptions {
  headersTimeoutMs: number;
  /** 0 = no bound on the body. */
  requestTimeoutMs: number;
  onTimeout?: (kind: 'headers' | 'request') => void;
}

const TIMEOUT_RESPONSE = 'HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 16\r\n\r\nrequest timeout\n';

export interface Http1Deadlines {
  /** Starts the head deadline for a socket about to be handed to the server. */
  accept(socket: net.Socket): void;
}

export function guardHttp1(server: http.Server, opts: Http1DeadlineOptions): Http1Deadlines {
  const heads = new WeakMap<net.Socket, NodeJS.Timeout>();

  const clearHead = (socket: net.Socket): void => {
    const t = heads.get(socket);
    if (t) {
      clearTimeout(t);
      heads.delete(socket);
    }
  };
  const armHead = (socket: net.Socket): void => {
    clearHead(socket);
    if (socket.destroyed) return;
    const t = setTimeout(() => {
      heads.delete(socket);
      if (socket.destroyed) return;
      opts.onTimeout?.('headers');
      // Nothing of a response has been written on this connection since the last one ended.
      socket.end(TIMEOUT_RESPONSE);
      socket.destroySoon();
      setTimeout(() => socket.destroy(), 1000).unref();
    }, opts.headersTimeoutMs);
    t.unref();
    heads.set(socket, t);
  };

  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const socket = req.socket;
    clearHead(socket);
    let body: NodeJS.Timeout | undefined;
    if (opts.requestTimeoutMs > 0 && !req.complete) {
      body = setTimeout(() => {
        opts.onTimeout?.('request');
        if (!res.headersSent) res.writeHead(408, { connection: 'close', 'content-type': 'text/plain; charset=utf-8' }).end('request timeout\n');
        socket.destroySoon();
        setTimeout(() => socket.destroy(), 1000).unref();
      }, opts.requestTimeoutMs);
      body.unref();
      req.once('end', () => clearTimeout(body));
      req.once('close', () => clearTimeout(body));
    }
    // Keep-alive: the next request's head is due within the same bound.
    res.once('finish', () => {
      if (!socket.destroyed && !res.getHeader('connection')?.toString().toLowerCase().includes('close')) armHead(socket);
    });
  });
  // A CONNECT or upgrade takes the socket over: the tunnel has its own rules from here.
  server.on('connect', (_req: http.IncomingMessage, socket: net.Socket) => clearHead(socket));
  server.on('upgrade', (_req: http.IncomingMessage, socket: net.Socket) => clearHead(socket));

  return {
    accept(socket) {
      armHead(socket);
      socket.once('close', () => clearHead(socket));
    },
  };
}
