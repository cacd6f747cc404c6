// Prints the per-target case counts of a `make fuzz` run (lines written by test/fuzz/support.ts).
import { readFileSync } from 'node:fs';

const file = process.argv[2] ?? '.fuzz-report.jsonl';
const rows = readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
const width = Math.max(...rows.map((r) => `${r.file}: ${r.target}`.length));
let total = 0;
let min = Infinity;
for (const r of rows.sort((a, b) => `${a.file}${a.target}`.localeCompare(`${b.file}${b.target}`))) {
  total += r.cases;
  min = Math.min(min, r.cases);
  console.log(`${`${r.file}: ${r.target}`.padEnd(width)}  ${r.cases.toLocaleString('en-US').padStart(11)}`);
}
console.log(`${rows.length} targets, ${total.toLocaleString('en-US')} cases in all, fewest per target ${min.toLocaleString('en-US')}`);
