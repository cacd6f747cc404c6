// Pods with their own addresses, without containers: one network namespace per pod, a veth pair
// into a bridge in the host namespace (the node's pod network), the bridge address as the node.
// Everything is named with a random tag and removed on close, and at process exit if a test dies.
import { execFileSync } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';

export interface PodNet {
  readonly index: number;
  /** The network namespace (`ip netns exec <ns> …`). */
  readonly ns: string;
  readonly ip: string;
  /** The host end of the pod's veth pair: `ip link set <it> down` cuts the pod off like a dead node link. */
  readonly hostLink: string;
}

export interface PodNetwork {
  readonly bridge: string;
  /** The bridge's address: the node as the pods see it (relays to Postgres and Redis, the Service). */
  readonly hostIp: string;
  readonly pods: PodNet[];
  addPod(): PodNet;
  setLink(pod: PodNet, up: boolean): void;
  close(): void;
}

function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 10_000 });
}

/** Whether this process may create namespaces (root with iproute2); the reason when it may not. */
export function namespaceSupport(): { ok: true } | { ok: false; reason: string } {
  if (process.platform !== 'linux') return { ok: false, reason: `network namespaces need Linux (this is ${process.platform})` };
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return { ok: false, reason: 'network namespaces need root' };
  const probe = `ohsprobe${randomBytes(3).toString('hex')}`;
  try {
    ip('netns', 'add', probe);
    ip('netns', 'del', probe);
    return { ok: true };
  } catch (err) {
    return { ok: false, reason: `cannot create a network namespace (${(err as Error).message.split('\n')[0]})` };
  }
}

const live = new Set<PodNetwork>();
let hooked = false;

export function createPodNetwork(): PodNetwork {
  const tag = randomBytes(2).toString('hex');
  const used = ip('-o', 'addr', 'show');
  let third = randomInt(1, 250);
  for (let i = 0; i < 250 && used.includes(`10.213.${third}.`); i++) third = (third % 250) + 1;
  const prefix = `10.213.${third}`;
  const bridge = `ohsbr${tag}`;
  const pods: PodNet[] = [];
  const namespaces: string[] = [];
  let closed = false;

  const close = (): void => {
    if (closed) return;
    closed = true;
    live.delete(net);
    // Deleting a namespace deletes its veth end, which deletes the pair.
    for (const ns of namespaces) {
      try {
        ip('netns', 'del', ns);
      } catch {
        // already gone
      }
    }
    try {
      ip('link', 'del', bridge);
    } catch {
      // already gone
    }
  };

  const net: PodNetwork = {
    bridge,
    hostIp: `${prefix}.1`,
    pods,
    addPod() {
      const index = pods.length;
      const ns = `ohs-${tag}-pod${index}`;
      const hostLink = `ohsv${tag}${index}`;
      const peer = `ohsp${tag}${index}`;
      const podIp = `${prefix}.${10 + index}`;
      ip('netns', 'add', ns);
      namespaces.push(ns);
      ip('link', 'add', hostLink, 'type', 'veth', 'peer', 'name', peer);
      ip('link', 'set', peer, 'netns', ns);
      ip('link', 'set', hostLink, 'master', bridge);
      ip('link', 'set', hostLink, 'up');
      ip('-n', ns, 'link', 'set', peer, 'name', 'eth0');
      ip('-n', ns, 'addr', 'add', `${podIp}/24`, 'dev', 'eth0');
      ip('-n', ns, 'link', 'set', 'eth0', 'up');
      ip('-n', ns, 'link', 'set', 'lo', 'up');
      ip('-n', ns, 'route', 'add', 'default', 'via', `${prefix}.1`);
      const pod = { index, ns, ip: podIp, hostLink };
      pods.push(pod);
      return pod;
    },
    setLink(pod, up) {
      ip('link', 'set', pod.hostLink, up ? 'up' : 'down');
    },
    close,
  };

  if (!hooked) {
    hooked = true;
    process.once('exit', () => {
      for (const n of live) n.close();
    });
  }
  live.add(net);
  try {
    // Bridged pod traffic must not depend on the host's firewall (br_netfilter may be loaded).
    try {
      ip('link', 'add', bridge, 'type', 'bridge', 'nf_call_iptables', '0');
    } catch {
      ip('link', 'add', bridge, 'type', 'bridge');
    }
    ip('addr', 'add', `${prefix}.1/24`, 'dev', bridge);
    ip('link', 'set', bridge, 'up');
  } catch (err) {
    close();
    throw err;
  }
  return net;
}
