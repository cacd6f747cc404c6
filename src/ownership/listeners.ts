// onChange listeners: one throwing listener must not stop the others or the invalidation path.

export interface ListenerSet {
  add(listener: (sandboxId: string) => void): () => void;
  emit(sandboxId: string): void;
  clear(): void;
}

export function createListenerSet(onError?: (err: unknown, sandboxId: string) => void): ListenerSet {
  const listeners = new Set<(sandboxId: string) => void>();
  return {
    add(listener) {
      // Wrap so that registering the same function twice yields two independent subscriptions.
      const entry = (sandboxId: string): void => listener(sandboxId);
      listeners.add(entry);
      return () => {
        listeners.delete(entry);
      };
    },
    emit(sandboxId) {
      for (const listener of [...listeners]) {
        try {
          listener(sandboxId);
        } catch (err) {
          onError?.(err, sandboxId);
        }
      }
    },
    clear() {
      listeners.clear();
    },
  };
}
