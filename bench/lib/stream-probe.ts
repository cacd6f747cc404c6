// New ForwardTcp streams, each opened, pinged and timed: the scale bench's routing probe
// (bench/scale.ts), run from the bench process or from a process of its own (bench/lib/probe-main.ts).
import type http2 from 'node:http2';
import { PING_BYTES, connectH2, openForward, type Channel, type Endpoint } from './raw-clients.ts';
import { percentile, round2 } from './stats.ts';

const STEP_TIMEOUT_MS = 10_000;

/** A pool of client HTTP/2 connections to one port, streams spread round robin (reopened if one closed). */
export class ClientConns {
  readonly #sessions: http2.ClientHttp2Session[] = [];
  #next = 0;
  constructor(
    private readonly port: number,
    private readonly count: number,
  ) {}
  async get(): Promise<http2.ClientHttp2Session> {
    const i = this.#next++ % this.count;
    let s = this.#sessions[i];
    if (!s || s.closed || s.destroyed) {
      s = await connectH2(this.port);
      this.#sessions[i] = s;
    }
    return s;
  }
  close(): void {
    for (const s of this.#sessions) s.destroy();
  }
}

/** Opens a ForwardTcp stream, sends init + one ping and waits for the echo; resolves with the ms it took. */
export async function openAndPing(conns: ClientConns, ep: Endpoint): Promise<{ ms: number; ch: Channel }> {
  const t0 = process.hrtime.bigint();
  const ping = PING_BYTES.grpc;
  const ch = openForward(await conns.get(), ep, 'echo', ping);
  const s = ch.out as http2.ClientHttp2Stream;
  let answered = false;
  let grpcStatus: string | undefined;
  s.once('response', (h) => {
    answered = true;
    if (h['grpc-status'] !== undefined) grpcStatus = `${String(h['grpc-status'])} ${decodeURIComponent(String(h['grpc-message'] ?? ''))}`;
  });
  // An answer that ends before the echo (a refusal) fails the stream at once, with its status.
  const ended = new Promise<never>((_, reject) => s.once('end', () => reject(new Error(`ended before the echo: grpc-status ${grpcStatus ?? 'none'}`))));
  ended.catch(() => undefined);
  try {
    await Promise.race([ch.counter.until(ping.length, STEP_TIMEOUT_MS), ended]);
  } catch (err) {
    // Where it stopped: never sent (no stream id: the client connection's stream limit), sent but
    // unanswered, or answered without the echo.
    const where = s.pending ? 'never sent' : answered ? 'answered' : `sent as stream ${s.id}, no answer`;
    await ch.close();
    throw new Error(`${(err as Error).message} (${where})`);
  }
  return { ms: Number(process.hrtime.bigint() - t0) / 1e6, ch };
}

export interface ProbeResult {
  n: number;
  errors: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** Probes over 5 ms (the target's bound), and where the 1 % slowest fell in the run (their start order, 0 the first). */
  over5Ms?: number;
  slowestAt?: number[];
}

/** Where a probe set's slowest streams fell: how many of them in each tenth of the set, first tenth first. */
export function tailPlace(r: ProbeResult): string {
  const tenths = new Array<number>(10).fill(0);
  for (const at of r.slowestAt ?? []) tenths[Math.min(9, Math.floor((at / Math.max(1, r.n)) * 10))]!++;
  return `[${tenths.join(' ')}] by tenth of the set`;
}

/** `n` new streams, `concurrency` at a time, each opened, pinged and closed. */
export async function probe(conns: ClientConns, ep: Endpoint, n: number, concurrency: number): Promise<ProbeResult> {
  const samples: { at: number; ms: number }[] = [];
  let begun = 0;
  let errors = 0;
  const deadline = Date.now() + 120_000;
  const worker = async (): Promise<void> => {
    while (begun < n && Date.now() < deadline) {
      const at = begun++;
      try {
        const r = await openAndPing(conns, ep);
        samples.push({ at, ms: r.ms });
        await r.ch.close();
      } catch {
        errors++;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  samples.sort((a, b) => a.ms - b.ms);
  const ms = samples.map((p) => p.ms);
  const slowestAt = samples
    .slice(samples.length - Math.ceil(samples.length / 100))
    .map((p) => p.at)
    .sort((a, b) => a - b);
  return {
    n: ms.length,
    errors,
    p50Ms: round2(percentile(ms, 50)),
    p99Ms: round2(percentile(ms, 99)),
    maxMs: round2(ms[ms.length - 1] ?? NaN),
    over5Ms: ms.filter((x) => x > 5).length,
    slowestAt,
  };
}
