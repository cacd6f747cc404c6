// A sleep that ends early when one of the functions it adds to `wakers` is called (a stop, an event
// waited for): the emulators' backoffs and waits, each bounded by its `ms`.
export function wakeableSleep(ms: number, wakers: Set<() => void>, opts: { unref?: boolean } = {}): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      wakers.delete(done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    if (opts.unref) timer.unref();
    wakers.add(done);
  });
}
