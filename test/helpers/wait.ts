// Polling outside a test body (expect.poll only works inside one), e.g. in beforeAll.
import { Phase } from '../../emulator/proto.ts';

const READY: number = Phase.READY;

/** Calls `probe` until `done(value)` holds; throws (naming `what` and the last value) after `timeoutMs`. */
export async function waitUntil<T>(
  what: string,
  probe: () => Promise<T>,
  done: (value: T) => boolean,
  opts: { timeoutMs: number; intervalMs?: number },
): Promise<T> {
  const deadline = Date.now() + opts.timeoutMs;
  let last: T | undefined;
  let lastErr: unknown;
  for (;;) {
    try {
      last = await probe();
      if (done(last)) return last;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() >= deadline) {
      const seen = lastErr === undefined ? JSON.stringify(last) : `${JSON.stringify(last)} (last error: ${String(lastErr)})`;
      throw new Error(`${what}: not reached within ${opts.timeoutMs} ms; last seen ${seen}`);
    }
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 100));
  }
}

/**
 * Until the gateway (emulator) has written every sandbox Ready. It accepts a supervisor's session
 * first and writes the Ready just after, so a connected supervisor's sandbox may not be Ready yet,
 * and CreateSshSession refuses a sandbox that is not.
 */
export async function waitSandboxesReady(store: { getSandbox(id: string): Promise<{ phase: number } | null> }, ids: readonly string[], timeoutMs = 5_000): Promise<void> {
  await waitUntil('sandboxes Ready', () => Promise.all(ids.map((id) => store.getSandbox(id))), (rows) => rows.every((r) => r?.phase === READY), { timeoutMs, intervalMs: 20 });
}
