import { describe, expect, it } from 'vitest';
import { OhsError } from '../../../src/errors.ts';
import { CONFIG_DEFAULTS, describeConfig, loadConfig } from '../../../src/config/load.ts';
import { sentinelOptions } from '../../../src/ownership/redis-connect.ts';
import type { LoadConfigOptions } from '../../../src/config/load.ts';

const SECRET = 'a-very-long-peer-secret';

function files(contents: Record<string, string>): (path: string) => string {
  return (path) => {
    const text = contents[path];
    if (text === undefined) throw Object.assign(new Error(`ENOENT: ${path}`), { code: 'ENOENT' });
    return text;
  };
}

function load(opts: Partial<LoadConfigOptions> = {}) {
  return loadConfig({ argv: [], env: {}, readFile: files({}), randomHex: () => 'c0ffee00', ...opts });
}

function configError(fn: () => unknown): OhsError {
  try {
    fn();
  } catch (err) {
    if (err instanceof OhsError && err.code === 'OHS_ERR_CONFIG') return err;
    throw err;
  }
  throw new Error('expected a config error');
}

describe('defaults', () => {
  it('runs embedded with the documented defaults when nothing is configured', () => {
    const cfg = load();
    expect(cfg.mode).toBe('embedded');
    expect(cfg).toMatchObject(CONFIG_DEFAULTS);
    expect(cfg.listen).toBe('0.0.0.0:8080');
    expect(cfg.peerListen).toBe('0.0.0.0:8443');
    expect(cfg.adminListen).toBe('127.0.0.1:9091');
    expect(cfg.gatewayUrl).toBe('http://127.0.0.1:18080');
    expect(cfg.maxFirstMessageBytes).toBe(65536);
    expect(cfg.hopLimit).toBe(2);
    expect(cfg.h2InitialWindowBytes).toBe(1048576);
    expect(cfg.databaseUrl).toBeUndefined();
    expect(cfg.peerSecret).toBeUndefined();
    expect(cfg.peerUrl).toBeUndefined();
  });

  it('names the replica after HOSTNAME (the pod name)', () => {
    expect(load({ env: { HOSTNAME: 'openshell-7d9f-abcde' } }).replicaId).toBe('openshell-7d9f-abcde');
  });

  it('makes up a replica id when there is no usable HOSTNAME', () => {
    expect(load().replicaId).toBe('replica-c0ffee00');
    expect(load({ env: { HOSTNAME: 'bad host' } }).replicaId).toBe('replica-c0ffee00');
  });
});

describe('precedence: defaults < file < env < flags', () => {
  const readFile = files({ '/etc/ohs.json': JSON.stringify({ listen: '1.1.1.1:1', hopLimit: 3, adminListen: '1.1.1.1:3' }) });

  it('file overrides defaults', () => {
    const cfg = load({ argv: ['--config', '/etc/ohs.json'], readFile });
    expect(cfg.listen).toBe('1.1.1.1:1');
    expect(cfg.hopLimit).toBe(3);
  });

  it('env overrides the file, flags override env', () => {
    const cfg = load({
      argv: ['--config', '/etc/ohs.json', '--listen', '3.3.3.3:3'],
      env: { OHS_LISTEN: '2.2.2.2:2', OHS_HOP_LIMIT: '4' },
      readFile,
    });
    expect(cfg.listen).toBe('3.3.3.3:3');
    expect(cfg.hopLimit).toBe(4);
    expect(cfg.adminListen).toBe('1.1.1.1:3');
  });

  it('finds the file through OHS_CONFIG, and --config wins over it', () => {
    const both = files({ '/a.json': '{"hopLimit": 5}', '/b.json': '{"hopLimit": 6}' });
    expect(load({ env: { OHS_CONFIG: '/a.json' }, readFile: both }).hopLimit).toBe(5);
    expect(load({ env: { OHS_CONFIG: '/a.json' }, argv: ['--config=/b.json'], readFile: both }).hopLimit).toBe(6);
  });

  it('merges nested TLS settings across layers', () => {
    const cfg = load({
      argv: ['--config', '/c.json', '--tls-key', '/k.pem'],
      readFile: files({ '/c.json': JSON.stringify({ tls: { certFile: '/c.pem' } }) }),
      env: { OHS_TLS_CLIENT_CA_FILE: '/ca.pem' },
    });
    expect(cfg.tls).toEqual({ certFile: '/c.pem', keyFile: '/k.pem', clientCaFile: '/ca.pem' });
  });

  it('treats empty env values as unset', () => {
    expect(load({ env: { OHS_LISTEN: '', OHS_DATABASE_URL: '' } }).listen).toBe('0.0.0.0:8080');
  });
});

describe('flags', () => {
  it('accepts --flag value and --flag=value', () => {
    const cfg = load({ argv: ['--listen', '127.0.0.1:0', '--peer-listen=127.0.0.1:0', '--max-first-message-bytes=4096'] });
    expect(cfg.listen).toBe('127.0.0.1:0');
    expect(cfg.peerListen).toBe('127.0.0.1:0');
    expect(cfg.maxFirstMessageBytes).toBe(4096);
  });

  it('parses every numeric flag', () => {
    const cfg = load({
      argv: [
        '--first-message-timeout-ms', '1000', '--max-header-bytes', '8192', '--hop-limit', '3',
        '--owner-cache-ttl-ms', '0', '--replica-heartbeat-interval-ms', '500', '--replica-lease-ttl-ms', '3000',
        '--owner-wait-ms', '100', '--peer-connect-timeout-ms', '300', '--upstream-connect-timeout-ms', '400',
        '--shutdown-grace-ms', '0', '--h2-initial-window-bytes', '65535', '--log-level', 'debug',
      ],
    });
    expect(cfg).toMatchObject({
      firstMessageTimeoutMs: 1000, maxHeaderBytes: 8192, hopLimit: 3, ownerCacheTtlMs: 0,
      replicaHeartbeatIntervalMs: 500, replicaLeaseTtlMs: 3000, ownerWaitMs: 100, peerConnectTimeoutMs: 300,
      upstreamConnectTimeoutMs: 400, shutdownGraceMs: 0, h2InitialWindowBytes: 65535, logLevel: 'debug',
    });
  });

  it('lets the last of a repeated flag win', () => {
    expect(load({ argv: ['--hop-limit', '1', '--hop-limit=3'] }).hopLimit).toBe(3);
  });

  it('refuses an unknown flag and names it', () => {
    const err = configError(() => load({ argv: ['--listen', '127.0.0.1:1', '--max-frist-message-bytes', '10'] }));
    expect(err.message).toContain('--max-frist-message-bytes');
  });

  it('refuses positional arguments and flags without a value', () => {
    expect(configError(() => load({ argv: ['serve'] })).message).toContain("'serve'");
    expect(configError(() => load({ argv: ['--listen'] })).message).toContain('--listen needs a value');
    expect(configError(() => load({ argv: ['--listen', '--hop-limit', '2'] })).message).toContain('--listen');
  });

  it('refuses a non-integer numeric flag, naming the flag', () => {
    const err = configError(() => load({ argv: ['--hop-limit', 'two'] }));
    expect(err.message).toContain('--hop-limit');
    expect(configError(() => load({ env: { OHS_OWNER_WAIT_MS: '1.5' } })).message).toContain('OHS_OWNER_WAIT_MS');
  });

  it('refuses out-of-range values, naming the flag and env variable', () => {
    const err = configError(() => load({ argv: ['--hop-limit', '0'] }));
    expect(err.message).toContain('hopLimit (--hop-limit / OHS_HOP_LIMIT)');
  });

  it('refuses malformed addresses and URLs', () => {
    expect(configError(() => load({ argv: ['--listen', '8080'] })).message).toContain('listen');
    expect(configError(() => load({ argv: ['--gateway', 'ftp://x'] })).message).toContain('gatewayUrl');
    expect(configError(() => load({ argv: ['--log-level', 'loud'] })).message).toContain('logLevel');
  });
});

describe('config file', () => {
  it('rejects unknown keys at the top level', () => {
    const err = configError(() =>
      load({ argv: ['--config', '/c.json'], readFile: files({ '/c.json': '{"listen":"1.2.3.4:5","lisen":"x"}' }) }),
    );
    expect(err.message).toContain('/c.json');
    expect(err.message).toContain('lisen');
  });

  it('rejects unknown keys inside nested objects', () => {
    const err = configError(() =>
      load({ argv: ['--config', '/c.json'], readFile: files({ '/c.json': '{"tls":{"cert":"/x"}}' }) }),
    );
    expect(err.message).toContain('cert');
  });

  it('does not accept derived fields such as mode', () => {
    expect(() =>
      load({ argv: ['--config', '/c.json'], readFile: files({ '/c.json': '{"mode":"cluster"}' }) }),
    ).toThrow(/mode/);
  });

  it('reports unreadable and invalid JSON files', () => {
    expect(configError(() => load({ argv: ['--config', '/missing.json'] })).message).toContain('cannot read');
    expect(configError(() => load({ argv: ['--config', '/c.json'], readFile: files({ '/c.json': '{' }) })).message).toContain(
      'not valid JSON',
    );
  });

  it('reports wrongly typed values', () => {
    const err = configError(() =>
      load({ argv: ['--config', '/c.json'], readFile: files({ '/c.json': '{"hopLimit":"2"}' }) }),
    );
    expect(err.message).toContain('hopLimit');
  });
});

describe('cluster mode', () => {
  const cluster = { OHS_DATABASE_URL: 'postgres://ohs:pw@db:5432/ohs', OHS_PEER_URL: 'http://10.0.0.5:8443' };

  it('is selected by a database URL and needs a peer secret or peer mTLS', () => {
    const err = configError(() => load({ env: cluster }));
    expect(err.message).toContain('peerSecret or peerTls is required in cluster mode');
    const cfg = load({ env: { ...cluster, OHS_PEER_SECRET: SECRET } });
    expect(cfg.mode).toBe('cluster');
    expect(cfg.peerSecret).toBe(SECRET);
  });

  it('reads the peer secret from a file and drops its trailing newline', () => {
    const cfg = load({
      env: cluster,
      argv: ['--peer-secret-file', '/run/secrets/peer'],
      readFile: files({ '/run/secrets/peer': `${SECRET}\n` }),
    });
    expect(cfg.peerSecret).toBe(SECRET);
    expect(cfg).not.toHaveProperty('peerSecretFile');
  });

  it('lets a flag secret file override an env secret', () => {
    const cfg = load({
      env: { ...cluster, OHS_PEER_SECRET: 'env-secret-env-secret' },
      argv: ['--peer-secret-file=/s'],
      readFile: files({ '/s': SECRET }),
    });
    expect(cfg.peerSecret).toBe(SECRET);
  });

  it('refuses both a peer secret and a secret file in the same place', () => {
    expect(configError(() => load({ env: { ...cluster, OHS_PEER_SECRET: SECRET, OHS_PEER_SECRET_FILE: '/s' } })).message).toContain(
      'not both',
    );
  });

  it('refuses a short peer secret without echoing it', () => {
    const err = configError(() => load({ env: { ...cluster, OHS_PEER_SECRET: 'short-secret' } }));
    expect(err.message).toContain('peerSecret');
    expect(err.message).not.toContain('short-secret');
  });

  it('refuses an unreadable peer secret file', () => {
    expect(configError(() => load({ env: { ...cluster, OHS_PEER_SECRET_FILE: '/nope' } })).message).toContain('/nope');
  });

  it('refuses Redis without a database, explaining why', () => {
    const err = configError(() => load({ env: { OHS_REDIS_URL: 'redis://cache:6379' } }));
    expect(err.message).toContain('redisUrl is set but databaseUrl is not');
  });

  it('needs a peer URL when the peer port binds a wildcard address', () => {
    const err = configError(() => load({ env: { OHS_DATABASE_URL: cluster.OHS_DATABASE_URL, OHS_PEER_SECRET: SECRET } }));
    expect(err.message).toContain('peerUrl is required');
  });

  it('derives the peer URL from a concrete peer listen address', () => {
    const base = { OHS_DATABASE_URL: cluster.OHS_DATABASE_URL, OHS_PEER_SECRET: SECRET };
    expect(load({ env: { ...base, OHS_PEER_LISTEN: '10.0.0.5:8443' } }).peerUrl).toBe('http://10.0.0.5:8443');
    expect(load({ env: { ...base, OHS_PEER_LISTEN: '[fd00::5]:8443' } }).peerUrl).toBe('http://[fd00::5]:8443');
    expect(load({ env: { ...base, OHS_PEER_LISTEN: '127.0.0.1:0' } }).peerUrl).toBeUndefined();
  });

  it('refuses a heartbeat interval that is not shorter than the lease', () => {
    const err = configError(() => load({ argv: ['--replica-heartbeat-interval-ms', '10000'] }));
    expect(err.message).toContain('replicaHeartbeatIntervalMs');
  });

  it('keeps a closed connection\'s slot 100 ms for reuse by default, and refuses a window its lease could not outlive', () => {
    expect(load().limitReuseMs).toBe(100);
    expect(load({ argv: ['--limit-reuse-ms', '0'] }).limitReuseMs).toBe(0);
    expect(load({ env: { OHS_LIMIT_REUSE_MS: '1000', OHS_LIMIT_LEASE_TTL_MS: '9000' } }).limitReuseMs).toBe(1000);
    const err = configError(() => load({ argv: ['--limit-reuse-ms', '1001', '--limit-lease-ttl-ms', '9000'] }));
    expect(err.message).toContain('limitReuseMs (1001) must be at most a ninth of limitLeaseTtlMs (9000)');
  });

  it('runs V8\'s memory saver mode while quiet by default; on, off, and nothing else, are accepted', () => {
    expect(load().memorySaverMode).toBe('auto');
    expect(load({ argv: ['--memory-saver', 'off'] }).memorySaverMode).toBe('off');
    expect(load({ env: { OHS_MEMORY_SAVER: 'on' } }).memorySaverMode).toBe('on');
    const err = configError(() => load({ argv: ['--memory-saver', 'always'] }));
    expect(err.message).toContain('memorySaverMode');
  });
});

describe('gateway TLS', () => {
  it('accepts TLS settings for an https gateway', () => {
    const cfg = load({ argv: ['--gateway', 'https://127.0.0.1:18080', '--gateway-ca', '/ca.pem', '--gateway-server-name', 'openshell'] });
    expect(cfg.gatewayTls).toEqual({ caFile: '/ca.pem', serverName: 'openshell' });
  });

  it('refuses TLS settings for a plaintext gateway', () => {
    expect(configError(() => load({ argv: ['--gateway-ca', '/ca.pem'] })).message).toContain('https');
  });

  it('refuses a client certificate without its key', () => {
    expect(configError(() => load({ argv: ['--gateway', 'https://gw:1', '--gateway-cert', '/c.pem'] })).message).toContain(
      'together',
    );
  });

  it('needs both halves of the public TLS key pair', () => {
    expect(configError(() => load({ argv: ['--tls-cert', '/c.pem'] })).message).toContain('tls.keyFile (--tls-key / OHS_TLS_KEY_FILE): is required');
  });
});

describe('result', () => {
  it('is deeply frozen', () => {
    const cfg = load({ argv: ['--tls-cert', '/c.pem', '--tls-key', '/k.pem'] });
    expect(Object.isFrozen(cfg)).toBe(true);
    expect(Object.isFrozen(cfg.tls)).toBe(true);
    expect(() => {
      (cfg as { hopLimit: number }).hopLimit = 9;
    }).toThrow(TypeError);
  });

  it('describes itself for logs with secrets redacted', () => {
    const cfg = load({
      env: {
        OHS_DATABASE_URL: 'postgres://ohs:dbpass@db:5432/ohs?sslpassword=tlskeyphrase',
        OHS_REDIS_URL: 'redis://:redispass@cache:6379/0',
        OHS_PEER_SECRET: SECRET,
        OHS_PEER_URL: 'http://10.0.0.5:8443',
      },
    });
    const described = describeConfig(cfg);
    const text = JSON.stringify(described);
    expect(text).not.toContain(SECRET);
    expect(text).not.toContain('dbpass');
    expect(text).not.toContain('tlskeyphrase');
    expect(text).not.toContain('redispass');
    expect(described['peerSecret']).toBe('[redacted]');
    expect(described['databaseUrl']).toContain('db:5432');
    expect(described['mode']).toBe('cluster');
    expect(cfg.peerSecret).toBe(SECRET);
  });
});

describe('describeConfig redaction', () => {
  it('hides the password of every database URL, including the gateway database', () => {
    const cfg = loadConfig({
      argv: ['--database-url', 'postgres://u:pw1@h/db', '--gateway-database-url', 'postgres://g:pw2@h/db', '--peer-secret', '0123456789abcdef0123', '--peer-url', 'http://x:1'],
      env: {},
    });
    const text = JSON.stringify(describeConfig(cfg));
    expect(text).not.toContain('pw1');
    expect(text).not.toContain('pw2');
    expect(text).not.toContain('0123456789abcdef0123');
  });
});

describe('Redis Sentinel URLs', () => {
  const base = ['--database-url', 'postgres://u@h/db', '--peer-secret', '0123456789abcdef0123', '--peer-url', 'http://x:1'];

  it('accepts redis+sentinel://user:pass@h1:p1,h2:p2/<master>/<db> and hides its password', () => {
    const cfg = loadConfig({ argv: [...base, '--redis-url', 'redis+sentinel://app:s3cret@10.0.0.1:26379,[fd00::2]:26380,sentinel-3/mymaster/2'], env: {} });
    expect(sentinelOptions(cfg.redisUrl as string)).toMatchObject({
      sentinels: [
        { host: '10.0.0.1', port: 26379 },
        { host: 'fd00::2', port: 26380 },
        { host: 'sentinel-3', port: 26379 },
      ],
      name: 'mymaster',
      db: 2,
      username: 'app',
      password: 's3cret',
      sentinelPassword: 's3cret',
    });
    expect(JSON.stringify(describeConfig(cfg))).not.toContain('s3cret');
  });

  it('refuses a Sentinel URL without a master name or with a bad port, and plain URLs stay plain', () => {
    expect(() => loadConfig({ argv: [...base, '--redis-url', 'redis+sentinel://h1:26379'], env: {} })).toThrow(/redis\+sentinel/);
    expect(() => loadConfig({ argv: [...base, '--redis-url', 'redis+sentinel://h1:99999/m'], env: {} })).toThrow(/redis\+sentinel/);
    expect(sentinelOptions('redis://h:6379')).toBeUndefined();
  });
});

describe('peer mTLS and lookup settings', () => {
  const db = { OHS_DATABASE_URL: 'postgres://ohs@db:5432/ohs' };
  const tlsFlags = ['--peer-tls-cert', '/pki/peer.crt', '--peer-tls-key', '/pki/peer.key', '--peer-tls-ca', '/pki/ca.crt'];

  it('takes the certificate files from flags or OHS_PEER_TLS_* and needs no peer secret then', () => {
    const cfg = load({ env: db, argv: [...tlsFlags, '--peer-listen', '10.0.0.5:8443'] });
    expect(cfg.mode).toBe('cluster');
    expect(cfg.peerSecret).toBeUndefined();
    expect(cfg.peerTls).toEqual({ certFile: '/pki/peer.crt', keyFile: '/pki/peer.key', caFile: '/pki/ca.crt' });
    // Peer URLs become https:// once peer TLS is on.
    expect(cfg.peerUrl).toBe('https://10.0.0.5:8443');
    const fromEnv = load({
      env: { ...db, OHS_PEER_TLS_CERT_FILE: '/c', OHS_PEER_TLS_KEY_FILE: '/k', OHS_PEER_TLS_CA_FILE: '/a', OHS_PEER_IDENTITY: 'spiffe', OHS_PEER_SPIFFE_ID: 'spiffe://cluster.local/ns/openshell/replica/{replica}', OHS_PEER_TLS_RELOAD_INTERVAL_MS: '1000', OHS_PEER_HOST: '10.0.0.5' },
    });
    expect(fromEnv.peerTls).toEqual({ certFile: '/c', keyFile: '/k', caFile: '/a', identity: 'spiffe', spiffeIdTemplate: 'spiffe://cluster.local/ns/openshell/replica/{replica}', reloadIntervalMs: 1000 });
  });

  it('refuses half a certificate pair, an http peer URL with TLS, and spiffe without a template', () => {
    expect(configError(() => load({ env: db, argv: ['--peer-tls-cert', '/c', '--peer-host', 'x'] })).message).toMatch(/peerTls\.keyFile.*is required/);
    expect(configError(() => load({ env: { ...db, OHS_PEER_URL: 'http://10.0.0.5:8443' }, argv: tlsFlags })).message).toContain('peer TLS is on, so peerUrl must be https://');
    expect(configError(() => load({ env: { ...db, OHS_PEER_URL: 'https://10.0.0.5:8443', OHS_PEER_SECRET: SECRET } })).message).toContain('peerUrl is https:// but peer TLS is not configured');
    expect(configError(() => load({ env: { ...db, OHS_PEER_HOST: 'x' }, argv: [...tlsFlags, '--peer-identity', 'spiffe'] })).message).toContain('no SPIFFE id template');
    expect(configError(() => load({ env: { ...db, OHS_PEER_HOST: 'x' }, argv: [...tlsFlags, '--peer-identity', 'cn'] })).message).toContain('peerTls.identity');
    for (const bad of ['spiffe://t/replica', 'https://t/replica/{replica}', 'spiffe://t/{replica}/{replica}', 'spiffe://T D/{replica}']) {
      expect(configError(() => load({ env: { ...db, OHS_PEER_HOST: 'x' }, argv: [...tlsFlags, '--peer-identity', 'spiffe', '--peer-spiffe-id', bad] })).message).toContain('peerTls.spiffeIdTemplate');
    }
  });

  it('sizes the negative cache and the Postgres pools', () => {
    expect(load()).toMatchObject({ ownerNegativeCacheTtlMs: 5000, ownerNegativeCacheMaxEntries: 10000, postgresPoolSize: 4, postgresLookupPoolSize: 4 });
    const cfg = load({ argv: ['--owner-negative-cache-ttl-ms', '0', '--owner-negative-cache-max-entries', '50', '--postgres-pool-size', '2', '--postgres-lookup-pool-size', '8'] });
    expect(cfg).toMatchObject({ ownerNegativeCacheTtlMs: 0, ownerNegativeCacheMaxEntries: 50, postgresPoolSize: 2, postgresLookupPoolSize: 8 });
  });
});
