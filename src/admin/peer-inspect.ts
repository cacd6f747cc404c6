// The peer side of `status`, `explain` and the live page: another replica's sidecar (or the CLI,
// holding the peer secret) asks this replica for its runtime numbers and, for one sandbox, its own
// view and decision. Read-only; authenticated and hop-checked by the peer listener before it gets here.
import type http2 from 'node:http2';
import { replicaRuntime, sandboxLocalView, type InspectDeps, type ReplicaRuntime, type SandboxLocalView } from './inspect.ts';

export const PEER_INSPECT_PATH = '/ohs/v1/inspect';

export interface PeerInspectAnswer {
  runtime: ReplicaRuntime;
  sandbox?: SandboxLocalView;
}

export function isPeerInspect(headers: http2.IncomingHttpHeaders): boolean {
  return headers[':method'] === 'GET' && String(headers[':path'] ?? '').split('?')[0] === PEER_INSPECT_PATH;
}

export async function handlePeerInspect(deps: InspectDeps | undefined, stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): Promise<void> {
  if (!deps) {
    if (!stream.destroyed) stream.respond({ ':status': 404 }, { endStream: true });
    return;
  }
  const url = new URL(String(headers[':path'] ?? '/'), 'http://peer');
  const sandboxId = url.searchParams.get('sandbox');
  const answer: PeerInspectAnswer = { runtime: await replicaRuntime(deps) };
  if (sandboxId) answer.sandbox = await sandboxLocalView(deps, sandboxId);
  if (stream.destroyed) return;
  stream.respond({ ':status': 200, 'content-type': 'application/json' });
  stream.end(JSON.stringify(answer));
}
