// Asks one replica's peer port for its view (PEER_INSPECT_PATH). A connection of its own per call:
// status and explain are rare, and must not queue behind (or disturb) pooled traffic sessions.
import http2 from 'node:http2';
import type tls from 'node:tls';
import { withPeerHeaders } from '../peers/protocol.ts';
import { PEER_INSPECT_PATH, type PeerInspectAnswer } from './peer-inspect.ts';

export interface PeerInspectRequest {
  peerUrl: string;
  secret: string;
  /** Who asks (a replica id, or `cli`). */
  origin: string;
  sandboxId?: string;
  timeoutMs?: number;
  /** Peer mTLS: this sidecar's client certificate and the peers' CA (https:// peer URLs). */
  tls?: () => tls.ConnectionOptions;
}

export function fetchPeerView(req: PeerInspectRequest): Promise<PeerInspectAnswer> {
  const timeoutMs = req.timeoutMs ?? 2_000;
  return new Promise((resolve, reject) => {
    let done = false;
    const session = http2.connect(req.peerUrl, req.tls?.() ?? {});
    const finish = (err: Error | null, value?: PeerInspectAnswer): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      session.close();
      session.destroy();
      if (err) reject(err);
      else resolve(value as PeerInspectAnswer);
    };
    const timer = setTimeout(() => finish(new Error(`no answer from ${req.peerUrl} within ${timeoutMs} ms`)), timeoutMs);
    timer.unref();
    session.on('error', (err) => finish(err));
    const path = req.sandboxId ? `${PEER_INSPECT_PATH}?sandbox=${encodeURIComponent(req.sandboxId)}` : PEER_INSPECT_PATH;
    let stream: http2.ClientHttp2Stream;
    try {
      stream = session.request(
        // The peer listener checks these on every stream; the sandbox header is only a label here.
        withPeerHeaders({ ':method': 'GET', ':path': path }, { secret: req.secret, origin: req.origin, sandboxId: req.sandboxId ?? '-', epoch: 0, cls: 'inspect', hop: 1 }),
        { endStream: true },
      );
    } catch (err) {
      finish(err as Error);
      return;
    }
    const chunks: Buffer[] = [];
    let status = 0;
    stream.on('response', (h) => {
      status = Number(h[':status']);
    });
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('error', (err) => finish(err));
    stream.on('end', () => {
      if (status !== 200) return finish(new Error(`${req.peerUrl} answered ${status}${status === 401 ? ' (wrong peer secret or certificate)' : ''}`));
      try {
        finish(null, JSON.parse(Buffer.concat(chunks).toString('utf8')) as PeerInspectAnswer);
      } catch (err) {
        finish(err as Error);
      }
    });
  });
}
