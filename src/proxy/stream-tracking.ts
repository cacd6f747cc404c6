// Per-stream accounting shared by every forwarding path: active gauge, outcome counter, duration.
import type { TrafficClass } from '../classify/classify.ts';
import type { ProxyContext } from './context.ts';

export function track(ctx: ProxyContext, cls: TrafficClass, target: 'local' | 'peer'): (outcome: string) => void {
  const start = process.hrtime.bigint();
  ctx.metrics.activeStreams.inc({ class: cls, target });
  let ended = false;
  return (outcome) => {
    if (ended) return;
    ended = true;
    ctx.metrics.activeStreams.dec({ class: cls, target });
    ctx.metrics.requestsTotal.inc({ class: cls, target, outcome });
    ctx.metrics.requestDurationSeconds.observe({ class: cls, target }, Number(process.hrtime.bigint() - start) / 1e9);
  };
}
