// The gateway ends its HTTP/2 connections mid-traffic (a graceful restart sends GOAWAY; a gateway
// may also refuse streams past a GOAWAY's last-stream-id). Before issue 10 a promise from
// session.request() on a GOAWAY'd session was never caught and there was no last-resort handler,
// so a gateway restart could take the sidecar down. Pass: the sidecar stays up, calls in flight
// finish on the old connection, calls after the GOAWAY go to a fresh one, calls the gateway refused
// unprocessed are sent again, and no internal error is counted.
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startProcess, sidecarCommand, type ManagedProcess } from '../../emulator/process.ts';
import { encodeMessage } from '../../emulator/proto.ts';
import { grpcFrame } from '../helpers/raw.ts';
import { metric, sleep, withTimeout } from './support.ts';

const EXEC = '/openshell.v1.OpenShell/ExecSandbox';
const SANDBOX = '3f1c2d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f';

/** A gRPC-speaking fake gateway: answers every call `holdMs` after its request ended, with status 0. */
class GoawayGateway {
  readonly server = http2.createServer();
  readonly sessions = new Set<http2.ServerHttp2Session>();
  connections = 0;
  answered = 0;
  /** Stream ids open per connection (for the refusing GOAWAY). */
  private readonly open = new WeakMap<http2.ServerHttp2Session, Set<number>>();
  /** Streams above this id on a session that sent a refusing GOAWAY are never answered. */
  private readonly refusedAbove = new WeakMap<http2.ServerHttp2Session, number>();

  constructor(private readonly holdMs: number) {
    this.server.on('session', (s) => {
      this.connections++;
      this.sessions.add(s);
      s.on('error', () => undefined);
      s.once('close', () => this.sessions.delete(s));
    });
    this.server.on('stream', (stream) => {
      stream.on('error', () => undefined);
      const ids = this.open.get(stream.session as http2.ServerHttp2Session) ?? new Set<number>();
      this.open.set(stream.session as http2.ServerHttp2Session, ids);
      ids.add(stream.id as number);
      stream.once('close', () => ids.delete(stream.id as number));
      stream.resume();
      stream.on('end', () => {
        setTimeout(() => {
          const limit = this.refusedAbove.get(stream.session as http2.ServerHttp2Session);
          if (stream.destroyed || (limit !== undefined && (stream.id ?? 0) > limit)) return;
          stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
          stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
          stream.end(grpcFrame(Buffer.from('ok')));
          this.answered++;
        }, this.holdMs);
      });
    });
  }

  async listen(): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return (this.server.address() as AddressInfo).port;
  }

  /** A graceful restart: GOAWAY on every connection, streams in flight still answered. */
  closeAllGracefully(): void {
    for (const s of this.sessions) s.close();
  }

  /** GOAWAY naming the lowest open stream as the last processed: the others are refused. */
  refuseAllButFirst(): number {
    let refused = 0;
    for (const s of this.sessions) {
      const ids = [...(this.open.get(s) ?? [])].sort((a, b) => a - b);
      const last = ids[0] ?? 0;
      refused += ids.length - (ids.length > 0 ? 1 : 0);
      this.refusedAbove.set(s, last);
      s.goaway(http2.constants.NGHTTP2_NO_ERROR, last);
    }
    return refused;
  }

  async close(): Promise<void> {
    for (const s of this.sessions) s.destroy();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

describe('GOAWAY from the gateway mid-traffic', () => {
  let gw: GoawayGateway;
  let sc: ManagedProcess;
  let port: number;
  let admin: number;

  beforeAll(async () => {
    gw = new GoawayGateway(1500);
    const gwPort = await gw.listen();
    sc = await startProcess('sidecar-goaway', [
      ...sidecarCommand(),
      '--listen', '127.0.0.1:0', '--peer-listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0',
      '--gateway', `http://127.0.0.1:${gwPort}`, '--replica-id', 'goaway', '--log-level', 'warn',
      // The sandbox has no owner in embedded mode: answer from the local gateway without holding.
      '--owner-wait-ms', '0',
    ]);
    port = sc.ready.listenPort as number;
    admin = sc.ready.adminPort as number;
  }, 60_000);

  afterAll(async () => {
    await sc?.kill('SIGKILL');
    await gw?.close();
  });

  /** One ExecSandbox call through the sidecar: its grpc-status, or the error. */
  function call(client: http2.ClientHttp2Session): Promise<string> {
    return new Promise((resolve) => {
      const req = client.request({ ':method': 'POST', ':path': EXEC, 'content-type': 'application/grpc', te: 'trailers' });
      let status = 'none';
      req.on('trailers', (t) => (status = String(t['grpc-status'])));
      req.on('response', (h) => {
        if (h['grpc-status'] !== undefined) status = `${String(h['grpc-status'])} ${String(h['grpc-message'] ?? '')}`;
      });
      req.on('error', (err) => resolve(`error ${err.message}`));
      req.on('close', () => resolve(status));
      req.resume();
      req.end(grpcFrame(encodeMessage('ExecSandboxRequest', { sandbox_id: SANDBOX, command: ['true'] })));
    });
  }

  async function client(): Promise<http2.ClientHttp2Session> {
    const c = http2.connect(`http://127.0.0.1:${port}`);
    c.on('error', () => undefined);
    await new Promise((r) => c.once('remoteSettings', r));
    return c;
  }

  it('a graceful restart: calls in flight finish, calls after it go to a fresh connection', async () => {
    const c = await client();
    const before = gw.connections;
    const first = Array.from({ length: 10 }, () => withTimeout(call(c), 20_000));
    await sleep(400);
    gw.closeAllGracefully();
    await sleep(100);
    const second = Array.from({ length: 10 }, () => withTimeout(call(c), 20_000));
    const outcomes = await Promise.all([...first, ...second]);
    c.close();
    expect(outcomes).toEqual(Array(20).fill('0'));
    expect(gw.connections - before).toBeGreaterThanOrEqual(1);
    expect(sc.child.exitCode).toBeNull();
    expect((await metric(admin, 'ohs_internal_errors_total')).sum).toBe(0);
  }, 30_000);

  it('streams a GOAWAY refused unprocessed are sent again on a fresh connection', async () => {
    const c = await client();
    const answeredBefore = gw.answered;
    const calls = Array.from({ length: 6 }, () => withTimeout(call(c), 20_000));
    await sleep(400);
    const refused = gw.refuseAllButFirst();
    const outcomes = await Promise.all(calls);
    c.close();
    expect(refused).toBeGreaterThanOrEqual(1);
    expect(outcomes).toEqual(Array(6).fill('0'));
    // Each call answered exactly once: the refused ones on the new connection, none twice.
    expect(gw.answered - answeredBefore).toBe(6);
    expect(sc.child.exitCode).toBeNull();
    expect((await metric(admin, 'ohs_internal_errors_total')).sum).toBe(0);
    const health = await fetch(`http://127.0.0.1:${admin}/healthz`);
    expect(health.status).toBe(200);
  }, 30_000);
});
