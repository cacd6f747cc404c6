// The proxy hop itself, raw, on both SSH data paths, every path side by side in one run:
//   direct     client -> fake gateway (echo/sink/source; bench/lib/fake-gateway.ts)
//   haproxy    client -> HAProxy -> fake gateway      (tcp mode for CONNECT, HTTP/2 for gRPC)
//   haproxy2   client -> HAProxy -> HAProxy -> gateway (two processes: the reference proxy's own
//              second hop, the baseline for the forwarded path's ratio)
//   node       client -> bare Node proxy -> gateway   (Node's own floor: the protocol work a Node
//              proxy cannot skip, nothing else; bench/lib/node-proxy-main.ts)
//   nodetcp    client -> Node TCP relay -> gateway    (bytes piped, nothing parsed: what HAProxy's tcp
//              mode does, the least any Node proxy spends on a connection; the bare Node proxy's
//              third port. For gRPC it relays the client's whole HTTP/2 connection)
//   nodetcp2   client -> Node TCP relay -> Node TCP relay -> gateway (a second hop that parses nothing
//              and opens a TCP connection per tunnel: what any peer hop written in Node can reach)
//   node2      client -> bare Node proxy -> bare Node proxy -> gateway (the second hop shaped as the
//              sidecars' peer hop: HTTP/2 between the two, CONNECT tunnels as HTTP/2 CONNECT streams;
//              Node's own floor for the forwarded path)
//   sidecar    client -> owner's sidecar -> gateway   (owner local)
//   sidecar2   client -> sidecar -> owner's sidecar (peer hop) -> gateway
// for a 2026-04 `CONNECT /connect/ssh` tunnel and a 2026-08 `ForwardTcp` gRPC stream. Metrics: RTT
// p50/p99 of a 32-byte ping-pong, bulk throughput both ways, and opens per second (tunnel or stream
// set up and one ping through it) at concurrency 1 and 64, with the CPU the path's proxy processes ran per
// open (all their threads, user and kernel, from /proc: the hop's cost whoever shares the cores). Paths are interleaved over rounds in
// rotating order and the median round is reported, as ratios against direct from the same run:
// absolute numbers are noise on a shared 2-core machine. Prints numbers; asserts nothing.
//
// Env: BENCH_ROUNDS (3), BENCH_RTT_N (2000), BENCH_BULK_MIB (256), BENCH_OPEN_MS (1500),
// BENCH_OPEN_MAX (3000), BENCH_PROTOS (connect,grpc), BENCH_PATHS (direct,haproxy,haproxy2,node,nodetcp,node2,nodetcp2,sidecar,sidecar2),
// BENCH_METRICS (rtt,bulk_up,bulk_down,opens_c1,opens_c64), BENCH_PAUSE_MS (0: a quiet spell before each
// measurement), BENCH_CPU_PROF=DIR (profile the sidecars),
// BENCH_HAPROXY_NBTHREAD (HAProxy's default: one thread per core), BENCH_LABEL (names the run in the file),
// BENCH_SIDECAR_ARGS (more sidecar flags, e.g. '--log-level debug'), BENCH_SIDECAR_NODE_ARGS (flags for
// node itself, e.g. '--max-semi-space-size=32'), BENCH_SIDECAR_ECHO=1 (print their logs),
// BENCH_NODE_TUNED=1 (the bare Node proxies run with --tuned: Node's own V8 cliffs stepped around),
// BENCH_NODE_NODE_ARGS (flags for node running the bare proxies, e.g. '--trace-gc-nvp'; their output is printed),
// BENCH_CPU_BUDGET=CORES (each proxy process, HAProxy, bare Node or sidecar, held to that much CPU in a cgroup
// of its own, as a pod under `resources.limits.cpu`; the client and the fake gateway are not; Linux, root;
// results go to bench/results/cpu-budget.json instead: `make bench-budget`).
import { readFileSync } from 'node:fs';
import type http2 from 'node:http2';
import { startProcess, tsEntry, type ManagedProcess } from '../emulator/process.ts';
import { GatewayStore } from '../emulator/gateway/store.ts';
import { TEST_REDIS_URL, createTestDatabase, testRedisPrefix } from '../test/helpers/services.ts';
import { createCleanups } from './lib/cleanup.ts';
import { processesCpuNs } from './lib/proc-cpu.ts';
import { cpuBudgets, type CpuBudget } from './lib/cpu-budget.ts';
import { haproxyVersion, startHaproxy, type Haproxy } from './lib/haproxy.ts';
import {
  ACK_BYTES,
  GRPC_BULK_CHUNK,
  PING_BYTES,
  RAW_BULK_CHUNK,
  connectH2,
  openForward,
  openTunnel,
  writeAll,
  type Channel,
  type Endpoint,
  type Proto,
} from './lib/raw-clients.ts';
import { RESULTS_FILE, mergeResults, resultsFile, type BenchResult } from './lib/results.ts';
import { holdSupervisor, sidecarEntry, startBenchSidecar, waitForOwner, type BenchSidecar } from './lib/sidecars.ts';
import { envInt, median, percentile, round1, round2 } from './lib/stats.ts';

const ALL_PROTOS = ['connect', 'grpc'] as const;
const ALL_PATHS = ['direct', 'haproxy', 'haproxy2', 'node', 'nodetcp', 'node2', 'nodetcp2', 'sidecar', 'sidecar2'] as const;
const ALL_METRICS = ['rtt', 'bulk_up', 'bulk_down', 'opens_c1', 'opens_c64'] as const;
type PathName = (typeof ALL_PATHS)[number];
type MetricName = (typeof ALL_METRICS)[number];

function envList<T extends string>(name: string, all: readonly T[]): T[] {
  const raw = process.env[name];
  if (!raw) return [...all];
  const picked = raw.split(',').map((s) => s.trim()) as T[];
  for (const p of picked) if (!all.includes(p)) throw new Error(`${name}: unknown '${p}' (known: ${all.join(', ')})`);
  return picked;
}

const ROUNDS = envInt('BENCH_ROUNDS', 3);
// A quiet spell before each measurement: what a sidecar that had nothing to do does first.
const PAUSE_MS = envInt('BENCH_PAUSE_MS', 0);
const RTT_N = envInt('BENCH_RTT_N', 2000);
const RTT_WARMUP = 200;
const BULK_BYTES = envInt('BENCH_BULK_MIB', 256) * 1024 * 1024;
const OPEN_MS = envInt('BENCH_OPEN_MS', 1500);
const OPEN_MAX = envInt('BENCH_OPEN_MAX', 3_000);
const PROTOS = envList('BENCH_PROTOS', ALL_PROTOS);
const METRICS = envList('BENCH_METRICS', ALL_METRICS);
const CPU_PROF_DIR = process.env.BENCH_CPU_PROF;
const CPU_BUDGET = process.env.BENCH_CPU_BUDGET ? Number(process.env.BENCH_CPU_BUDGET) : undefined;
const OUT_FILE = CPU_BUDGET === undefined ? RESULTS_FILE : resultsFile('cpu-budget.json');
const WINDOW_BYTES = 1024 * 1024;
const PEER_SECRET = 'bench-peer-secret-0123456789';
const STEP_TIMEOUT_MS = 10_000;
const VERSION = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

const PATH_LABEL: Record<PathName, string> = {
  direct: 'direct',
  haproxy: 'haproxy',
  haproxy2: 'haproxy x2 (chained)',
  node: process.env.BENCH_NODE_TUNED === '1' ? 'bare Node proxy, tuned' : 'bare Node proxy',
  nodetcp: 'Node TCP relay (no parsing)',
  nodetcp2: 'Node TCP relay x2 (chained)',
  node2: process.env.BENCH_NODE_TUNED === '1' ? 'bare Node x2, tuned' : 'bare Node x2 (chained)',
  sidecar: 'sidecar (owner local)',
  sidecar2: 'sidecar x2 (forwarded)',
};
const PROTO_LABEL: Record<Proto, string> = {
  connect: 'CONNECT /connect/ssh tunnel (2026-04), raw bytes',
  grpc: 'ForwardTcp gRPC stream (2026-08), 32-byte data messages / 16 KiB bulk messages',
};

const cleanups = createCleanups();
const started = Date.now();
const elapsed = (): string => `${((Date.now() - started) / 1000).toFixed(1)}s`;

interface PathRig {
  ep: Endpoint;
  /** The proxy processes on the path (none for direct), whose CPU per open is measured. */
  pids: number[];
  /** gRPC: one client connection per path, reused by every stream (reopened if it closes). */
  session?: http2.ClientHttp2Session;
}

async function h2Session(rig: PathRig): Promise<http2.ClientHttp2Session> {
  if (!rig.session || rig.session.closed || rig.session.destroyed) rig.session = await connectH2(rig.ep.port, WINDOW_BYTES);
  return rig.session;
}

async function open(rig: PathRig, mode: string, first?: Buffer): Promise<Channel> {
  if (rig.ep.proto === 'connect') {
    const ch = await openTunnel(rig.ep, mode);
    if (first) ch.out.write(first);
    return ch;
  }
  return openForward(await h2Session(rig), rig.ep, mode, first);
}

async function measureRtt(rig: PathRig): Promise<{ p50: number; p99: number }> {
  const ping = PING_BYTES[rig.ep.proto];
  const ch = await open(rig, 'echo');
  try {
    const rtts = new Float64Array(RTT_N);
    let expect = 0;
    for (let i = -RTT_WARMUP; i < RTT_N; i++) {
      const t0 = process.hrtime.bigint();
      ch.out.write(ping);
      expect += ping.length;
      await ch.counter.until(expect, STEP_TIMEOUT_MS);
      if (i >= 0) rtts[i] = Number(process.hrtime.bigint() - t0) / 1000;
    }
    rtts.sort();
    return { p50: percentile(rtts, 50), p99: percentile(rtts, 99) };
  } finally {
    await ch.close();
  }
}

const mibPerSec = (bytes: number, ns: bigint): number => bytes / (1024 * 1024) / (Number(ns) / 1e9);

async function measureBulkUp(rig: PathRig): Promise<number> {
  const chunk = rig.ep.proto === 'connect' ? RAW_BULK_CHUNK : GRPC_BULK_CHUNK;
  const deadline = Date.now() + 120_000;
  const t0 = process.hrtime.bigint();
  const ch = await open(rig, `sink:${BULK_BYTES}`);
  try {
    await writeAll(ch.out, chunk, BULK_BYTES, deadline);
    await ch.counter.until(ACK_BYTES[rig.ep.proto], Math.max(1, deadline - Date.now()));
    return mibPerSec(BULK_BYTES, process.hrtime.bigint() - t0);
  } finally {
    await ch.close();
  }
}

async function measureBulkDown(rig: PathRig): Promise<number> {
  const t0 = process.hrtime.bigint();
  const ch = await open(rig, `source:${BULK_BYTES}`);
  try {
    await ch.counter.until(BULK_BYTES, 120_000);
    return mibPerSec(BULK_BYTES, process.hrtime.bigint() - t0);
  } finally {
    await ch.close();
  }
}

/**
 * Tunnels or streams opened per second: set up, one ping through to the gateway and back, closed; and
 * the CPU µs the path's proxies ran per open in that time.
 */
async function measureOpens(rig: PathRig, concurrency: number): Promise<{ rate: number; cpuUs: number | undefined }> {
  const ping = PING_BYTES[rig.ep.proto];
  if (rig.ep.proto === 'grpc') await h2Session(rig);
  const deadline = Date.now() + OPEN_MS;
  let begun = 0;
  let done = 0;
  let errors = 0;
  let firstError: unknown;
  const cpu0 = rig.pids.map((pid) => processesCpuNs([pid]));
  const t0 = process.hrtime.bigint();
  const worker = async (): Promise<void> => {
    while (begun < OPEN_MAX && Date.now() < deadline) {
      begun++;
      try {
        // gRPC: init and the first bytes go together, as ssh-proxy sends them; CONNECT waits for 200.
        const ch = await open(rig, 'echo', ping);
        try {
          await ch.counter.until(ping.length, STEP_TIMEOUT_MS);
        } finally {
          await ch.close();
        }
        done++;
      } catch (err) {
        errors++;
        firstError ??= err;
        if (errors > 20) throw new Error(`opens: ${errors} errors, first: ${(firstError as Error).message}`);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const perProcess = rig.pids.map((pid, i) => (processesCpuNs([pid]) - cpu0[i]!) / 1000 / Math.max(1, done));
  const cpuUs = perProcess.reduce((a, b) => a + b, 0);
  if (errors > 0) console.log(`[${elapsed()}]   ${errors} failed opens (first: ${(firstError as Error).message})`);
  // A chained path's share per hop, first hop first (the ingress, then the owner).
  if (perProcess.length > 1) console.log(`[${elapsed()}]   CPU us per open by hop, first hop first: ${perProcess.map((v) => v.toFixed(1)).join(' / ')}`);
  return { rate: done / secs, cpuUs: rig.pids.length > 0 && done > 0 && Number.isFinite(cpuUs) ? cpuUs : undefined };
}

type Sample = Partial<Record<'rtt_p50' | 'rtt_p99' | 'bulk_up' | 'bulk_down' | 'opens_c1' | 'opens_c64' | 'cpu_c1' | 'cpu_c64', number>>;

function opensSample(r: { rate: number; cpuUs: number | undefined }, c: 'c1' | 'c64'): Sample {
  return { [`opens_${c}`]: r.rate, ...(r.cpuUs === undefined ? {} : { [`cpu_${c}`]: r.cpuUs }) };
}

async function measure(rig: PathRig, metric: MetricName): Promise<Sample> {
  switch (metric) {
    case 'rtt': {
      const r = await measureRtt(rig);
      return { rtt_p50: r.p50, rtt_p99: r.p99 };
    }
    case 'bulk_up':
      return { bulk_up: await measureBulkUp(rig) };
    case 'bulk_down':
      return { bulk_down: await measureBulkDown(rig) };
    case 'opens_c1':
      return opensSample(await measureOpens(rig, 1), 'c1');
    case 'opens_c64':
      return opensSample(await measureOpens(rig, 64), 'c64');
  }
}

const COLUMNS = [
  { key: 'rtt_p50', head: 'RTT p50 us', unit: 'us', lowerIsBetter: true },
  { key: 'rtt_p99', head: 'RTT p99 us', unit: 'us', lowerIsBetter: true },
  { key: 'bulk_up', head: 'bulk up MiB/s', unit: 'MiB/s', lowerIsBetter: false },
  { key: 'bulk_down', head: 'bulk down MiB/s', unit: 'MiB/s', lowerIsBetter: false },
  { key: 'opens_c1', head: 'opens/s c=1', unit: '1/s', lowerIsBetter: false },
  { key: 'opens_c64', head: 'opens/s c=64', unit: '1/s', lowerIsBetter: false },
  // The proxies' CPU per open: no direct figure (no proxy), so no ratio against it.
  { key: 'cpu_c1', head: 'proxy CPU us/open c=1', unit: 'us', lowerIsBetter: true },
  { key: 'cpu_c64', head: 'proxy CPU us/open c=64', unit: 'us', lowerIsBetter: true },
] as const;
type ColumnKey = (typeof COLUMNS)[number]['key'];

function fmt(v: number): string {
  return v >= 100 ? v.toFixed(0) : v.toFixed(1);
}

function printTable(proto: Proto, summary: Map<PathName, Sample>, paths: PathName[]): void {
  const direct = summary.get('direct');
  const cols = COLUMNS.filter((c) => [...summary.values()].some((s) => s[c.key] !== undefined));
  const rows: string[][] = [['path', ...cols.map((c) => c.head)]];
  for (const path of paths) {
    const s = summary.get(path);
    const row = [PATH_LABEL[path]];
    for (const c of cols) {
      const v = s?.[c.key];
      const d = direct?.[c.key];
      if (v === undefined) row.push('-');
      else if (path === 'direct' || d === undefined) row.push(fmt(v));
      else if (c.lowerIsBetter) row.push(`${fmt(v)} (+${fmt(v - d)})`);
      else row.push(`${fmt(v)} (${(v / d).toFixed(2)}x)`);
    }
    rows.push(row);
  }
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  console.log(`\n${PROTO_LABEL[proto]}: median of ${ROUNDS} rounds; (+added us) and (x of direct)`);
  for (const [i, r] of rows.entries()) {
    console.log(r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  '));
    if (i === 0) console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  }
}

interface TargetCheck {
  proto: Proto;
  what: string;
  value: number;
  target: number;
  /** null: for information, no target (written as such to the results file). */
  met: boolean | null;
  unit: string;
}

/** Issue 13's parity targets, evaluated on this run's medians. */
function checkTargets(proto: Proto, s: Map<PathName, Sample>): TargetCheck[] {
  const out: TargetCheck[] = [];
  const d = s.get('direct');
  const h = s.get('haproxy');
  const one = s.get('sidecar');
  const two = s.get('sidecar2');
  const bare = s.get('node');
  for (const key of ['bulk_up', 'bulk_down', 'opens_c1', 'opens_c64'] as const) {
    const hv = h?.[key];
    const sv = one?.[key];
    if (hv !== undefined && sv !== undefined) out.push({ proto, what: `sidecar ${key} vs haproxy`, value: round2(sv / hv), target: 0.9, met: sv / hv >= 0.9, unit: 'x' });
    // Informational: how much of Node's own ceiling the sidecar reaches, and where that ceiling is.
    const nv = bare?.[key];
    if (nv !== undefined && sv !== undefined) out.push({ proto, what: `sidecar ${key} vs bare Node proxy`, value: round2(sv / nv), target: NaN, met: null, unit: 'x' });
    if (nv !== undefined && hv !== undefined) out.push({ proto, what: `bare Node proxy ${key} vs haproxy`, value: round2(nv / hv), target: NaN, met: null, unit: 'x' });
    // Informational: Node relaying bytes it never reads, against HAProxy doing the same (its tcp
    // mode; on gRPC HAProxy terminates HTTP/2 and this does not).
    const rv = s.get('nodetcp')?.[key];
    if (rv !== undefined && hv !== undefined) out.push({ proto, what: `Node TCP relay ${key} vs haproxy`, value: round2(rv / hv), target: NaN, met: null, unit: 'x' });
    const tv = two?.[key];
    if (sv !== undefined && tv !== undefined) out.push({ proto, what: `forwarded ${key} vs sidecar`, value: round2(tv / sv), target: 0.8, met: tv / sv >= 0.8, unit: 'x' });
    // Informational: what a second hop costs the reference proxy on this machine (the baseline for
    // the line above: four processes share the cores instead of three).
    const h2v = s.get('haproxy2')?.[key];
    if (hv !== undefined && h2v !== undefined) out.push({ proto, what: `haproxy x2 ${key} vs haproxy`, value: round2(h2v / hv), target: NaN, met: null, unit: 'x' });
    const n2v = s.get('node2')?.[key];
    if (nv !== undefined && n2v !== undefined) out.push({ proto, what: `bare Node x2 ${key} vs bare Node`, value: round2(n2v / nv), target: NaN, met: null, unit: 'x' });
    const r2v = s.get('nodetcp2')?.[key];
    if (rv !== undefined && r2v !== undefined) out.push({ proto, what: `Node TCP relay x2 ${key} vs Node TCP relay`, value: round2(r2v / rv), target: NaN, met: null, unit: 'x' });
  }
  // Informational: the hop's CPU per open, whoever shares the cores: the sidecar's against HAProxy's
  // and the bare Node proxy's, and what the forwarded path's two sidecars run against the local one.
  for (const key of ['cpu_c1', 'cpu_c64'] as const) {
    const sv = one?.[key];
    if (sv === undefined) continue;
    for (const [other, label] of [['haproxy', 'haproxy'], ['node', 'bare Node proxy']] as const) {
      const ov = s.get(other)?.[key];
      if (ov !== undefined) out.push({ proto, what: `sidecar ${key} per open vs ${label} (times its CPU)`, value: round2(sv / ov), target: NaN, met: null, unit: 'x' });
    }
    const tv = two?.[key];
    if (tv !== undefined) out.push({ proto, what: `forwarded ${key} per open vs sidecar (both sidecars)`, value: round2(tv / sv), target: NaN, met: null, unit: 'x' });
  }
  if (d?.rtt_p50 !== undefined && h?.rtt_p50 !== undefined && one?.rtt_p50 !== undefined) {
    const addedH = h.rtt_p50 - d.rtt_p50;
    const addedS = one.rtt_p50 - d.rtt_p50;
    out.push({ proto, what: 'sidecar added RTT p50 minus haproxy added RTT p50', value: round1(addedS - addedH), target: 50, met: addedS - addedH <= 50, unit: 'us' });
  }
  if (one?.rtt_p50 !== undefined && two?.rtt_p50 !== undefined && d?.rtt_p50 !== undefined) {
    out.push({ proto, what: 'forwarded added RTT p50 vs sidecar added (second hop cost)', value: round1(two.rtt_p50 - one.rtt_p50), target: NaN, met: null, unit: 'us' });
  }
  return out;
}

async function main(): Promise<number> {
  const paths = envList('BENCH_PATHS', ALL_PATHS);
  const hv = haproxyVersion();
  let runPaths = paths;
  if (!hv && (paths.includes('haproxy') || paths.includes('haproxy2'))) {
    console.log('haproxy is not on PATH: the HAProxy columns are skipped (apt-get install -y haproxy to include them)');
    runPaths = paths.filter((p) => p !== 'haproxy' && p !== 'haproxy2');
  }
  const needSidecars = runPaths.includes('sidecar') || runPaths.includes('sidecar2');

  // Each proxy process in a budget of its own (BENCH_CPU_BUDGET), made before anything starts so that
  // a machine without cgroups stops the run at once.
  const budgets: CpuBudget[] = [];
  let budget: ((name: string, pid: number) => void) | undefined;
  if (CPU_BUDGET !== undefined) {
    const groups = cpuBudgets();
    cleanups.push({ what: 'cpu budget groups', run: async () => groups.close() });
    budget = (name, pid) => {
      const b = groups.make(name, CPU_BUDGET);
      b.add(pid);
      budgets.push(b);
    };
  }

  // One gateway port per client of it (direct, HAProxy, owner sidecar, ingress sidecar): see fake-gateway.ts.
  const gw: ManagedProcess = await startProcess('fake-gateway', [...tsEntry('bench/lib/fake-gateway-main.ts'), '--extra-ports', '4']);
  cleanups.push({ what: 'fake gateway', run: () => gw.kill('SIGTERM') });
  const [gatewayPort, haproxyGatewayPort, ownerGatewayPort, ingressGatewayPort, nodeGatewayPort] = gw.ready.ports as [number, number, number, number, number];

  let haproxy: Haproxy | undefined;
  let haproxy2: Haproxy | undefined;
  if (runPaths.includes('haproxy') || runPaths.includes('haproxy2')) {
    const nb = process.env.BENCH_HAPROXY_NBTHREAD ? envInt('BENCH_HAPROXY_NBTHREAD', 1) : undefined;
    const opts = { windowBytes: WINDOW_BYTES, ...(nb ? { nbthread: nb } : {}) };
    haproxy = await startHaproxy(haproxyGatewayPort, opts);
    cleanups.push({ what: 'haproxy', run: () => haproxy!.close() });
    budget?.('haproxy', haproxy.pid);
    // Its own process in front of the first, as an ingress sidecar is in front of the owner's.
    if (runPaths.includes('haproxy2')) {
      haproxy2 = await startHaproxy(haproxy, opts);
      cleanups.push({ what: 'haproxy x2', run: () => haproxy2!.close() });
      budget?.('haproxy2', haproxy2.pid);
    }
  }

  let nodeProxyPorts: [number, number, number] | undefined;
  let node2ProxyPorts: [number, number, number] | undefined;
  const nodePids: { one?: number; two?: number } = {};
  if (runPaths.some((p) => p === 'node' || p === 'nodetcp' || p === 'node2' || p === 'nodetcp2')) {
    const [nodeBin, ...tsArgs] = tsEntry('bench/lib/node-proxy-main.ts');
    const entry = process.env.BENCH_NODE_TUNED === '1' ? [...tsArgs, '--tuned'] : tsArgs;
    // Named by Node (pid and thread): tsx's loader thread writes a profile of its own.
    const prof = CPU_PROF_DIR ? ['--cpu-prof', '--cpu-prof-dir', CPU_PROF_DIR] : [];
    const nodeArgs = process.env.BENCH_NODE_NODE_ARGS?.split(' ').filter(Boolean) ?? [];
    const np = await startProcess('node-proxy', [nodeBin!, ...nodeArgs, ...prof, ...entry, '--gateway-port', String(nodeGatewayPort)], { echo: nodeArgs.length > 0 });
    cleanups.push({ what: 'bare node proxy', run: () => np.kill('SIGTERM') });
    budget?.('node', np.ready.pid);
    nodePids.one = np.ready.pid;
    nodeProxyPorts = np.ready.ports as [number, number, number];
    if (runPaths.includes('node2') || runPaths.includes('nodetcp2')) {
      // The first hop of two, in front of the one above as an ingress sidecar is in front of the owner's.
      const via = ['--via-port', String(nodeProxyPorts[1]), '--tcp-via-port', String(nodeProxyPorts[2])];
      const np2 = await startProcess('node-proxy-x2', [nodeBin!, ...nodeArgs, ...prof, ...entry, '--gateway-port', String(nodeGatewayPort), ...via], { echo: nodeArgs.length > 0 });
      cleanups.push({ what: 'bare node proxy x2', run: () => np2.kill('SIGTERM') });
      budget?.('node2', np2.ready.pid);
      nodePids.two = np2.ready.pid;
      node2ProxyPorts = np2.ready.ports as [number, number, number];
    }
  }

  const sandboxId = 'bench-sandbox-0001';
  let token = 'bench-token';
  const sidecars: { owner?: BenchSidecar; ingress?: BenchSidecar } = {};
  if (needSidecars) {
    const db = await createTestDatabase('bench_proxy');
    cleanups.push({ what: 'database', run: () => db.drop() });
    // The gateway's own tables, so that tokens are valid ones and limit slots are really taken.
    const store = new GatewayStore(db.url);
    cleanups.push({ what: 'gateway store', run: () => store.close() });
    await store.migrate();
    await store.createSandbox({ id: sandboxId });
    token = (await store.createSshSession(sandboxId, 3600)).token;
    const common = {
      databaseUrl: db.url,
      redisUrl: TEST_REDIS_URL,
      redisKeyPrefix: testRedisPrefix('bench-proxy'),
      peerSecret: PEER_SECRET,
      // Limits stay on (slots taken in Redis per tunnel), high enough for 64 concurrent opens.
      extraArgs: ['--ssh-tunnels-per-token', '100000', '--ssh-tunnels-per-sandbox', '100000', ...(process.env.BENCH_SIDECAR_ARGS?.split(' ').filter(Boolean) ?? [])],
      ...(CPU_PROF_DIR ? { cpuProfDir: CPU_PROF_DIR } : {}),
      ...(process.env.BENCH_SIDECAR_NODE_ARGS ? { nodeArgs: process.env.BENCH_SIDECAR_NODE_ARGS.split(' ').filter(Boolean) } : {}),
      echo: process.env.BENCH_SIDECAR_ECHO === '1',
    };
    const [owner, ingress] = await Promise.all([
      startBenchSidecar('owner', { ...common, gatewayPort: ownerGatewayPort }),
      startBenchSidecar('ingress', { ...common, gatewayPort: ingressGatewayPort }),
    ]);
    sidecars.owner = owner;
    sidecars.ingress = ingress;
    budget?.('sidecar-owner', owner.proc.ready.pid);
    budget?.('sidecar-ingress', ingress.proc.ready.pid);
    // Stopped gracefully (profiles are written on exit) before the database goes.
    cleanups.push({ what: 'sidecars', run: () => Promise.all([owner.stop(), ingress.stop()]) });
    const sup = await holdSupervisor(owner.publicPort, sandboxId);
    cleanups.push({ what: 'supervisor', run: async () => sup.close() });
    await waitForOwner(db.url, sandboxId, 'owner');
  }
  if (CPU_BUDGET !== undefined) console.log(`[${elapsed()}] each proxy process held to ${CPU_BUDGET} core (${budgets.map((b) => b.name).join(', ')})`);
  console.log(
    `[${elapsed()}] up: fake gateway :${gatewayPort}` +
      (haproxy ? `, haproxy ${haproxy.version} :${haproxy.tcpPort} (tcp) :${haproxy.h2Port} (h2)` : '') +
      (nodeProxyPorts ? `, bare node proxy :${nodeProxyPorts[0]} (CONNECT) :${nodeProxyPorts[1]} (h2) :${nodeProxyPorts[2]} (TCP relay)` : '') +
      (needSidecars ? `, sidecars ${sidecarEntry().what} (owner :${sidecars.owner!.publicPort}, ingress :${sidecars.ingress!.publicPort}), sandbox owned by 'owner'` : ''),
  );

  const portOf = (proto: Proto, path: PathName): number => {
    if (path === 'direct') return gatewayPort;
    if (path === 'haproxy') return proto === 'connect' ? haproxy!.tcpPort : haproxy!.h2Port;
    if (path === 'haproxy2') return proto === 'connect' ? haproxy2!.tcpPort : haproxy2!.h2Port;
    if (path === 'node') return nodeProxyPorts![proto === 'connect' ? 0 : 1];
    if (path === 'nodetcp') return nodeProxyPorts![2];
    if (path === 'nodetcp2') return node2ProxyPorts![2];
    if (path === 'node2') return node2ProxyPorts![proto === 'connect' ? 0 : 1];
    if (path === 'sidecar') return sidecars.owner!.publicPort;
    return sidecars.ingress!.publicPort;
  };
  // Each hop of a chained path is its own process, in front of the single path's one.
  const pidsOf = (path: PathName): number[] => {
    switch (path) {
      case 'direct':
        return [];
      case 'haproxy':
        return [haproxy!.pid];
      case 'haproxy2':
        return [haproxy2!.pid, haproxy!.pid];
      case 'node':
      case 'nodetcp':
        return [nodePids.one!];
      case 'node2':
      case 'nodetcp2':
        return [nodePids.two!, nodePids.one!];
      case 'sidecar':
        return [sidecars.owner!.proc.ready.pid];
      case 'sidecar2':
        return [sidecars.ingress!.proc.ready.pid, sidecars.owner!.proc.ready.pid];
    }
  };
  const rigs = new Map<string, PathRig>();
  for (const proto of PROTOS) for (const path of runPaths) rigs.set(`${proto}/${path}`, { ep: { proto, port: portOf(proto, path), sandboxId, token }, pids: pidsOf(path) });
  cleanups.push({ what: 'client sessions', run: async () => rigs.forEach((r) => r.session?.destroy()) });

  // Warm-up: every path once (JIT, pools, caches), results dropped.
  for (const [key, rig] of rigs) {
    await measureRtt(rig);
    await measureOpens(rig, 8);
    console.log(`[${elapsed()}] warmed up ${key}`);
  }

  const samples = new Map<string, Sample[]>();
  const failures = new Map<string, string>();
  for (let round = 0; round < ROUNDS; round++) {
    for (const proto of PROTOS) {
      for (const metric of METRICS) {
        const order = runPaths.map((_, i) => runPaths[(i + round) % runPaths.length]!);
        for (const path of order) {
          const key = `${proto}/${path}`;
          let s: Sample;
          if (PAUSE_MS > 0) await new Promise((r) => setTimeout(r, PAUSE_MS));
          try {
            s = await measure(rigs.get(key)!, metric);
          } catch (err) {
            const msg = `round ${round + 1} ${metric}: ${(err as Error).message}`;
            failures.set(`${key}/${metric}`, msg);
            console.log(`[${elapsed()}] ${key} FAILED ${msg}`);
            for (const sc of [sidecars.owner, sidecars.ingress]) {
              const lines = sc?.proc.output.filter((l) => /"level":"(warn|error|fatal)"/.test(l)).slice(-5) ?? [];
              for (const l of lines) console.log(`    [${sc!.name}] ${l}`);
            }
            continue;
          }
          const list = samples.get(key) ?? [];
          Object.assign((list[round] ??= {}), s);
          samples.set(key, list);
          console.log(`[${elapsed()}] round ${round + 1} ${proto.padEnd(7)} ${metric.padEnd(9)} ${path.padEnd(8)} ${Object.entries(s).map(([k, v]) => `${k} ${fmt(v)}`).join('  ')}`);
        }
      }
    }
  }

  const results: Record<string, BenchResult> = {};
  const targets: TargetCheck[] = [];
  const tables: Record<string, Record<string, Record<string, number>>> = {};
  for (const proto of PROTOS) {
    const summary = new Map<PathName, Sample>();
    for (const path of runPaths) {
      const list = samples.get(`${proto}/${path}`) ?? [];
      const s: Sample = {};
      for (const c of COLUMNS) {
        const vals = list.map((x) => x?.[c.key]).filter((v): v is number => v !== undefined);
        if (vals.length > 0) s[c.key] = median(vals);
      }
      summary.set(path, s);
    }
    printTable(proto, summary, runPaths);
    targets.push(...checkTargets(proto, summary));
    const direct = summary.get('direct');
    tables[proto] = {};
    for (const path of runPaths) {
      const s = summary.get(path)!;
      tables[proto]![path] = Object.fromEntries(Object.entries(s).map(([k, v]) => [k, round1(v)]));
      for (const c of COLUMNS) {
        const v = s[c.key as ColumnKey];
        if (v === undefined) continue;
        const base = `proxy_${proto}_${c.key}`;
        // CPU per open has no direct figure (no proxy there): it is read against HAProxy's.
        const baseline = path === 'direct' ? 'direct' : c.key.startsWith('cpu_') ? `${base}_haproxy` : `${base}_direct`;
        results[`${base}_${path}`] = { value: round1(v), unit: c.unit, baseline };
        const d = direct?.[c.key as ColumnKey];
        if (path !== 'direct' && d !== undefined) {
          results[`${base}_${path}_ratio`] = { value: round2(v / d), unit: 'x', baseline: `${base}_direct` };
        }
      }
    }
  }
  const throttling = Object.fromEntries(
    budgets.map((b) => {
      const st = b.stats();
      return [b.name, { cores: b.cores, periods: st.periods, throttled_periods: st.throttled, throttled_ms: Math.round(st.throttledMs) }];
    }),
  );
  if (budgets.length > 0) {
    console.log(`\nCPU budgets (${CPU_BUDGET} core each): periods that ran out of quota, whole run`);
    for (const [name, t] of Object.entries(throttling)) console.log(`  ${name.padEnd(16)} ${t.throttled_periods} of ${t.periods} periods, ${t.throttled_ms} ms throttled`);
  }
  if (targets.length > 0) {
    console.log(`\nissue 13 targets (this run${CPU_BUDGET === undefined ? '' : `, each proxy held to ${CPU_BUDGET} core`}):`);
    for (const t of targets) {
      const goal = Number.isNaN(t.target) ? '' : t.unit === 'x' ? ` (target >= ${t.target}x)` : ` (target <= ${t.target} us)`;
      console.log(`  ${Number.isNaN(t.target) ? 'info' : t.met ? 'met ' : 'MISS'}  ${t.proto.padEnd(7)} ${t.what}: ${t.value}${t.unit === 'x' ? 'x' : ' us'}${goal}`);
    }
  }
  await mergeResults(results, {
    proxy_bench: {
      label: process.env.BENCH_LABEL ?? null,
      cpu_budget: CPU_BUDGET === undefined ? null : { cores_per_proxy_process: CPU_BUDGET, throttling },
      haproxy: hv ?? 'not installed (columns skipped)',
      haproxy_config: haproxy ? { nbthread: process.env.BENCH_HAPROXY_NBTHREAD ?? 'default (one per core)', h2_initial_window_bytes: WINDOW_BYTES } : null,
      sidecar: {
        version: VERSION,
        entry: needSidecars ? sidecarEntry().what : null,
        mode: 'cluster (Postgres + Redis), limits on, log level info',
        extra_args: process.env.BENCH_SIDECAR_ARGS ?? '',
      },
      rounds: ROUNDS,
      rtt_round_trips: RTT_N,
      rtt_message_bytes: { connect: PING_BYTES.connect.length, grpc: PING_BYTES.grpc.length },
      bulk_bytes: BULK_BYTES,
      opens_window_ms: OPEN_MS,
      opens_max: OPEN_MAX,
      paths: PATH_LABEL,
      medians: tables,
      targets,
      ...(failures.size > 0 ? { failures: Object.fromEntries(failures) } : {}),
    },
  }, OUT_FILE);
  console.log(`\nwrote ${OUT_FILE} [${elapsed()}]`);
  if (failures.size > 0) {
    console.error(`failed measurements: ${[...failures.keys()].join(', ')}`);
    return 1;
  }
  return 0;
}

let code = 1;
try {
  code = await main();
} catch (err) {
  console.error(`proxy bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
} finally {
  await cleanups.runAll();
}
process.exit(code);
