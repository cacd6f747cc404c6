// Raw bytes for tests that speak below the HTTP clients: a one-shot TCP exchange and gRPC framing.
import net from 'node:net';

/** Writes `bytes` on a fresh connection; resolves with what came back and whether the far side closed it. */
export function rawExchange(port: number, bytes: Buffer, waitMs = 5000): Promise<{ reply: Buffer; closedByPeer: boolean }> {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      sock.destroy();
    }, waitMs);
    sock.on('data', (d: Buffer) => chunks.push(d));
    sock.on('error', () => undefined);
    sock.on('close', () => {
      clearTimeout(timer);
      resolve({ reply: Buffer.concat(chunks), closedByPeer: !timedOut });
    });
    sock.on('connect', () => sock.write(bytes));
  });
}

/** One gRPC length-prefixed message: `[compressed][u32 BE length][body]`. */
export function grpcFrame(body: Buffer, compressed = 0): Buffer {
  const prefix = Buffer.alloc(5);
  prefix[0] = compressed;
  prefix.writeUInt32BE(body.length, 1);
  return Buffer.concat([prefix, body]);
}
