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
import { waitUntil } from './wait.ts';

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
      report(`routing: ${sbs.length} sandboxes Ready and owned in ${Date.now() - started} ms; Ready writes lost to a CAS conflict so far (U1): ${await t.lostReadyWrites()}`);
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
      try {
        const watching = collectStream<PhaseEvent>(watchClient, 'WatchSandbox', { id: s.id, follow_status: true }, {
          untilMs: 30_000,
          stopWhen: (seen) => seen.some((m) => phaseOf(m) === Phase.STOPPED),
        });
        // The watch's snapshot arrives first; give it a moment to be in place on the owner.
        await new Promise((r) => setTimeout(r, 300));
        const started = Date.now();
        const attempts = await stopByName(t.endpoint, s.name, report, stopVia);
        const stopMs = Date.now() - started;
        const seen = await watching;
        const phases = seen.messages.map(phaseOf);
        const stored = await t.phaseOf(s.id);
        report(
          `stop by name via ${stopVia.name} (owner ${owner}) answered in ${stopMs} ms (${attempts} attempt${attempts > 1 ? 's' : ''}); watcher via ${watchVia.name} saw phases ${phases.join(',')} in ${Date.now() - started} ms; stored phase ${stored}`,
        );
        expect(phases[0]).toBe(Phase.READY);
        expect(phases.some((p) => p === Phase.STOPPED || p === Phase.STOPPING)).toBe(true);
        expect([Phase.STOPPED, Phase.STOPPING]).toContain(stored);
      } finally {
        watchClient.close();
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
            const st = await new Promise<{ code: number; details: string }>((resolve) => {
              const call = (client.ConnectSupervisor as (m: unknown, o: unknown) => grpc.ClientDuplexStream<unknown, unknown>).call(client, md, { deadline: Date.now() + 10_000 });
              call.on('data', () => call.cancel());
              call.on('error', () => undefined);
              call.on('status', (s: { code: number; details: string }) => resolve(s));
              call.write({ hello: { sandbox_id: victim.id, instance_id: `forged-${i}` } });
            });
            const k = `${names[i % names.length]} → ${Status[st.code] ?? String(st.code)} ${st.details}`;
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
      expect([...codes.keys()].filter((k) => k.includes('→ OK'))).toEqual([]);
      // Upstream's answers (docs/interop.md difference 4): a user principal may not connect a
      // supervisor; a bad token is unauthenticated; another sandbox's token is the wrong principal.
      expect([...codes.keys()].sort()).toEqual([
        'malformed JWT → UNAUTHENTICATED invalid token',
        'no JWT → PERMISSION_DENIED this method requires a sandbox principal',
        "other sandbox's JWT → PERMISSION_DENIED cross-sandbox access denied: principal does not own this sandbox",
      ]);
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
      // Sidecar counters are cumulative (under `make interop` other checks refused before this one).
      const refusedBefore = await t.metricSum('ohs_limit_refusals_total');
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
      const refusedBySidecars = (await t.metricSum('ohs_limit_refusals_total')) - refusedBefore;
      // Released before any assertion: the next check needs the slots back whatever happens here.
      closeAll();
      const closedAt = Date.now();
      report(
        `limits: ${limitAttempts} ForwardTcp attempts, ${tokens.length} tokens, ${sandboxes.length} sandboxes, in ${Date.now() - started} ms: ${admitted} admitted ` +
          `(max ${maxToken} per token, per sandbox ${[...perSandbox.values()].join('/')}), refusals ${JSON.stringify(Object.fromEntries(refusals))}; sidecars refused ${refusedBySidecars}`,
      );
      expect(maxToken).toBeLessThanOrEqual(3);
      // Ten tokens of three per sandbox could hold 30: the sandbox cap binds, and is reached.
      expect([...perSandbox.values()]).toEqual(sandboxes.map(() => 20));
      expect([...refusals.keys()].every((k) => k === 'RESOURCE_EXHAUSTED sandbox SSH connection limit reached' || k === 'RESOURCE_EXHAUSTED SSH session connection limit reached')).toBe(true);
      expect(refusedBySidecars).toBe(limitAttempts - admitted);
      await expect.poll(() => t.metricSum('ohs_limit_slots_held'), { timeout: 15_000, interval: 200 }).toBe(0);
      report(`limits: every slot released ${Date.now() - closedAt} ms after the streams closed`);
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
      closeAll();
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
    }, 120_000);
  });
}

/**
 * StopSandbox, again on ABORTED: its lifecycle write is a single compare-and-swap that loses to any
 * other write of the row in between (right after Ready: the policy report, the Ready writes of the
 * sidecars' shadow sessions), and upstream returns that as ABORTED without retrying.
 */
async function stopByName(endpoint: string, name: string, report: Report, via?: TargetReplica): Promise<number> {
  const client = gatewayClient(via ? `127.0.0.1:${via.publicPort}` : endpoint);
  try {
    for (let attempt = 1; ; attempt++) {
      try {
        await unary(client, 'StopSandbox', { name, workspace: '' }, 30_000);
        return attempt;
      } catch (err) {
        const e = err as grpc.ServiceError;
        if (e.code !== Status.ABORTED || attempt >= 5) throw err;
        report(`StopSandbox ${name}: ABORTED "${e.details}", attempt ${attempt + 1}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  } finally {
    client.close();
  }
}

/** `CODE message` of a failed unary call, or `OK`. */
async function unaryAnswer(client: OpenShellClient, method: string, req: unknown): Promise<string> {
  try {
    await unary(client, method, req, 30_000);
    return 'OK';
  } catch (err) {
    const e = err as grpc.ServiceError;
    return `${Status[e.code]} ${e.details}`;
  }
}

/** Sends `frames` on a ForwardTcp through `endpoint` and answers `CODE message` of its final status (or `DATA` once bytes come back). */
function forwardAnswer(endpoint: string, frames: unknown[]): Promise<string> {
  const client = gatewayClient(endpoint);
  return new Promise<string>((resolve) => {
    const call = (client.ForwardTcp as (md: grpc.Metadata, o: grpc.CallOptions) => grpc.ClientDuplexStream<unknown, { data?: Buffer }>).call(client, new grpc.Metadata(), {
      deadline: Date.now() + 40_000,
    });
    let settled = false;
    const done = (answer: string): void => {
      if (settled) return;
      settled = true;
      call.cancel();
      resolve(answer);
    };
    call.on('data', (f: { data?: Buffer }) => {
      if (f.data && f.data.length > 0) done('DATA');
    });
    call.on('error', () => undefined);
    call.on('status', (st) => done(`${Status[st.code]} ${st.details}`));
    for (const f of frames) call.write(f);
  }).finally(() => client.close());
}

/**
 * The gateway's own refusals, through the sidecars: the exact codes and messages of CreateSshSession,
 * ForwardTcp and ExecSandbox for the cases a client meets (upstream grpc/sandbox.rs@v0.0.111), the
 * address CreateSshSession hands out, and a ForwardTcp that reaches a gateway without the session.
 */
export function answerChecks(target: () => Gen2Target, opts: CheckOptions): void {
  const { report } = opts;
  let ready: TargetSandbox;
  let stopped: TargetSandbox;

  describe(`2026-08 refusals and answers (${opts.label})`, () => {
    beforeAll(async () => {
      const t = target();
      [ready, stopped] = (await t.createSandboxes('ans', 2)) as [TargetSandbox, TargetSandbox];
      await stopByName(t.endpoint, stopped.name, report);
      await waitUntil(`${stopped.name} Stopped`, () => t.phaseOf(stopped.id), (p) => p === Phase.STOPPED, { timeoutMs: 30_000, intervalMs: 200 });
    }, 180_000);

    /**
     * Every case once through the Service (what a client sees) and once straight to the owner's
     * gateway (what the gateway itself says): the gateway's own answers must be upstream's on both
     * targets, and the sidecar must pass them on, except where it answers a malformed first message
     * itself before any gateway sees it.
     */
    it.concurrent('CreateSshSession, ForwardTcp and ExecSandbox refusals carry the gateway’s codes and messages', async ({ expect }) => {
      const t = target();
      const unknown = '00000000-0000-4000-8000-000000000000';
      const owner = (await t.ownerOf(ready.id))?.replicaId;
      const ownerGateway = `127.0.0.1:${t.replicas.find((r) => r.name === owner)!.gatewayPort}`;
      // A loopback port nothing listens on: the supervisor's dial fails and it says why.
      const closedPort = 1;
      // A token of its own for every call: the cases run at once, and the sidecar takes a slot for a
      // valid token before the gateway looks at the target (3 per token would decide otherwise).
      const init = async (over: Record<string, unknown>): Promise<unknown> => ({
        init: { sandbox_id: ready.id, service_id: 'answers', ssh: {}, authorization_token: await t.mintSshToken(ready.id), ...over },
      });
      const execAnswer = (endpoint: string, req: unknown): Promise<string> => {
        const client = gatewayClient(endpoint);
        return new Promise<string>((resolve) => {
          const call = (client.ExecSandbox as (r: unknown) => grpc.ClientReadableStream<unknown>).call(client, req);
          call.on('data', () => undefined);
          call.on('error', () => undefined);
          call.on('status', (st) => resolve(`${Status[st.code]} ${st.details}`));
        }).finally(() => client.close());
      };
      const unaryVia = (endpoint: string, method: string, req: unknown): Promise<string> => {
        const client = gatewayClient(endpoint);
        return unaryAnswer(client, method, req).finally(() => client.close());
      };
      const cases: Array<[string, (endpoint: string) => Promise<string>]> = [
        ['CreateSshSession no id', (e) => unaryVia(e, 'CreateSshSession', { sandbox_id: '' })],
        ['CreateSshSession unknown sandbox', (e) => unaryVia(e, 'CreateSshSession', { sandbox_id: unknown })],
        ['CreateSshSession stopped sandbox', (e) => unaryVia(e, 'CreateSshSession', { sandbox_id: stopped.id })],
        ['ExecSandbox no command', (e) => execAnswer(e, { sandbox_id: ready.id, command: [] })],
        ['ExecSandbox stopped sandbox', (e) => execAnswer(e, { sandbox_id: stopped.id, command: ['pwd'] })],
        ['ForwardTcp first frame data', (e) => forwardAnswer(e, [{ data: Buffer.from('x') }])],
        ['ForwardTcp no sandbox id', async (e) => forwardAnswer(e, [await init({ sandbox_id: '' })])],
        ['ForwardTcp no target', async (e) => forwardAnswer(e, [{ init: { sandbox_id: ready.id, service_id: 'answers', authorization_token: await t.mintSshToken(ready.id) } }])],
        ['ForwardTcp tcp port 0', async (e) => forwardAnswer(e, [await init({ ssh: undefined, tcp: { host: '127.0.0.1', port: 0 } })])],
        ['ForwardTcp tcp host not loopback', async (e) => forwardAnswer(e, [await init({ ssh: undefined, tcp: { host: '10.1.2.3', port: 80 } })])],
        ['ForwardTcp unknown sandbox', async (e) => forwardAnswer(e, [await init({ sandbox_id: unknown })])],
        ['ForwardTcp stopped sandbox', async (e) => forwardAnswer(e, [await init({ sandbox_id: stopped.id })])],
        ['ForwardTcp no token', async (e) => forwardAnswer(e, [await init({ authorization_token: '' })])],
        ['ForwardTcp unknown token', async (e) => forwardAnswer(e, [await init({ authorization_token: 'not-a-session' })])],
        ['ForwardTcp tcp target refused', async (e) => forwardAnswer(e, [await init({ ssh: undefined, tcp: { host: '127.0.0.1', port: closedPort } })])],
        ['ForwardTcp ssh', async (e) => forwardAnswer(e, [await init({})])],
      ];
      const viaService: Record<string, string> = {};
      const viaGateway: Record<string, string> = {};
      const timed = async (run: () => Promise<string>): Promise<[string, number]> => {
        const t0 = Date.now();
        const answer = await run();
        return [answer, Date.now() - t0];
      };
      // Independent cases, all at once: a refusal the sidecar holds first (a stopped sandbox's
      // FAILED_PRECONDITION waits for a Ready that does not come) does not add up.
      const outcomes = await Promise.all(cases.map(([, run]) => Promise.all([timed(() => run(t.endpoint)), timed(() => run(ownerGateway))])));
      for (const [i, [name]] of cases.entries()) {
        const [[service, serviceMs], [gateway, gatewayMs]] = outcomes[i]!;
        viaService[name] = service;
        viaGateway[name] = gateway;
        report(`answer: ${name} → gateway: ${gateway} (${gatewayMs} ms); through the Service: ${service === gateway ? 'same' : service} (${serviceMs} ms)`);
      }
      const upstream = {
        'CreateSshSession no id': 'INVALID_ARGUMENT sandbox_id is required',
        'CreateSshSession unknown sandbox': 'NOT_FOUND sandbox not found',
        'CreateSshSession stopped sandbox': 'FAILED_PRECONDITION sandbox is not ready',
        'ExecSandbox no command': 'INVALID_ARGUMENT command is required',
        'ExecSandbox stopped sandbox': 'FAILED_PRECONDITION sandbox is not ready',
        'ForwardTcp first frame data': 'INVALID_ARGUMENT first TcpForwardFrame must be init',
        'ForwardTcp no sandbox id': 'INVALID_ARGUMENT sandbox_id is required',
        'ForwardTcp no target': 'INVALID_ARGUMENT tcp forward target is required',
        'ForwardTcp tcp port 0': 'INVALID_ARGUMENT tcp target port must be between 1 and 65535',
        'ForwardTcp tcp host not loopback': 'INVALID_ARGUMENT tcp target host must be loopback',
        'ForwardTcp unknown sandbox': 'NOT_FOUND sandbox not found',
        'ForwardTcp stopped sandbox': 'FAILED_PRECONDITION sandbox is not ready',
        'ForwardTcp no token': 'UNAUTHENTICATED authorization_token is required for ForwardTcp',
        'ForwardTcp unknown token': 'UNAUTHENTICATED SSH session token not found',
        'ForwardTcp tcp target refused': 'UNAVAILABLE Connection refused (os error 111)',
        'ForwardTcp ssh': 'DATA',
      };
      expect(viaGateway).toEqual(upstream);
      // The sidecar reads the routing key from the first frame and answers a frame without one
      // itself, with the same code and words of its own (src/wire/routing-key.ts).
      expect(viaService).toEqual({
        ...upstream,
        'ForwardTcp first frame data': 'INVALID_ARGUMENT first ForwardTcp message must be init',
        'ForwardTcp no sandbox id': 'INVALID_ARGUMENT first ForwardTcp message has no init.sandbox_id',
      });
    }, 180_000);

    it.concurrent('CreateSshSession hands out a token and the address of the gateway that answered', async ({ expect }) => {
      const t = target();
      const client = gatewayClient(t.endpoint);
      try {
        const res = await unary<{ sandbox_id: string; token: string; gateway_host: string; gateway_port: number; gateway_scheme: string; expires_at_ms: number }>(
          client,
          'CreateSshSession',
          { sandbox_id: ready.id },
        );
        const ttl = Number(res.expires_at_ms) - Date.now();
        report(`CreateSshSession: token ${res.token.length} chars, ${res.gateway_scheme}://${res.gateway_host}:${res.gateway_port}, expires in ${Math.round(ttl / 1000)} s`);
        expect(res.sandbox_id).toBe(ready.id);
        expect(res.token.length).toBeGreaterThan(0);
        // The gateway's own bind address, not the sidecar's nor the Service's (reference §2.3 HEAD).
        expect(res.gateway_scheme).toBe('http');
        expect(res.gateway_host).toBe('127.0.0.1');
        expect(t.replicas.map((r) => r.gatewayPort)).toContain(Number(res.gateway_port));
      } finally {
        client.close();
      }
    }, 60_000);

    /**
     * With the sidecars' readiness shadows (README "Readiness on 2026-08 gateways") every gateway
     * holds a session for every live sandbox, so a ForwardTcp that reaches a non-owner's gateway
     * directly (no sidecar) does not wait the 13.1 s for a session: its RelayOpen goes to a shadow,
     * which only listens, and the call ends with the 10 s relay claim timeout.
     */
    it.concurrent('a ForwardTcp straight to a non-owner’s gateway (a shadow session) fails after the 10 s relay claim', async ({ expect }) => {
      const t = target();
      const owner = (await t.ownerOf(ready.id))?.replicaId;
      const others = t.replicas.filter((r) => r.name !== owner);
      const results = await Promise.all(
        others.map(async (r) => {
          const token = await t.mintSshToken(ready.id);
          const started = Date.now();
          const answer = await forwardAnswer(`127.0.0.1:${r.gatewayPort}`, [{ init: { sandbox_id: ready.id, service_id: 'misrouted', ssh: {}, authorization_token: token } }]);
          return { replica: r.name, answer, ms: Date.now() - started };
        }),
      );
      report(`ForwardTcp straight to a non-owner's gateway: ${results.map((r) => `${r.replica}: ${r.answer} after ${r.ms} ms`).join('; ')}`);
      for (const r of results) {
        expect(r.answer).toBe('DEADLINE_EXCEEDED relay open timed out');
        expect(r.ms).toBeGreaterThan(9_500);
        expect(r.ms).toBeLessThan(12_500);
      }
    }, 60_000);
  });
}
