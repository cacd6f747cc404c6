// Per-stream accounting shared by every forwarding path: active gauge, outcome counter, duration.
import type { TrafficClass } from '../classify/classify.ts';
import type { ProxyContext } from './context.ts';

export function track(ctx: ProxyContext, cls: TrafficClass, target: 'local' | 'peer'): (outcome: string) => void {
  const start = process.hrtime.bigint();
  const { metrics } = ctx;
  const active = metrics.activeStreams.cell(cls, target);
  active.inc();
  let ended = false;
  return (outcome) => {
    if (ended) return;
    ended = true;
    active.dec();
    metrics.requestsTotal.cell(cls, target, outcome).inc();
    metrics.requestDurationSeconds.cell(cls, target).observe(Number(process.hrtime.bigint() - start) / 1e9);
  };
}
