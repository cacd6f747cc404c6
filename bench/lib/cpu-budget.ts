// A process held to a CPU budget of its own, as a pod's container is under `resources.limits.cpu`:
// a cgroup with a CFS quota (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us`). On this 2-core machine
// every process of a bench shares both cores, so a second proxy hop takes its CPU from the client,
// the gateway and the first hop; in a cluster it runs on the owner pod's own budget. Linux and root
// only: without them `cpuBudgets` says why and the bench stops.
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const PERIOD_US = 100_000;

export interface CpuBudgetStats {
  /** CFS periods the group ran in, and those it ran out of quota in. */
  periods: number;
  throttled: number;
  throttledMs: number;
}

export interface CpuBudget {
  readonly name: string;
  readonly cores: number;
  /** Moves a process (all its threads) into the budget. */
  add(pid: number): void;
  stats(): CpuBudgetStats;
}

interface Layout {
  kind: 'v2' | 'v1';
  /** The directory the bench's groups are made in. */
  root: string;
}

function findLayout(): Layout | string {
  if (process.platform !== 'linux') return 'CPU budgets need Linux cgroups';
  const unified = '/sys/fs/cgroup';
  if (existsSync(join(unified, 'cgroup.controllers'))) {
    const controllers = readFileSync(join(unified, 'cgroup.controllers'), 'utf8').split(/\s+/);
    if (!controllers.includes('cpu')) return 'cgroup v2 without the cpu controller';
    return { kind: 'v2', root: unified };
  }
  const v1 = join(unified, 'cpu');
  if (existsSync(join(v1, 'cpu.cfs_quota_us'))) return { kind: 'v1', root: v1 };
  return 'no cgroup cpu controller mounted (v2 cgroup.controllers or v1 cpu/cpu.cfs_quota_us)';
}

function parseStat(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    const [k, v] = line.split(' ');
    if (k && v) out.set(k, Number(v));
  }
  return out;
}

/**
 * A parent group `ohs-bench-<pid>` and one group per budget under it; `close()` removes them (the
 * processes in them must have exited). Throws, saying why, where budgets cannot be made.
 */
export function cpuBudgets(): { make(name: string, cores: number): CpuBudget; close(): void } {
  const layout = findLayout();
  if (typeof layout === 'string') throw new Error(`BENCH_CPU_BUDGET: ${layout}`);
  const parent = join(layout.root, `ohs-bench-${process.pid}`);
  try {
    mkdirSync(parent);
    if (layout.kind === 'v2') writeFileSync(join(parent, 'cgroup.subtree_control'), '+cpu');
  } catch (err) {
    throw new Error(`BENCH_CPU_BUDGET: cannot make ${parent} (${(err as Error).message}; needs root)`);
  }
  const made: string[] = [];
  return {
    make(name: string, cores: number): CpuBudget {
      if (!(cores > 0)) throw new Error(`BENCH_CPU_BUDGET: ${cores} is not a number of cores above 0`);
      const dir = join(parent, name);
      mkdirSync(dir);
      made.push(dir);
      const quota = Math.round(cores * PERIOD_US);
      if (layout.kind === 'v2') writeFileSync(join(dir, 'cpu.max'), `${quota} ${PERIOD_US}`);
      else {
        writeFileSync(join(dir, 'cpu.cfs_period_us'), String(PERIOD_US));
        writeFileSync(join(dir, 'cpu.cfs_quota_us'), String(quota));
      }
      return {
        name,
        cores,
        add(pid: number): void {
          writeFileSync(join(dir, 'cgroup.procs'), String(pid));
        },
        stats(): CpuBudgetStats {
          const s = parseStat(readFileSync(join(dir, 'cpu.stat'), 'utf8'));
          return layout.kind === 'v2'
            ? { periods: s.get('nr_periods') ?? 0, throttled: s.get('nr_throttled') ?? 0, throttledMs: (s.get('throttled_usec') ?? 0) / 1000 }
            : { periods: s.get('nr_periods') ?? 0, throttled: s.get('nr_throttled') ?? 0, throttledMs: (s.get('throttled_time') ?? 0) / 1e6 };
        },
      };
    },
    close(): void {
      for (const dir of [...made.reverse(), parent]) {
        try {
          rmdirSync(dir);
        } catch {
          // Still holds a process that has not exited: left for the operator, named in the log.
          console.log(`cpu budget group ${dir} not removed (a process in it is still running)`);
        }
      }
    },
  };
}
