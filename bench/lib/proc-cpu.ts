// CPU time a process has run, all its threads, user and kernel, in nanoseconds: the sum of the first
// field of /proc/PID/task/*/schedstat (the scheduler's own account, not clock ticks). What one proxy
// hop costs in CPU, whoever else shares the cores. Linux only: NaN elsewhere or once the process is gone.
import { readFileSync, readdirSync } from 'node:fs';

export function processCpuNs(pid: number): number {
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return NaN;
  }
  let sum = 0;
  for (const tid of tasks) {
    try {
      sum += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // A thread that ended between the listing and the read: its time is gone from the sum, as
      // from the process's (a few µs at most for Node's and HAProxy's short-lived threads).
    }
  }
  return sum;
}

/** The CPU the given processes ran together, in nanoseconds. */
export const processesCpuNs = (pids: readonly number[]): number => pids.reduce((sum, pid) => sum + processCpuNs(pid), 0);
