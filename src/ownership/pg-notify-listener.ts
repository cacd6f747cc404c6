// A dedicated Postgres connection doing LISTEN, the fallback invalidation path when Redis is absent
// or down (DESIGN §4). The connection is re-established with capped backoff after any error, and a
// re-established LISTEN reports a resync because notifications sent meanwhile are lost.
import pg from 'pg';
import type { Logger } from 'pino';

export interface PgNotifyListener {
  /** Connects once; if that fails, retries continue in the background and start() still resolves. */
  start(): Promise<void>;
  close(): Promise<void>;
  isListening(): boolean;
}

export interface PgNotifyListenerOptions {
  databaseUrl: string;
  channel: string;
  logger: Logger;
  onNotification: (payload: string) => void;
  onResync: () => void;
  connectTimeoutMs?: number;
  retryMinMs?: number;
  retryMaxMs?: number;
}

export function createPgNotifyListener(opts: PgNotifyListenerOptions): PgNotifyListener {
  const log = opts.logger;
  const retryMinMs = opts.retryMinMs ?? 100;
  const retryMaxMs = opts.retryMaxMs ?? 5000;
  let client: pg.Client | null = null;
  let listening = false;
  let closed = false;
  let everListened = false;
  let inOutage = false;
  let attempt = 0;
  let retryTimer: NodeJS.Timeout | null = null;

  function lost(c: pg.Client, err?: unknown): void {
    if (client !== c) return; // a stale client reporting its own teardown
    client = null;
    listening = false;
    c.removeAllListeners('notification');
    c.end().catch(() => {});
    if (closed) return;
    if (!inOutage) {
      inOutage = true;
      log.warn({ err }, 'postgres LISTEN connection lost; reconnecting');
    }
    scheduleRetry();
  }

  function scheduleRetry(): void {
    if (closed || retryTimer !== null) return;
    const delay = Math.min(retryMaxMs, retryMinMs * 2 ** Math.min(attempt, 16));
    attempt += 1;
    retryTimer = setTimeout(() => {
      retryTimer = null;
      void connect();
    }, delay);
    retryTimer.unref();
  }

  async function connect(): Promise<boolean> {
    if (closed) return false;
    const c = new pg.Client({
      connectionString: opts.databaseUrl,
      connectionTimeoutMillis: opts.connectTimeoutMs ?? 2000,
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
      application_name: 'openshell-ha-sidecar-listen',
    });
    client = c;
    // Registered before connect() so that no error is ever unhandled.
    c.on('error', (err) => lost(c, err));
    c.on('end', () => lost(c));
    c.on('notification', (msg) => {
      if (msg.channel === opts.channel && msg.payload !== undefined && msg.payload.length > 0) {
        opts.onNotification(msg.payload);
      }
    });
    try {
      await c.connect();
      await c.query(`LISTEN ${pg.escapeIdentifier(opts.channel)}`);
    } catch (err) {
      lost(c, err);
      return false;
    }
    if (client !== c || closed) return false;
    listening = true;
    attempt = 0;
    if (inOutage) {
      inOutage = false;
      log.info('postgres LISTEN connection recovered');
    }
    if (everListened) opts.onResync();
    everListened = true;
    return true;
  }

  return {
    async start() {
      closed = false;
      await connect();
    },

    async close() {
      closed = true;
      if (retryTimer !== null) {
        clearTimeout(retryTimer);
        retryTimer = null;
      }
      const c = client;
      client = null;
      listening = false;
      if (c !== null) {
        c.removeAllListeners('notification');
        await c.end().catch(() => {});
      }
    },

    isListening: () => listening,
  };
}
