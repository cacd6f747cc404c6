// Cleanup for bench scripts: registered steps run last-registered first, on the normal path and on
// Ctrl-C/SIGTERM, and never twice at once.

export interface Cleanups {
  push(step: { what: string; run: () => Promise<unknown> }): void;
  /** Runs every step registered so far; concurrent calls share one run; later steps need another call. */
  runAll(): Promise<void>;
}

export function createCleanups(opts: { onSignalExitCode?: number } = {}): Cleanups {
  const steps: Array<{ what: string; run: () => Promise<unknown> }> = [];
  let running: Promise<void> | undefined;
  const runAll = (): Promise<void> => {
    running ??= (async () => {
      for (const c of steps.splice(0).reverse()) {
        try {
          await c.run();
        } catch (err) {
          console.error(`cleanup (${c.what}) failed: ${err instanceof Error ? err.message : String(err)}`);
        }
      }
    })().finally(() => {
      running = undefined;
    });
    return running;
  };
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      console.error(`\n${sig}: cleaning up`);
      void runAll().finally(() => process.exit(opts.onSignalExitCode ?? 130));
    });
  }
  return { push: (step) => void steps.push(step), runAll };
}
