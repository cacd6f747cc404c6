// ioredis with the sidecar's URL replaced by Sentinel options (see sentinel-shim.mjs).
import * as ioredis from 'ioredis';

export * from 'ioredis';

/** redis+sentinel://[user:pass@]host1:port1[,hostN:portN…]/<master-name>[/<db>] → ioredis options. */
export function sentinelOptions(url) {
  const m = /^redis\+sentinel:\/\/(?:([^:@/]*)(?::([^@/]*))?@)?([^/]+)\/([^/?#]+)(?:\/(\d+))?$/.exec(url);
  if (!m) throw new Error(`not a redis+sentinel:// URL: ${url}`);
  const sentinels = m[3].split(',').map((hp) => {
    const at = hp.lastIndexOf(':');
    return at > 0 ? { host: hp.slice(0, at).replace(/^\[|\]$/g, ''), port: Number(hp.slice(at + 1)) } : { host: hp, port: 26379 };
  });
  return {
    sentinels,
    name: decodeURIComponent(m[4]),
    ...(m[5] !== undefined ? { db: Number(m[5]) } : {}),
    ...(m[1] ? { username: decodeURIComponent(m[1]) } : {}),
    ...(m[2] ? { password: decodeURIComponent(m[2]) } : {}),
    // Follow a promotion at once (Sentinel's +switch-master), not only on the next reconnect.
    failoverDetector: true,
  };
}

export class Redis extends ioredis.Redis {
  constructor(url, opts) {
    const sentinelUrl = process.env.OHS_TEST_SENTINEL_URL;
    if (sentinelUrl && typeof url === 'string') super({ ...(opts ?? {}), ...sentinelOptions(sentinelUrl) });
    else super(url, opts);
  }
}

export default Redis;
