// A `/_ws_tunnel` passthrough (reference §2.6: the CLI's WebSocket tunnel behind Cloudflare Access),
// direct to a fake gateway and through one sidecar: round trip of a message the client writes in two
// parts (a 2-byte frame head, then 30 bytes 1 ms later) and the gateway answers once both are in, as
// a framing peer does. Without TCP_NODELAY on both of the sidecar's legs the second part waits for
// the gateway's delayed ACK (~40 ms on Linux). Prints numbers; asserts nothing.
// Env: WS_ROUND_TRIPS (200), WS_ROUNDS (3; the paths alternate).
import net from 'node:net';
import { createTestDatabase, testRedisPrefix, TEST_REDIS_URL } from '../test/helpers/services.ts';
import { startBenchSidecar } from './lib/sidecars.ts';
import { envInt, percentile } from './lib/stats.ts';

const ROUND_TRIPS = envInt('WS_ROUND_TRIPS', 200);
const ROUNDS = envInt('WS_ROUNDS', 3);
const MESSAGE = 32;

/** 101 on the upgrade, then each complete 32-byte message echoed. */
function startGateway(): Promise<net.Server> {
  const server = net.createServer({ noDelay: true }, (s) => {
    let upgraded = false;
    let buf = Buffer.alloc(0);
    s.on('error', () => undefined);
    s.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (!upgraded) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        s.write('HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n');
        buf = buf.subarray(end + 4);
        upgraded = true;
      }
      while (buf.length >= MESSAGE) {
        s.write(buf.subarray(0, MESSAGE));
        buf = buf.subarray(MESSAGE);
      }
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

async function roundTrips(port: number): Promise<number[]> {
  const c = net.connect({ port, host: '127.0.0.1', noDelay: true });
  c.on('error', () => undefined);
  await new Promise((resolve) => c.once('connect', resolve));
  let got = Buffer.alloc(0);
  let want = -1;
  let wake: (() => void) | undefined;
  c.on('data', (chunk: Buffer) => {
    got = Buffer.concat([got, chunk]);
    if (want < 0) {
      const end = got.indexOf('\r\n\r\n');
      if (end < 0) return;
      got = got.subarray(end + 4);
      want = 0;
      wake?.();
    } else if (got.length >= want) wake?.();
  });
  const until = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no answer in 5 s')), 5_000);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  c.write('GET /_ws_tunnel HTTP/1.1\r\nhost: gw\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n');
  await until();
  const times: number[] = [];
  try {
    for (let i = 0; i < ROUND_TRIPS; i++) {
      got = Buffer.alloc(0);
      want = MESSAGE;
      const answered = until();
      const t0 = process.hrtime.bigint();
      c.write(Buffer.alloc(2, 1));
      setTimeout(() => c.write(Buffer.alloc(MESSAGE - 2, 2)), 1);
      await answered;
      times.push(Number(process.hrtime.bigint() - t0) / 1e3);
    }
  } finally {
    c.destroy();
  }
  return times;
}

const gateway = await startGateway();
const gatewayPort = (gateway.address() as net.AddressInfo).port;
const db = await createTestDatabase('bench_ws_tunnel');
const sidecar = await startBenchSidecar('ws', {
  gatewayPort,
  databaseUrl: db.url,
  redisUrl: TEST_REDIS_URL,
  redisKeyPrefix: testRedisPrefix('bench-ws-tunnel'),
  peerSecret: 'bench-ws-tunnel-peer-secret-0123456789',
});
try {
  const all: Record<string, number[]> = { direct: [], sidecar: [] };
  for (let round = 1; round <= ROUNDS; round++) {
    const order = round % 2 === 1 ? ['direct', 'sidecar'] : ['sidecar', 'direct'];
    for (const path of order) {
      const t = (await roundTrips(path === 'direct' ? gatewayPort : sidecar.publicPort)).sort((a, b) => a - b);
      all[path]!.push(...t);
      console.log(`round ${round} ${path.padEnd(8)} p50 ${percentile(t, 50).toFixed(0)} us  p99 ${percentile(t, 99).toFixed(0)} us`);
    }
  }
  const p50 = (path: string): number => percentile([...all[path]!].sort((a, b) => a - b), 50);
  console.log(`/_ws_tunnel message round trip (2 writes, 1 ms apart), ${ROUNDS} x ${ROUND_TRIPS}: direct p50 ${p50('direct').toFixed(0)} us, sidecar p50 ${p50('sidecar').toFixed(0)} us (${(p50('sidecar') / p50('direct')).toFixed(2)}x)`);
} finally {
  await sidecar.stop();
  await db.drop();
  gateway.close();
}
