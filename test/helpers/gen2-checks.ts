// The 2026-08 expectations of the sidecar, written once and run against either target
// (test/helpers/gen2-target.ts): the gateway emulator under `make test` (test/e2e/gen2-routing,
// gen2-limits) and upstream's real gateway v0.0.111 under `make interop`
// (test/interop/real-gateway.test.ts). Each function registers a describe block whose sandboxes
// are created through the target in its own beforeAll; figures go to `report`.
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { forwardClient, openForwardTcp, sshViaForwardTcp, type ForwardTcpStream } from '../../emulator/forward-tcp-client.ts';
import { Phase, type ExecSandboxEvent } from '../../emulator/proto.ts';
import { gatewayClient, unary, type OpenShellClient } from './grpc-client.ts';
import { collectStream, httpGet, wsEcho } from './gen2.ts';
import type { Gen2Target, TargetReplica, TargetSandbox } from './gen2-target.ts';

const Status = grpc.status;
export type Report = (line: string) => void;

export interface CheckOptions {
  /** Names the target in the describe titles: `emulator` or `real gateway v0.0.111`. */
  label: string;
  /** Where figures go (console on the emulator, the interop summary on the real gateway). */
  report: Report;
  /** Why the target cannot run a sandbox HTTP service; the service check is skipped with it. */
  serviceSkipReason?: string;
}

function clientFor(r: TargetReplica): OpenShellClient {
  return gatewayClient(`127.0.0.1:${r.publicPort}`);
}

/** A replica that does not own the sandbox (nor any in `not`). */
async function nonOwner(t: Gen2Target, sandboxId: string, not: string[] = []): Promise<TargetReplica> {
  const owner = (await t.ownerOf(sandboxId))?.replicaId;
  const r = t.replicas.find((x) => x.name !== owner && !not.includes(x.name));
  if (!r) throw new Error('no non-owner replica');
  return r;
}

type PhaseEvent = { sandbox?: { status?: { phase?: number } } };
const phaseOf = (m: PhaseEvent): number | undefined => m.sandbox?.status?.phase;

interface ExecOutcome {
  status: number;
  out: string;
  exit: number | null;
}

/**
 * ExecSandboxInteractive: start, then `stdin`; the input stays open until the exit event arrives
 * (`endInput: 'after-exit'`) or is ended at once (`'at-once'`). Upstream closes the SSH channel when
 * the input ends (docs/interop.md), so a client that ends early loses the exit status.
 */
function execInteractive(client: OpenShellClient, sandboxId: string, command: string[], stdin?: string, endInput: 'after-exit' | 'at-once' = 'after-exit'): Promise<ExecOutcome & { details: string }> {
  return new Promise((resolve) => {
    const call = (client.ExecSandboxInteractive as () => grpc.ClientDuplexStream<unknown, ExecSandboxEvent>).call(client);
    const o: ExecOutcome = { status: -1, out: '', exit: null };
    call.on('data', (ev: ExecSandboxEvent) => {
      if (ev.stdout) o.out += ev.stdout.data.toString();
      if (ev.exit) {
        o.exit = ev.exit.exit_code;
        call.end();
      }
    });
    call.on('error', () => undefined);
    call.on('status', (st) => resolve({ ...o, status: st.code, details: st.details }));
    call.write({ start: { sandbox_id: sandboxId, command } });
    if (stdin !== undefined) call.write({ stdin: Buffer.from(stdin) });
    if (endInput === 'at-once') call.end();
  });
}

function execUnary(client: OpenShellClient, sandboxId: string, command: string[], stdin: string): Promise<ExecOutcome> {
  return new Promise((resolve) => {
    const call = (client.ExecSandbox as (r: unknown) => grpc.ClientReadableStream<ExecSandboxEvent>).call(client, {
      sandbox_id: sandboxId,
      command,
      stdin: Buffer.from(stdin),
    });
    const o: ExecOutcome = { status: -1, out: '', exit: null };
    call.on('data', (ev: ExecSandboxEvent) => {
      if (ev.stdout) o.out += ev.stdout.data.toString();
      if (ev.exit) o.exit = ev.exit.exit_code;
    });
    call.on('error', () => undefined);
    call.on('status', (st) => resolve({ ...o, status: st.code }));
  });
}

/**
 * Upstream's supervisor now and then reports exit status 1 for a command that ran (docs/interop.md
 * U2, with or without a sidecar): on the real gateway such an outcome is run once more and counted.
 */
async function withU2Retry(t: Gen2Target, run: () => Promise<ExecOutcome>, wanted: (o: ExecOutcome) => boolean, u2: { count: number }): Promise<ExecOutcome> {
  const first = await run();
  if (wanted(first) || t.kind !== 'real' || first.exit !== 1) return first;
  u2.count++;
  return run();
}

/** Owner-bound traffic of reference §2.9 through the sidecars, from any replica. */
export function routingChecks(target: () => Gen2Target, opts: CheckOptions): void {
  const { report } = opts;
  const sbs: TargetSandbox[] = [];
  const sb = (i: number): TargetSandbox => {
    const s = sbs[i];
    if (!s) throw new Error(`no routing sandbox ${i}`);
    return s;
  };

  describe(`2026-08 routing through sidecars (${opts.label})`, () => {
    beforeAll(async () => {
      const t = target();
      const started = Date.now();
      // 0: SSH only, 1: exec, 2: service, 3: stopped, 4: logs, 5: forged Hellos (the rest: SSH).
      sbs.push(...(await t.createSandboxes('route', t.kind === 'real' ? 6 : 9, { service: true })));
      report(`routing: ${sbs.length} sandboxes Ready and owned in ${Date.now() - started} ms`);
    }, 180_000);

    it('ForwardTcp SSH sessions through the Service each reach their own sandbox', async () => {
      const t = target();
      const total = t.scale.sshSessions;
      // Three tokens per sandbox and at most one session per token at a time, so no cap decides.
      const tokens = await Promise.all(sbs.flatMap((s) => [0, 1, 2].map(async () => ({ sandboxId: s.id, token: await t.mintSshToken(s.id) }))));
      let next = 0;
      let ok = 0;
      let nonZero = 0;
      const failures: string[] = [];
      const ms: number[] = [];
      const started = Date.now();
      const worker = async (): Promise<void> => {
        for (;;) {
          const i = next++;
          if (i >= total) return;
          const tk = tokens[i % tokens.length]!;
          const t0 = Date.now();
          const r = await sshViaForwardTcp({ endpoint: t.endpoint, sandboxId: tk.sandboxId, token: tk.token, command: t.whoamiCommand, timeoutMs: 30_000 }).catch(
            (err: unknown) => ({ grpcCode: null, grpcDetails: '', stdout: '', stderr: String(err), code: null }),
          );
          if (r.grpcCode === null && r.stdout.includes(tk.sandboxId)) {
            ok++;
            ms.push(Date.now() - t0);
            if (r.code !== 0) nonZero++;
          } else failures.push(`${i}: ${r.grpcCode === null ? `stdout ${JSON.stringify(r.stdout.slice(0, 80))} ${r.stderr.slice(0, 120)}` : `${Status[r.grpcCode]} ${r.grpcDetails}`}`);
        }
      };
      await Promise.all(Array.from({ length: t.scale.sshConcurrency }, worker));
      ms.sort((a, b) => a - b);
      report(
        `ForwardTcp SSH through the Service: ${ok}/${total} sessions reached their own sandbox (${sbs.length} sandboxes, ${t.scale.sshConcurrency} at a time) in ${Date.now() - started} ms, ` +
          `median ${ms[Math.floor(ms.length / 2)] ?? '-'} ms; reached but exit status ≠ 0: ${nonZero}${failures.length ? `; failures: ${failures.slice(0, 5).join('; ')}` : ''}`,
      );
      expect(failures).toEqual([]);
      expect(ok).toBe(total);
    }, 240_000);

    it('exec through a non-owner: interactive (stdin in, stdout and exit code back) and ExecSandbox', async () => {
      const t = target();
      const s = sb(1);
      const via = await nonOwner(t, s.id);
      const client = clientFor(via);
      const u2 = { count: 0 };
      try {
        const started = Date.now();
        const head = await withU2Retry(t, () => execInteractive(client, s.id, ['head', '-n', '1'], `hello ${s.name}\n`), (o) => o.exit === 0, u2);
        const headMs = Date.now() - started;
        const failing = await withU2Retry(t, () => execInteractive(client, s.id, ['exit', '7']), (o) => o.exit === 7, u2);
        const early = await execInteractive(client, s.id, ['sleep', '2'], undefined, 'at-once');
        const unaryCat = await withU2Retry(t, () => execUnary(client, s.id, ['cat'], `unary ${s.name}\n`), (o) => o.exit === 0, u2);
        report(
          `exec via non-owner ${via.name} (owner ${(await t.ownerOf(s.id))?.replicaId}): interactive 'head -n 1' → ${Status[head.status]} exit ${head.exit} ${JSON.stringify(head.out)} in ${headMs} ms; ` +
            `'exit 7' → exit ${failing.exit}; input ended before 'sleep 2' exits → ${Status[early.status]} "${early.details}"; ExecSandbox cat → exit ${unaryCat.exit} ${JSON.stringify(unaryCat.out)}; retried for U2: ${u2.count}`,
        );
        expect(head).toMatchObject({ status: Status.OK, out: `hello ${s.name}\n`, exit: 0 });
        expect(failing.exit).toBe(7);
        expect(early).toMatchObject({ status: Status.UNAVAILABLE, details: 'exec relay closed before the command reported an exit status', exit: null });
        expect(unaryCat).toEqual({ status: Status.OK, out: `unary ${s.name}\n`, exit: 0 });
      } finally {
        client.close();
      }
    }, 90_000);

    it('service HTTP by subdomain through the Service reaches the right sandbox (ExposeService first)', async (ctx) => {
      if (opts.serviceSkipReason) {
        report(`service subdomain HTTP: skipped (${opts.serviceSkipReason})`);
        ctx.skip();
        return;
      }
      const t = target();
      const s = sb(2);
      const client = gatewayClient(t.endpoint);
      try {
        const exposed = await unary<{ url: string }>(client, 'ExposeService', { sandbox: s.name, service: 'web', target_port: t.servicePort(s), domain: true, workspace: '' });
        report(`ExposeService ${s.name}/web → ${exposed.url}`);
      } finally {
        client.close();
      }
      const host = `${s.workspace}--${s.name}--web.openshell.localhost`;
      const port = Number(t.endpoint.split(':')[1]);
      const statuses: number[] = [];
      const ms: number[] = [];
      // Six requests through the round-robin Service: every replica serves some.
      for (let i = 0; i < 6; i++) {
        const t0 = Date.now();
        const res = await httpGet(port, host, `/marker?i=${i}`);
        ms.push(Date.now() - t0);
        statuses.push(res.status);
        expect(res.status).toBe(200);
        expect(res.body).toContain(t.serviceMarker(s));
      }
      const unknown = await httpGet(port, `default--nope--web.openshell.localhost`);
      let ws = 'not tried (the sandbox service speaks no WebSocket)';
      if (t.kind === 'emulator') {
        for (let i = 0; i < 3; i++) expect(await wsEcho(port, host, ['one', `two-${i}`])).toEqual({ status: 101, replies: ['one', `two-${i}`] });
        ws = '3/3 echoed';
      }
      report(`service subdomain HTTP through the Service: ${statuses.filter((x) => x === 200).length}/6 × 200 with the sandbox's marker (${ms.join('/')} ms); unknown service → ${unknown.status}; WebSocket: ${ws}`);
      // An unknown service gets the gateway's own 404, from whichever replica.
      expect(unknown.status).toBe(404);
    }, 90_000);

    it('StopSandbox by name through a non-owner stops the sandbox, and a watcher on another replica sees it', async () => {
      const t = target();
      const s = sb(3);
      const owner = (await t.ownerOf(s.id))?.replicaId;
      const watchVia = await nonOwner(t, s.id);
      const stopVia = await nonOwner(t, s.id, [watchVia.name]);
      const watchClient = clientFor(watchVia);
      const stopClient = clientFor(stopVia);
      try {
        const watching = collectStream<PhaseEvent>(watchClient, 'WatchSandbox', { id: s.id, follow_status: true }, {
          untilMs: 30_000,
          stopWhen: (seen) => seen.some((m) => phaseOf(m) === Phase.STOPPED),
        });
        // The watch's snapshot arrives first; give it a moment to be in place on the owner.
        await new Promise((r) => setTimeout(r, 300));
        const started = Date.now();
        await unary(stopClient, 'StopSandbox', { name: s.name, workspace: '' }, 30_000);
        const stopMs = Date.now() - started;
        const seen = await watching;
        const phases = seen.messages.map(phaseOf);
        const stored = await t.phaseOf(s.id);
        report(
          `stop by name via ${stopVia.name} (owner ${owner}) answered in ${stopMs} ms; watcher via ${watchVia.name} saw phases ${phases.join(',')} in ${Date.now() - started} ms; stored phase ${stored}`,
        );
        expect(phases[0]).toBe(Phase.READY);
        expect(phases.some((p) => p === Phase.STOPPED || p === Phase.STOPPING)).toBe(true);
        expect([Phase.STOPPED, Phase.STOPPING]).toContain(stored);
      } finally {
        watchClient.close();
        stopClient.close();
      }
    }, 90_000);

    it('a watch opened through a non-owner before the supervisor connects sees Ready within 2 s of the connect', async () => {
      const t = target();
      const held = await t.createHeldSandbox(`late-${t.kind}`);
      const watchVia = t.replicas[0]!;
      const connectVia = t.replicas[1]!;
      const client = clientFor(watchVia);
      try {
        let readyAt = 0;
        const watching = collectStream<PhaseEvent>(client, 'WatchSandbox', { id: held.sandbox.id, follow_status: true }, {
          untilMs: 60_000,
          stopWhen: (seen) => {
            const ready = seen.some((m) => phaseOf(m) === Phase.READY);
            if (ready && readyAt === 0) readyAt = Date.now();
            return ready;
          },
        });
        await new Promise((r) => setTimeout(r, 500));
        const startedAt = Date.now();
        await held.startSupervisor(connectVia);
        // The supervisor "connects" when its Hello reaches a sidecar: the claim in ohs_owners.
        let claimedAt = 0;
        for (;;) {
          if (await t.ownerOf(held.sandbox.id)) {
            claimedAt = Date.now();
            break;
          }
          if (Date.now() - startedAt > 60_000) break;
          await new Promise((r) => setTimeout(r, 20));
        }
        const seen = await watching;
        const owner = (await t.ownerOf(held.sandbox.id))?.replicaId;
        report(
          `watch via ${watchVia.name} opened before any supervisor: first phase ${phaseOf(seen.messages[0] ?? {})}; supervisor started → claimed via ${owner} in ${claimedAt - startedAt} ms; ` +
            `Ready seen ${readyAt - claimedAt} ms after the claim`,
        );
        expect(phaseOf(seen.messages[0] ?? {})).toBe(Phase.PROVISIONING);
        expect(claimedAt).toBeGreaterThan(0);
        expect(readyAt).toBeGreaterThan(0);
        expect(owner).toBe(connectVia.name);
        expect(readyAt - claimedAt).toBeLessThan(2_000);
      } finally {
        client.close();
      }
    }, 120_000);

    it("the supervisor's early log push lands on the owner's bus: logs are readable through every replica", async () => {
      const t = target();
      const counts: string[] = [];
      for (const s of [sb(4), sb(5)]) {
        for (const r of t.replicas) {
          const client = clientFor(r);
          try {
            const res = await unary<{ logs: Array<{ message: string; source: string }> }>(client, 'GetSandboxLogs', { sandbox_id: s.id, lines: 200 });
            const pushed = res.logs.filter((l) => l.source === 'sandbox');
            counts.push(`${s.name}@${r.name}:${pushed.length}`);
            expect(pushed.length).toBeGreaterThan(0);
          } finally {
            client.close();
          }
        }
      }
      report(`GetSandboxLogs through every replica, lines pushed by the supervisor (source "sandbox"): ${counts.join(' ')}`);
    }, 60_000);

    it("forged Hellos (no token, garbage, another sandbox's token) change no ownership and evict nobody", async () => {
      const t = target();
      const victim = sbs[sbs.length - 1]!;
      const other = sb(0);
      const ownerBefore = await t.ownerOf(victim.id);
      const markBefore = await t.sessionMark(victim.id);
      const unverifiedBefore = await t.metricSum('ohs_unverified_hellos_total');
      const otherToken = await t.sandboxJwt(other.id);
      const kinds = [undefined, 'Bearer not-a-jwt', `Bearer ${otherToken}`];
      const names = ['no JWT', 'malformed JWT', "other sandbox's JWT"];
      const codes = new Map<string, number>();
      const clients = t.replicas.map((r) => clientFor(r));
      const total = t.scale.forgedHellos;
      const started = Date.now();
      try {
        let next = 0;
        const worker = async (): Promise<void> => {
          for (;;) {
            const i = next++;
            if (i >= total) return;
            const auth = kinds[i % kinds.length];
            const md = new grpc.Metadata();
            if (auth) md.set('authorization', auth);
            const client = clients[i % clients.length]!;
            const code = await new Promise<number>((resolve) => {
              const call = (client.ConnectSupervisor as (m: unknown, o: unknown) => grpc.ClientDuplexStream<unknown, unknown>).call(client, md, { deadline: Date.now() + 10_000 });
              call.on('data', () => call.cancel());
              call.on('error', () => undefined);
              call.on('status', (st: { code: number }) => resolve(st.code));
              call.write({ hello: { sandbox_id: victim.id, instance_id: `forged-${i}` } });
            });
            const k = `${names[i % names.length]} → ${Status[code] ?? String(code)}`;
            codes.set(k, (codes.get(k) ?? 0) + 1);
          }
        };
        await Promise.all(Array.from({ length: 25 }, worker));
      } finally {
        for (const c of clients) c.close();
      }
      const elapsed = Date.now() - started;
      await new Promise((r) => setTimeout(r, 500));
      const ownerAfter = await t.ownerOf(victim.id);
      const markAfter = await t.sessionMark(victim.id);
      const unverified = (await t.metricSum('ohs_unverified_hellos_total')) - unverifiedBefore;
      const phase = await t.phaseOf(victim.id);
      const token = await t.mintSshToken(victim.id);
      const r = await sshViaForwardTcp({ endpoint: t.endpoint, sandboxId: victim.id, token, command: t.whoamiCommand });
      report(
        `${total} forged Hellos in ${elapsed} ms: ${JSON.stringify(Object.fromEntries([...codes].sort()))}; owner ${JSON.stringify(ownerBefore)} → ${JSON.stringify(ownerAfter)}; ` +
          `supervisor session ${markBefore} → ${markAfter}; ohs_unverified_hellos_total +${unverified}; phase ${phase}; SSH after: ${r.stdout.includes(victim.id) ? 'ok' : `${r.grpcDetails} ${r.stdout}`}`,
      );
      expect(ownerAfter).toEqual(ownerBefore);
      expect(markAfter).toBe(markBefore);
      expect(unverified).toBeGreaterThanOrEqual(total);
      expect([...codes.keys()].filter((k) => k.endsWith('→ OK'))).toEqual([]);
      // Upstream's answers (docs/interop.md difference 4): a user principal may not connect a
      // supervisor; a bad token is unauthenticated; another sandbox's token is the wrong principal.
      expect([...codes.keys()].sort()).toEqual(['malformed JWT → UNAUTHENTICATED', 'no JWT → PERMISSION_DENIED', "other sandbox's JWT → PERMISSION_DENIED"]);
      expect(phase).toBe(Phase.READY);
      expect(r.stdout).toContain(victim.id);
    }, 180_000);
  });
}

type Outcome = { kind: 'admitted'; fwd: ForwardTcpStream } | { kind: 'refused'; code: number; details: string };

/** Cluster-wide ForwardTcp limits (reference §2.3 HEAD: 3 per token, 20 per sandbox, per process). */
export function limitChecks(target: () => Gen2Target, opts: CheckOptions): void {
  const { report } = opts;
  const sandboxes: TargetSandbox[] = [];
  const open = new Set<ForwardTcpStream>();
  const clients: grpc.Client[] = [];

  /** Opens a ForwardTcp; admitted once the sandbox's SSH server greets through it, refused on a non-OK status. */
  const attempt = (client: grpc.Client, sandboxId: string, token: string): Promise<Outcome> => {
    const fwd = openForwardTcp(client, { sandboxId, token });
    open.add(fwd);
    fwd.socket.on('error', () => undefined);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve({ kind: 'refused', code: -1, details: 'no answer in 30 s' }), 30_000);
      fwd.socket.once('data', () => {
        clearTimeout(timer);
        resolve({ kind: 'admitted', fwd });
      });
      void fwd.status.then((st) => {
        clearTimeout(timer);
        open.delete(fwd);
        resolve({ kind: 'refused', code: st.code, details: st.details });
      });
    });
  };
  const closeAll = (): void => {
    for (const f of open) f.socket.destroy();
    open.clear();
  };

  describe(`2026-08 cluster-wide ForwardTcp limits (${opts.label})`, () => {
    beforeAll(async () => {
      const t = target();
      sandboxes.push(...(await t.createSandboxes('lim', t.scale.limitSandboxes)));
      // Thirty client connections through the Service: the round-robin spreads them over the replicas.
      for (let i = 0; i < 30; i++) clients.push(forwardClient(t.endpoint));
    }, 180_000);

    afterAll(() => {
      closeAll();
      for (const c of clients.splice(0)) c.close();
    });

    it('a ForwardTcp storm over 3 replicas: never more than 3 per token or 20 per sandbox, refused with the gateway’s messages', async () => {
      const t = target();
      const { limitTokensPerSandbox, limitAttempts } = t.scale;
      const tokens = await Promise.all(
        Array.from({ length: sandboxes.length * limitTokensPerSandbox }, async (_, i) => {
          const sandboxId = sandboxes[i % sandboxes.length]!.id;
          return { sandboxId, token: await t.mintSshToken(sandboxId) };
        }),
      );
      const started = Date.now();
      const outcomes = await Promise.all(
        Array.from({ length: limitAttempts }, (_, i) => {
          const tk = tokens[i % tokens.length]!;
          return attempt(clients[i % clients.length]!, tk.sandboxId, tk.token).then((o) => ({ o, tk }));
        }),
      );
      const perToken = new Map<string, number>();
      const perSandbox = new Map<string, number>();
      const refusals = new Map<string, number>();
      for (const { o, tk } of outcomes) {
        if (o.kind === 'admitted') {
          perToken.set(tk.token, (perToken.get(tk.token) ?? 0) + 1);
          perSandbox.set(tk.sandboxId, (perSandbox.get(tk.sandboxId) ?? 0) + 1);
        } else {
          const k = `${Status[o.code] ?? o.code} ${o.details}`;
          refusals.set(k, (refusals.get(k) ?? 0) + 1);
        }
      }
      const admitted = [...perSandbox.values()].reduce((a, b) => a + b, 0);
      const maxToken = Math.max(...perToken.values());
      const refusedBySidecars = await t.metricSum('ohs_limit_refusals_total');
      report(
        `limits: ${limitAttempts} ForwardTcp attempts, ${tokens.length} tokens, ${sandboxes.length} sandboxes, in ${Date.now() - started} ms: ${admitted} admitted ` +
          `(max ${maxToken} per token, per sandbox ${[...perSandbox.values()].join('/')}), refusals ${JSON.stringify(Object.fromEntries(refusals))}; sidecars refused ${refusedBySidecars}`,
      );
      expect(maxToken).toBeLessThanOrEqual(3);
      // Ten tokens of three per sandbox could hold 30: the sandbox cap binds, and is reached.
      expect([...perSandbox.values()]).toEqual(sandboxes.map(() => 20));
      expect([...refusals.keys()].every((k) => k === 'RESOURCE_EXHAUSTED sandbox SSH connection limit reached' || k === 'RESOURCE_EXHAUSTED SSH session connection limit reached')).toBe(true);
      expect(refusedBySidecars).toBe(limitAttempts - admitted);
      closeAll();
      const drainStarted = Date.now();
      await expect.poll(() => t.metricSum('ohs_limit_slots_held'), { timeout: 15_000, interval: 200 }).toBe(0);
      report(`limits: every slot released ${Date.now() - drainStarted} ms after the streams closed`);
    }, 180_000);

    it('junk tokens for one sandbox take no slot, and the valid token still gets its 3', async () => {
      const t = target();
      const sandboxId = sandboxes[0]!.id;
      const valid = await t.mintSshToken(sandboxId);
      const other = await t.mintSshToken(sandboxes[1]!.id);
      const skipsBefore = await t.metricSum('ohs_limit_skips_total', (l) => l.includes('reason="invalid_token"'));
      const n = t.scale.junkAttempts;
      // Junk: unknown tokens, another sandbox's token, empty.
      const junk = Array.from({ length: n }, (_, i) => (i % 3 === 0 ? `junk-${i}` : i % 3 === 1 ? other : ''));
      const junkAttempts = junk.map((tok, i) => attempt(clients[i % clients.length]!, sandboxId, tok));
      const validAttempts = [0, 1, 2].map((i) => attempt(clients[i]!, sandboxId, valid));
      const [junkOutcomes, validOutcomes] = await Promise.all([Promise.all(junkAttempts), Promise.all(validAttempts)]);
      const junkCodes = new Map<string, number>();
      for (const o of junkOutcomes) {
        const k = o.kind === 'admitted' ? 'ADMITTED' : `${Status[o.code]} ${o.details}`;
        junkCodes.set(k, (junkCodes.get(k) ?? 0) + 1);
      }
      const skips = (await t.metricSum('ohs_limit_skips_total', (l) => l.includes('reason="invalid_token"'))) - skipsBefore;
      const held = await t.metricSum('ohs_limit_slots_held', (l) => l.includes('rule="ssh-per-token"'));
      const fourth = await attempt(clients[3]!, sandboxId, valid);
      report(
        `junk tokens: ${n} attempts → ${JSON.stringify(Object.fromEntries(junkCodes))}; ${skips} took no slot; valid token: ${validOutcomes.map((o) => o.kind).join(',')}, ` +
          `per-token slots held ${held}; 4th → ${fourth.kind === 'refused' ? `${Status[fourth.code]} "${fourth.details}"` : 'admitted'}`,
      );
      expect([...junkCodes.keys()].every((k) => k.startsWith('UNAUTHENTICATED '))).toBe(true);
      expect(validOutcomes.every((o) => o.kind === 'admitted')).toBe(true);
      expect(skips).toBe(n);
      // Exactly the three valid forwards hold slots: one per rule each.
      expect(held).toBe(3);
      expect(fourth.kind === 'refused' && `${Status[fourth.code]} ${fourth.details}`).toBe('RESOURCE_EXHAUSTED SSH session connection limit reached');
      closeAll();
    }, 120_000);
  });
}
