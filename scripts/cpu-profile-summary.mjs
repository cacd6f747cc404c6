// Top self-time functions of a V8 .cpuprofile (node --cpu-prof), as a Markdown table.
// Usage: node scripts/cpu-profile-summary.mjs FILE.cpuprofile [TOP=20] [options]
//   --window A:B   only the samples taken between A and B seconds before the profile's end (the
//                  phase of a bench run that was measured, without start-up or the other paths)
//   --per N        also each row's self time divided by N (e.g. the opens made in that window), in µs
//   --by-origin    rows by where the code is (the sidecar, Node's library, each npm package, native)
//                  instead of by function
import { readFileSync } from 'node:fs';

const args = process.argv.slice(2);
const option = (name) => {
  const i = args.indexOf(name);
  if (i < 0) return undefined;
  const value = args[i + 1];
  args.splice(i, 2);
  return value;
};
const windowArg = option('--window');
const perArg = option('--per');
const byOrigin = args.includes('--by-origin');
if (byOrigin) args.splice(args.indexOf('--by-origin'), 1);
const [file, topArg] = args;
const window = windowArg?.split(':').map(Number);
const per = perArg === undefined ? undefined : Number(perArg);
if (!file || (window && (window.length !== 2 || window.some((x) => !(x >= 0)) || window[0] < window[1])) || (per !== undefined && !(per > 0))) {
  console.error('usage: node scripts/cpu-profile-summary.mjs FILE.cpuprofile [TOP] [--window FROM:TO seconds before the end, FROM >= TO] [--per N] [--by-origin]');
  process.exit(2);
}
const top = Number(topArg ?? 20);
const prof = JSON.parse(readFileSync(file, 'utf8'));
const byId = new Map(prof.nodes.map((n) => [n.id, n]));
const selfUs = new Map();
// timeDeltas[i] is the time before samples[i]; attribute it to that sample's node.
let at = prof.startTime;
for (let i = 0; i < prof.samples.length; i++) {
  at += prof.timeDeltas[i] ?? 0;
  if (window) {
    const age = (prof.endTime - at) / 1e6;
    if (age > window[0] || age < window[1]) continue;
  }
  const id = prof.samples[i];
  selfUs.set(id, (selfUs.get(id) ?? 0) + (prof.timeDeltas[i] ?? 0));
}

/** Where a frame's code lives: what --by-origin groups by. */
function origin(cf) {
  const url = cf.url ?? '';
  if (url.startsWith('node:')) return "Node's library (node:*)";
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(url)?.[1];
  if (pkg) return `npm: ${pkg}`;
  if (/\/(dist|src)\//.test(url)) return 'the sidecar (dist/, src/)';
  if (url !== '') return url;
  return cf.functionName.startsWith('(') ? cf.functionName : `native: ${cf.functionName || '(anonymous)'}`;
}

const total = [...selfUs.values()].reduce((a, b) => a + b, 0);
const rows = new Map();
let idle = 0;
for (const [id, us] of selfUs) {
  const cf = byId.get(id).callFrame;
  const name = cf.functionName || '(anonymous)';
  if (name === '(idle)') {
    idle += us;
    continue;
  }
  const where = cf.url ? `${cf.url.replace(/^.*\/(dist|src|node_modules)\//, '$1/').replace(/^node:/, 'node:')}:${cf.lineNumber + 1}` : '';
  const key = byOrigin ? origin(cf) : `${name} ${where}`.trim();
  rows.set(key, (rows.get(key) ?? 0) + us);
}
const busy = total - idle;
const span = window ? `, ${window[0]}-${window[1]} s before its end` : '';
console.log(`profile ${file}${span}: ${(total / 1e6).toFixed(1)} s sampled, ${(busy / 1e6).toFixed(1)} s busy (${((100 * busy) / total).toFixed(0)}%)${per ? `, ${(busy / per).toFixed(1)} µs busy per unit (of ${per})` : ''}`);
console.log(`| self % of busy | self ms |${per ? ' µs per unit |' : ''} ${byOrigin ? 'origin' : 'function'} |`);
console.log(`|---:|---:|${per ? '---:|' : ''}---|`);
for (const [key, us] of [...rows].sort((a, b) => b[1] - a[1]).slice(0, top)) {
  console.log(`| ${((100 * us) / busy).toFixed(1)} | ${(us / 1000).toFixed(0)} |${per ? ` ${(us / per).toFixed(2)} |` : ''} \`${key}\` |`);
}
