// `openshell-ha-sidecar explain SANDBOX`: why a request for the sandbox goes where it goes, layer by
// layer and replica by replica. SANDBOX is an id, a name (workspace `default`) or workspace/name.
import { collectExplanation, type Explanation } from '../admin/explain.ts';
import { renderExplanation } from './format.ts';
import { adminUrl, directSources, getAdminJson, parseCli } from './sources.ts';

export const EXPLAIN_USAGE = `usage: openshell-ha-sidecar explain SANDBOX [--json] [--admin http://HOST:PORT] [--admin-token TOKEN]
       openshell-ha-sidecar explain SANDBOX [--json] --database-url URL [--redis-url URL] [--peer-secret-file FILE]
SANDBOX: an id, a name (workspace "default") or workspace/name.`;

export async function runExplain(argv: string[], env: NodeJS.ProcessEnv = process.env, write = (s: string) => process.stdout.write(s)): Promise<number> {
  let parsed;
  try {
    parsed = parseCli(argv);
  } catch (err) {
    process.stderr.write(`explain: ${(err as Error).message}\n${EXPLAIN_USAGE}\n`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    write(`${EXPLAIN_USAGE}\n`);
    return 0;
  }
  const query = positionals[0];
  if (!query || positionals.length > 1) {
    process.stderr.write(`${EXPLAIN_USAGE}\n`);
    return 2;
  }
  const timeoutMs = Number(values['timeout-ms'] ?? 10_000);
  let explanation: Explanation;
  try {
    if (values['database-url']) {
      const direct = directSources(values, env);
      try {
        explanation = await collectExplanation(query, direct.explain);
      } finally {
        await direct.close();
      }
    } else {
      const base = adminUrl(values, env);
      const res = await getAdminJson<Explanation & { error?: string }>(base, `/v1/explain?sandbox=${encodeURIComponent(query)}`, values['admin-token'] ?? env.OHS_ADMIN_TOKEN, timeoutMs);
      if (res.status !== 200) throw new Error(`${base} answered ${res.status}: ${res.body.error ?? ''}`);
      explanation = res.body;
    }
  } catch (err) {
    process.stderr.write(`explain: ${(err as Error).message}\n`);
    return 2;
  }
  write(values.json ? `${JSON.stringify(explanation, null, 2)}\n` : renderExplanation(explanation));
  return 0;
}
