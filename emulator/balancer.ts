// A TCP balancer standing in for a Kubernetes ClusterIP Service: each new TCP connection goes to
// the next backend (round robin, deterministic for tests) or to a random one (as kube-proxy's
// iptables mode picks), and stays there (kube-proxy pins connections).
import net from 'node:net';

export interface Backend {
  host: string;
  port: number;
}

export interface Balancer {
  port: number;
  /** Connections accepted per backend index, in order of backends(). */
  counts: number[];
  setBackends(backends: Backend[]): void;
  close(): Promise<void>;
}

export type BalancerPick = 'round-robin' | 'random';

export async function startBalancer(initial: Backend[], host = '127.0.0.1', listenPort = 0, pick: BalancerPick = 'round-robin'): Promise<Balancer> {
  let backends = [...initial];
  let next = 0;
  const counts: number[] = backends.map(() => 0);
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    if (backends.length === 0) {
      client.destroy();
      return;
    }
    // Round robin can pin a client that opens connections in a fixed pattern (two per supervisor,
    // say) to one backend; random cannot.
    const idx = pick === 'random' ? Math.floor(Math.random() * backends.length) : next++ % backends.length;
    const target = backends[idx] as Backend;
    counts[idx] = (counts[idx] ?? 0) + 1;
    const upstream = net.connect(target.port, target.host);
    sockets.add(upstream);
    upstream.on('close', () => sockets.delete(upstream));
    upstream.setNoDelay(true);
    client.setNoDelay(true);
    let closed = false;
    const cleanup = (): void => {
      if (closed) return;
      closed = true;
      client.destroy();
      upstream.destroy();
    };
    client.on('error', cleanup);
    upstream.on('error', cleanup);
    client.on('close', cleanup);
    upstream.on('close', cleanup);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  server.on('error', () => undefined);
  const port = await new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listenPort, host, () => resolve((server.address() as net.AddressInfo).port));
  });
  return {
    port,
    counts,
    setBackends(b) {
      backends = [...b];
      next = 0;
      counts.length = 0;
      for (let i = 0; i < b.length; i++) counts.push(0);
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
