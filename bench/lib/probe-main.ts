// The scale bench's routing probe from a process of its own: a new client holding nothing else, as
// the client of a real new request is. The bench process holds the 20,000 client ends of the held
// sessions, and its own collections (3–10 ms each at that size) overlapped half of the slow
// forwarded probes it timed; from this process the count over 5 ms stayed the same (the nineteenth
// session, docs/performance.md: the tail is the 2-core machine's scheduling). The bench reports both.
//   node --import tsx bench/lib/probe-main.ts '<json>'
// where <json> is { "n": 2000, "concurrency": 1, "sets": [{ "name": "direct", "endpoint": Endpoint }, ...] }.
// Warms its own code up on the first set's endpoint (200 streams, not counted: the first set is the
// gateway itself, so no sidecar is warmed by it), runs the sets one after the other, then prints
// {"event":"ready","results":{name: ProbeResult}} and exits.
import { ClientConns, probe, type ProbeResult } from './stream-probe.ts';
import type { Endpoint } from './raw-clients.ts';

interface ProbeSpec {
  n: number;
  concurrency: number;
  sets: { name: string; endpoint: Endpoint }[];
}

const spec = JSON.parse(process.argv[2] ?? '{}') as ProbeSpec;
if (!(spec.n > 0) || !(spec.concurrency > 0) || !Array.isArray(spec.sets) || spec.sets.length === 0) {
  console.error('usage: probe-main.ts \'{"n":2000,"concurrency":1,"sets":[{"name":"direct","endpoint":{...}}]}\'');
  process.exit(2);
}
const WARMUP = 200;
const results: Record<string, ProbeResult> = {};
const first = spec.sets[0]!;
const warm = new ClientConns(first.endpoint.port, 4);
await probe(warm, first.endpoint, WARMUP, 1);
warm.close();
for (const set of spec.sets) {
  const conns = new ClientConns(set.endpoint.port, 4);
  try {
    results[set.name] = await probe(conns, set.endpoint, spec.n, spec.concurrency);
  } finally {
    conns.close();
  }
}
console.log(JSON.stringify({ event: 'ready', results }));
process.exit(0);
