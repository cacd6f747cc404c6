// Turns the keys some requests carry instead of a sandbox id into one: a sandbox name in a
// workspace (StopSandbox and friends, reference §2.9) or a service host (reference §2.7). Reads the
// gateway's `objects` table, with a short cache so a burst of requests costs one query; a miss is
// never cached, so a sandbox or service created a moment ago is found at once.
import { endpointKey, type ServiceHost } from '../classify/service-host.ts';
import type { GatewayObjects } from '../ownership/gateway-objects.ts';

export interface SandboxKeys {
  /** The sandbox id, or undefined when unknown (no such row, or the table is unreadable). */
  byName(name: string, workspace: string): Promise<string | undefined>;
  byServiceHost(host: ServiceHost): Promise<string | undefined>;
  /** Forgets a service mapping (e.g. after the owner answered 404 for it). */
  forgetService(host: ServiceHost): void;
}

export function createSandboxKeys(objects: GatewayObjects, opts: { ttlMs?: number; maxEntries?: number; now?: () => number } = {}): SandboxKeys {
  const ttl = opts.ttlMs ?? 5_000;
  const max = opts.maxEntries ?? 10_000;
  const now = opts.now ?? Date.now;
  const cache = new Map<string, { id: string; atMs: number }>();

  const cached = async (key: string, load: () => Promise<string | null | undefined>): Promise<string | undefined> => {
    const hit = cache.get(key);
    if (hit && now() - hit.atMs < ttl) return hit.id;
    const id = await load();
    if (typeof id !== 'string' || id === '') {
      cache.delete(key);
      return undefined;
    }
    cache.delete(key);
    cache.set(key, { id, atMs: now() });
    while (cache.size > max) cache.delete(cache.keys().next().value as string);
    return id;
  };
  // '\0' cannot occur in a name or workspace, so keys of the two kinds never collide.
  const serviceKey = (h: ServiceHost): string => `svc\0${h.workspace}\0${endpointKey(h)}`;

  return {
    byName: (name, workspace) => cached(`name\0${workspace}\0${name}`, () => objects.sandboxIdByName(name, workspace)),
    byServiceHost: (host) => cached(serviceKey(host), () => objects.serviceSandboxId(host.workspace, endpointKey(host))),
    forgetService: (host) => {
      cache.delete(serviceKey(host));
    },
  };
}
