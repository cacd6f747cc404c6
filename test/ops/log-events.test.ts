// docs/operations.md lists the log events operators search for by their `msg`; each must still be
// logged by the code, verbatim (a `<word>` in the table stands for a value filled in at run time).
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

function sources(dir: string): string {
  return readdirSync(dir, { withFileTypes: true })
    .map((e) => (e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? readFileSync(join(dir, e.name), 'utf8') : ''))
    .join('\n');
}

describe('documented log events', () => {
  it('every msg in the operations table is logged by the sidecar', () => {
    const doc = readFileSync('docs/operations.md', 'utf8');
    const section = doc.slice(doc.indexOf('## Log events'));
    const msgs = [...section.matchAll(/^\| `([^`]+)` \| (?:info|warn|error) \|/gm)].map((m) => m[1] as string);
    expect(msgs.length).toBeGreaterThan(20);
    const src = sources('src');
    const missing = msgs.filter((msg) => {
      const pattern = msg
        .split(/<[a-z]+>/)
        .map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))
        .join('\\$\\{[^}]+\\}');
      return !new RegExp(`['\`]${pattern}['\`]`).test(src);
    });
    expect(missing).toEqual([]);
  });
});
