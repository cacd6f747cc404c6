// Top self-time functions of a V8 .cpuprofile (node --cpu-prof), as a Markdown table.
// Usage: node scripts/cpu-profile-summary.mjs FILE.cpuprofile [TOP=20]
import { readFileSync } from 'node:fs';

const [file, topArg] = process.argv.slice(2);
if (!file) {
  console.error('usage: node scripts/cpu-profile-summary.mjs FILE.cpuprofile [TOP]');
  process.exit(2);
}
const top = Number(topArg ?? 20);
const prof = JSON.parse(readFileSync(file, 'utf8'));
const byId = new Map(prof.nodes.map((n) => [n.id, n]));
const selfUs = new Map();
// timeDeltas[i] is the time before samples[i]; attribute it to that sample's node.
for (let i = 0; i < prof.samples.length; i++) {
  const id = prof.samples[i];
  selfUs.set(id, (selfUs.get(id) ?? 0) + (prof.timeDeltas[i] ?? 0));
}
const total = [...selfUs.values()].reduce((a, b) => a + b, 0);
const byFn = new Map();
let idle = 0;
for (const [id, us] of selfUs) {
  const cf = byId.get(id).callFrame;
  const name = cf.functionName || '(anonymous)';
  if (name === '(idle)') {
    idle += us;
    continue;
  }
  const where = cf.url ? `${cf.url.replace(/^.*\/(dist|src|node_modules)\//, '$1/').replace(/^node:/, 'node:')}:${cf.lineNumber + 1}` : '';
  const key = `${name} ${where}`.trim();
  byFn.set(key, (byFn.get(key) ?? 0) + us);
}
const busy = total - idle;
console.log(`profile ${file}: ${(total / 1e6).toFixed(1)} s sampled, ${(busy / 1e6).toFixed(1)} s busy (${((100 * busy) / total).toFixed(0)}%)`);
console.log('| self % of busy | self ms | function |');
console.log('|---:|---:|---|');
for (const [key, us] of [...byFn].sort((a, b) => b[1] - a[1]).slice(0, top)) {
  console.log(`| ${((100 * us) / busy).toFixed(1)} | ${(us / 1000).toFixed(0)} | \`${key}\` |`);
}
