// A switchable TCP relay for partition tests: every new connection is piped to the current target,
// and `freeze()` turns the connections open at that moment into silent half-open ones, like a
// network partition in which the server never learns that its peer went away.
import net from 'node:net';

export interface RelayTarget {
  host: string;
  port: number;
}

export interface SwitchableRelay {
  /** Loopback port the relay listens on. */
  readonly port: number;
  /** Where new connections go from now on; open connections stay where they are. */
  setTarget(target: RelayTarget): void;
  /**
   * Every currently open connection stops forwarding bytes in both directions (anything buffered is
   * dropped), and a close on either side is no longer passed on: the server side stays open and
   * silent. New connections afterwards are relayed normally.
   */
  freeze(): void;
  /** The partition heals: the server sides of frozen connections are reset (any remaining client sides destroyed). */
  destroyFrozen(): void;
  /** Destroys every socket and stops listening. */
  close(): Promise<void>;
  /** Connections relayed normally (not frozen) that are still open. */
  activeConnections(): number;
  /** Frozen connections whose server side is still open. */
  frozenConnections(): number;
}

interface Pair {
  client: net.Socket;
  server: net.Socket;
  frozen: boolean;
}

const discard = (): void => undefined;

export async function startSwitchableRelay(initial: RelayTarget, host = '127.0.0.1'): Promise<SwitchableRelay> {
  let target: RelayTarget = { ...initial };
  const pairs = new Set<Pair>();
  let closing = false;

  const settle = (pair: Pair): void => {
    if (pair.client.destroyed && pair.server.destroyed) pairs.delete(pair);
  };

  const server = net.createServer((client) => {
    const upstream = net.connect({ host: target.host, port: target.port });
    const pair: Pair = { client, server: upstream, frozen: false };
    pairs.add(pair);
    if (closing) {
      client.destroy();
      upstream.destroy();
    }
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    // While relaying, either side ending takes the other with it; once frozen, nothing propagates.
    const onSide = (): void => {
      if (!pair.frozen) {
        client.destroy();
        upstream.destroy();
      }
      settle(pair);
    };
    client.on('error', onSide).on('close', onSide);
    upstream.on('error', onSide).on('close', onSide);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  server.on('error', () => undefined);

  const port = await new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve((server.address() as net.AddressInfo).port));
  });

  const freezePair = (pair: Pair): void => {
    if (pair.frozen) return;
    pair.frozen = true;
    const { client, server: upstream } = pair;
    client.unpipe(upstream);
    upstream.unpipe(client);
    // Keep reading and drop everything, so a close on either side is still noticed locally (and the
    // relay's own bookkeeping stays right) without being passed on.
    for (const s of [client, upstream]) {
      s.on('data', discard);
      s.resume();
    }
    settle(pair);
  };

  return {
    port,
    setTarget(t) {
      target = { ...t };
    },
    freeze() {
      for (const pair of pairs) freezePair(pair);
    },
    destroyFrozen() {
      for (const pair of [...pairs]) {
        if (!pair.frozen) continue;
        // A reset (RST), as a peer whose state was lost would answer after the partition heals.
        if (!pair.server.destroyed) pair.server.resetAndDestroy();
        pair.client.destroy();
        settle(pair);
      }
    },
    close() {
      closing = true;
      for (const pair of [...pairs]) {
        pair.client.destroy();
        pair.server.destroy();
      }
      pairs.clear();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
    activeConnections() {
      let n = 0;
      for (const p of pairs) if (!p.frozen && !p.client.destroyed && !p.server.destroyed) n++;
      return n;
    },
    frozenConnections() {
      let n = 0;
      for (const p of pairs) if (p.frozen && !p.server.destroyed) n++;
      return n;
    },
  };
}
