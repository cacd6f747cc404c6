// Redis connections from a URL: a single server (`redis://`, `rediss://`), or a Sentinel-managed
// primary (`redis+sentinel://[user:pass@]host1:port1,host2:port2,…/<master-name>[/<db>]`, and
// `rediss+sentinel://` for TLS to the data nodes). With Sentinel, ioredis asks the sentinels for
// the current primary, and follows a promotion (+switch-master) at once.
import { Redis, type RedisOptions } from 'ioredis';

export const REDIS_URL_SCHEMES = ['redis:', 'rediss:', 'redis+sentinel:', 'rediss+sentinel:'] as const;

const SENTINEL_URL = /^(rediss?)\+sentinel:\/\/(?:([^:@/]*)(?::([^@/]*))?@)?([^/@]+)\/([^/?#]+)(?:\/(\d+))?\/?$/;

/** Sentinel options for a `redis+sentinel://` URL; undefined for a plain Redis URL; throws when malformed. */
export function sentinelOptions(url: string): RedisOptions | undefined {
  if (!/^rediss?\+sentinel:/i.test(url)) return undefined;
  const m = SENTINEL_URL.exec(url);
  if (!m) throw new Error('expected redis+sentinel://[user:pass@]host:port[,host:port…]/<master-name>[/<db>]');
  const [, scheme, user, pass, hosts, master, db] = m as unknown as [string, string, string | undefined, string | undefined, string, string, string | undefined];
  const sentinels = hosts.split(',').map((hp) => {
    const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(hp);
    if (bracketed) return { host: bracketed[1] as string, port: Number(bracketed[2] ?? 26379) };
    const at = hp.lastIndexOf(':');
    const port = at > 0 ? Number(hp.slice(at + 1)) : 26379;
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`bad sentinel address ${hp}`);
    return { host: at > 0 ? hp.slice(0, at) : hp, port };
  });
  return {
    sentinels,
    name: decodeURIComponent(master),
    ...(db !== undefined ? { db: Number(db) } : {}),
    // The same credentials for the sentinels and the data nodes (the common setup).
    ...(user ? { username: decodeURIComponent(user), sentinelUsername: decodeURIComponent(user) } : {}),
    ...(pass ? { password: decodeURIComponent(pass), sentinelPassword: decodeURIComponent(pass) } : {}),
    ...(scheme === 'rediss' ? { tls: {}, enableTLSForSentinelMode: true } : {}),
    failoverDetector: true,
  };
}

/**
 * A write refused with READONLY means the connection reached a replica: a primary demoted while the
 * connection stayed open (REPLICAOF sent by an operator or an operator program, not by Sentinel,
 * which closes clients as it demotes), or an address, such as a Kubernetes Service, that moved to a
 * new primary after this connection was made. Redis keeps such a connection open and ioredis keeps
 * it 'ready', so every write would fail for as long as the process lives. Reconnecting asks the
 * sentinels, or the address, again; the failed command is not sent again (its caller sees the error).
 */
export function reconnectOnReadonly(err: Error): 1 | false {
  return err.message.startsWith('READONLY') ? 1 : false;
}

/** How long a sentinel may take to name the primary when the caller sets no command timeout. */
const SENTINEL_COMMAND_TIMEOUT_MS = 1000;

/**
 * A client for `url` (plain or Sentinel) with `opts` on top; it reconnects after a READONLY reply
 * unless `opts` says otherwise. With Sentinel, a sentinel that accepts the connection and never
 * answers (a hung process, a half-dead node) is given up after the caller's command timeout and the
 * next one asked: ioredis waits on a sentinel's answer without a bound unless told, and the client
 * would stay connecting for good.
 */
export function createRedisClient(url: string, opts: RedisOptions = {}): Redis {
  const sentinel = sentinelOptions(url);
  const withDefaults: RedisOptions = { reconnectOnError: reconnectOnReadonly, ...opts };
  if (!sentinel) return new Redis(url, withDefaults);
  return new Redis({ sentinelCommandTimeout: opts.commandTimeout ?? SENTINEL_COMMAND_TIMEOUT_MS, ...withDefaults, ...sentinel });
}
