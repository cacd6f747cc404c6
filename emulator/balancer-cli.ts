// The round-robin "Service" as a process: `openshell-emulator balancer --listen HOST:PORT --backend HOST:PORT ...`.
// Prints one JSON line {"event":"ready",...} on stdout once listening.
import { parseArgs } from 'node:util';
import { startBalancer, type Backend } from './balancer.ts';

function hostPort(value: string): Backend {
  const m = /^(.+):(\d+)$/.exec(value);
  if (!m) throw new Error(`expected HOST:PORT, got ${value}`);
  return { host: m[1] as string, port: Number(m[2]) };
}

export async function runBalancer(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      listen: { type: 'string', default: '127.0.0.1:0' },
      backend: { type: 'string', multiple: true, default: [] },
    },
  });
  const listen = hostPort(values.listen ?? '127.0.0.1:0');
  const backends = (values.backend ?? []).map(hostPort);
  if (backends.length === 0) {
    console.error('balancer: at least one --backend HOST:PORT is required');
    process.exit(2);
  }
  const balancer = await startBalancer(backends, listen.host, listen.port);
  process.stdout.write(`${JSON.stringify({ event: 'ready', role: 'balancer', port: balancer.port, backends, pid: process.pid })}\n`);
  const stop = (): void => {
    void balancer.close().finally(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
