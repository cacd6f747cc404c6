// Polling outside a test body (expect.poll only works inside one), e.g. in beforeAll.

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
