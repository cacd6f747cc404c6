// `openshell-ha-sidecar status`: the cluster as a table (or --json). Exit 0 healthy, 1 unhealthy
// (no live replica, a store down, an expired replica still owning sandboxes), 2 no answer at all.
import { collectStatus, type ClusterStatus } from '../admin/cluster-status.ts';
import { renderStatus } from './format.ts';
import { adminUrl, directSources, getAdminJson, parseCli } from './sources.ts';

export const STATUS_USAGE = `usage: openshell-ha-sidecar status [--json] [--admin http://HOST:PORT] [--admin-token TOKEN]
       openshell-ha-sidecar status [--json] --database-url URL [--redis-url URL] [--redis-key-prefix P]
                                   [--peer-secret-file FILE] [--gateway-database-url URL]
Without --database-url it asks one sidecar's admin port (default: this pod's, or 127.0.0.1:9091).
Exit status: 0 healthy, 1 unhealthy, 2 no answer.`;

export async function runStatus(argv: string[], env: NodeJS.ProcessEnv = process.env, write = (s: string) => process.stdout.write(s)): Promise<number> {
  let parsed;
  try {
    parsed = parseCli(argv);
  } catch (err) {
    process.stderr.write(`status: ${(err as Error).message}\n${STATUS_USAGE}\n`);
    return 2;
  }
  const { values } = parsed;
  if (values.help) {
    write(`${STATUS_USAGE}\n`);
    return 0;
  }
  const timeoutMs = Number(values['timeout-ms'] ?? 10_000);
  let status: ClusterStatus & { self?: string };
  try {
    if (values['database-url']) {
      const direct = directSources(values, env);
      try {
        status = await collectStatus(direct.status);
      } finally {
        await direct.close();
      }
    } else {
      const base = adminUrl(values, env);
      const res = await getAdminJson<ClusterStatus & { self?: string; error?: string }>(base, '/v1/status', values['admin-token'] ?? env.OHS_ADMIN_TOKEN, timeoutMs);
      if (res.status !== 200) throw new Error(`${base} answered ${res.status}: ${res.body.error ?? ''}`);
      status = res.body;
    }
  } catch (err) {
    process.stderr.write(`status: ${(err as Error).message}\n`);
    return 2;
  }
  write(values.json ? `${JSON.stringify(status, null, 2)}\n` : renderStatus(status));
  return status.healthy ? 0 : 1;
}
