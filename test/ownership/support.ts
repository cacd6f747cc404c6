// Shared bits for the ownership tests: a log-capturing logger, polling, and waiting for changes.
import { once } from 'node:events';
import net from 'node:net';
import pino from 'pino';
import type { Logger } from 'pino';
import type { OwnershipStore } from '../../src/ownership/types.ts';

export interface CapturedLogger {
  logger: Logger;
  lines: Array<Record<string, unknown>>;
  messages(level?: string): string[];
}

const LEVELS: Record<string, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60 };

export function captureLogger(): CapturedLogger {
  const lines: Array<Record<string, unknown>> = [];
  const logger = pino(
    { level: 'debug' },
    {
      write(msg: string) {
        lines.push(JSON.parse(msg) as Record<string, unknown>);
      },
    },
  );
  return {
    logger,
    lines,
    messages(level) {
      return lines.filter((l) => level === undefined || l.level === LEVELS[level]).map((l) => String(l.msg));
    },
  };
}

/** Polls `check` until it returns a value other than undefined/false, or fails after `timeoutMs`. */
export async function waitFor<T>(what: string, check: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 5000, everyMs = 20): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last === undefined ? '' : `: ${String(last)}`}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Resolves when `store` reports a change for `sandboxId`; rejects after `timeoutMs`. */
export function nextChange(store: OwnershipStore, sandboxId: string, timeoutMs = 1500): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no change for ${sandboxId} on ${store.replicaId} within ${timeoutMs} ms`));
    }, timeoutMs);
    const off = store.onChange((id) => {
      if (id !== sandboxId) return;
      clearTimeout(timer);
      off();
      resolve();
    });
  });
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * A TCP relay to a local port that can be cut (every connection dropped, new ones refused) and
 * restored on the same port: the server behind it keeps running and keeps its data.
 */
export interface CuttableProxy {
  port: number;
  /** New connections go to `port` from now on; those made before stay where they are (a Service whose endpoint moved). */
  retarget(port: number): void;
  cut(): Promise<void>;
  restore(): Promise<void>;
  close(): Promise<void>;
}

export async function startCuttableProxy(initialTarget: number): Promise<CuttableProxy> {
  let targetPort = initialTarget;
  const sockets = new Set<net.Socket>();
  let server: net.Server | null = null;
  let port = 0;

  async function listen(): Promise<void> {
    const s = net.createServer((down) => {
      const up = net.connect(targetPort, '127.0.0.1');
      sockets.add(down);
      sockets.add(up);
      const cleanup = (): void => {
        down.destroy();
        up.destroy();
        sockets.delete(down);
        sockets.delete(up);
      };
      down.on('error', cleanup);
      up.on('error', cleanup);
      down.on('close', cleanup);
      up.on('close', cleanup);
      down.pipe(up);
      up.pipe(down);
    });
    s.on('error', () => {});
    s.listen(port, '127.0.0.1');
    await once(s, 'listening');
    const address = s.address();
    if (address === null || typeof address === 'string') throw new Error('no port');
    port = address.port;
    server = s;
  }

  async function cut(): Promise<void> {
    const s = server;
    server = null;
    for (const sock of sockets) sock.destroy();
    sockets.clear();
    if (s !== null) await new Promise<void>((resolve) => s.close(() => resolve()));
  }

  await listen();
  return {
    get port() {
      return port;
    },
    retarget(next: number) {
      targetPort = next;
    },
    cut,
    restore: listen,
    close: cut,
  };
}
