import { describe, expect, it } from 'vitest';
import { OhsError } from '../../../src/errors.ts';
import { REDACTED, createLogger, lazyChild } from '../../../src/log/logger.ts';
import type { LogLevel } from '../../../src/config/schema.ts';

function capture(level: LogLevel = 'info') {
  const lines: Array<Record<string, unknown>> = [];
  const logger = createLogger({
    level,
    destination: { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) },
  });
  return { logger, lines };
}

describe('createLogger', () => {
  it('tags every line with the service name and a readable level', () => {
    const { logger, lines } = capture();
    logger.info({ conn: 1 }, 'hello');
    expect(lines[0]).toMatchObject({ service: 'openshell-ha-sidecar', level: 'info', conn: 1, msg: 'hello' });
    expect(typeof lines[0]?.['time']).toBe('string');
  });

  it('honours the level', () => {
    const { logger, lines } = capture('warn');
    logger.info('hidden');
    logger.warn('shown');
    expect(lines.map((l) => l['msg'])).toEqual(['shown']);
  });

  it('adds extra base fields', () => {
    const lines: string[] = [];
    const logger = createLogger({ level: 'info', base: { replica: 'r1' }, destination: { write: (l: string) => void lines.push(l) } });
    logger.info('x');
    expect(JSON.parse(lines[0] ?? '{}')).toMatchObject({ service: 'openshell-ha-sidecar', replica: 'r1' });
  });

  it('never prints sandbox tokens, bearer tokens or the peer secret', () => {
    const { logger, lines } = capture();
    logger.info({
      headers: { authorization: 'Bearer eyJhbGciOiJFZERTQSJ9.jwt', 'x-sandbox-token': 'tok-123', 'x-sandbox-id': 'sb-1', 'x-ohs-peer-auth': 'mac' },
    });
    logger.info({ req: { headers: { authorization: 'Bearer a', 'x-sandbox-token': 'tok-456', 'x-ohs-peer-auth': 'mac-2' } } });
    logger.info({ peerSecret: 'super-secret-value', cfg: { peerSecret: 'super-secret-value' } });
    logger.info({ token: 'tok-789', ssh: { token: 'tok-000', authorization: 'Basic abc' } });
    const text = JSON.stringify(lines);
    for (const secret of ['eyJhbGciOiJFZERTQSJ9', 'tok-123', 'tok-456', 'tok-789', 'tok-000', 'super-secret-value', 'mac', 'Basic abc', 'Bearer a']) {
      expect(text).not.toContain(secret);
    }
    expect(lines[0]).toMatchObject({
      headers: { authorization: REDACTED, 'x-sandbox-token': REDACTED, 'x-sandbox-id': 'sb-1', 'x-ohs-peer-auth': REDACTED },
    });
  });

  it('serialises errors under err with their code and cause', () => {
    const { logger, lines } = capture();
    const err = new OhsError('OHS_ERR_UPSTREAM', 'gateway unreachable', { cause: new Error('ECONNREFUSED') });
    logger.error({ err }, 'forward failed');
    const logged = lines[0]?.['err'] as Record<string, unknown>;
    expect(logged).toMatchObject({ type: 'OhsError', code: 'OHS_ERR_UPSTREAM' });
    expect(String(logged['message'])).toContain('gateway unreachable');
    expect(String(logged['stack'])).toContain('ECONNREFUSED');
  });
});

describe('lazyChild', () => {
  it('logs with the parent bindings and its own, like a child, and children of it merge theirs', () => {
    const { logger, lines } = capture();
    const conn = lazyChild(logger.child({ listener: 'public' }), { conn: 7 });
    conn.info({ extra: true }, 'one');
    lazyChild(conn, { class: 'ssh-tunnel' }).child({ sandbox: 's1' }).warn('two');
    expect(lines[0]).toMatchObject({ listener: 'public', conn: 7, extra: true, msg: 'one' });
    expect(lines[1]).toMatchObject({ listener: 'public', conn: 7, class: 'ssh-tunnel', sandbox: 's1', level: 'warn', msg: 'two' });
  });

  it('makes no pino child, even for lines written: the parent writes them with the bindings merged', () => {
    const { logger, lines } = capture('info');
    let made = 0;
    const child = logger.child.bind(logger);
    logger.child = ((...args: Parameters<typeof logger.child>) => {
      made++;
      return child(...args);
    }) as typeof logger.child;
    const lazy = lazyChild(logger, { conn: 1 });
    lazy.debug('not at info');
    lazyChild(lazy, { sandbox: 's' }).trace('nor this');
    expect(made).toBe(0);
    lazy.error(new OhsError('OHS_ERR_INTERNAL', 'boom'), 'failed');
    lazyChild(lazy, { sandbox: 's' }).warn(new Error('alone'));
    lazy.info('plain %s', 'formatted');
    expect(made).toBe(0);
    expect(lines[0]).toMatchObject({ conn: 1, level: 'error', msg: 'failed', err: { message: 'boom' } });
    expect(lines[1]).toMatchObject({ conn: 1, sandbox: 's', level: 'warn', msg: 'alone', err: { message: 'alone' } });
    expect(lines[2]).toMatchObject({ conn: 1, level: 'info', msg: 'plain formatted' });
    // Anything beyond lines (here a level of its own) makes the real child.
    lazy.level = 'debug';
    expect(made).toBe(1);
  });

  it('redacts tokens as every logger does', () => {
    const { logger, lines } = capture();
    lazyChild(logger, { conn: 1 }).info({ token: 'secret' }, 'x');
    expect(lines[0]?.['token']).toBe(REDACTED);
  });
});
