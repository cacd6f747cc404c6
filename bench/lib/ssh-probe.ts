// One long-lived SSH session through a CONNECT tunnel, and the two measurements the SSH bench takes
// on it: small-message echo round trips over `cat`, and bulk download from `yes-bytes`.
import type net from 'node:net';
import ssh2 from 'ssh2';
import type { ClientChannel } from 'ssh2';
import { SANDBOX_SSH_PASSWORD, SANDBOX_SSH_USER } from '../../emulator/supervisor/ssh-server.ts';
import { openConnectTunnel } from '../../emulator/ssh-client.ts';

const CONNECT_TIMEOUT_MS = 30_000;
const SOCKET_CLOSE_GRACE_MS = 1000;

export interface SshProbe {
  /** `n` echo round trips of `message` through the open `cat` channel; microseconds each. */
  echo(n: number, message: Buffer, timeoutMs: number): Promise<Float64Array>;
  /** Runs `yes-bytes <bytes>` on a fresh channel; seconds from the exec request to the last byte. */
  bulk(bytes: number, timeoutMs: number): Promise<number>;
  close(): Promise<void>;
}

function withTimeout<T>(what: string, ms: number, run: (settle: (err: Error | null, value?: T) => void) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let done = false;
    const settle = (err: Error | null, value?: T): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (err) reject(err);
      else resolve(value as T);
    };
    const timer = setTimeout(() => settle(new Error(`${what} timed out after ${ms} ms`)), ms);
    run(settle);
  });
}

function connectSsh(sock: net.Socket): Promise<ssh2.Client> {
  const client = new ssh2.Client();
  return withTimeout<ssh2.Client>('ssh handshake', CONNECT_TIMEOUT_MS, (settle) => {
    client.once('ready', () => settle(null, client));
    client.once('error', (err: Error) => settle(err));
    client.once('close', () => settle(new Error('ssh connection closed during handshake')));
    client.connect({ sock, username: SANDBOX_SSH_USER, password: SANDBOX_SSH_PASSWORD, readyTimeout: CONNECT_TIMEOUT_MS });
  });
}

function exec(client: ssh2.Client, command: string): Promise<ClientChannel> {
  return new Promise((resolve, reject) => client.exec(command, (err, channel) => (err ? reject(err) : resolve(channel))));
}

/** CONNECT to `host:port` for the sandbox, log in, and start `cat` for the echo measurement. */
export async function openSshProbe(opts: { host: string; port: number; sandboxId: string; token: string }): Promise<SshProbe> {
  const tunnel = await openConnectTunnel({ ...opts, timeoutMs: CONNECT_TIMEOUT_MS });
  if (tunnel.status !== 200 || !tunnel.socket) {
    throw new Error(`CONNECT to ${opts.host}:${opts.port} answered ${tunnel.status}: ${tunnel.body.trim()}`);
  }
  const sock = tunnel.socket;
  // Echo messages are tiny: Nagle would measure the kernel's timer, not the path.
  sock.setNoDelay(true);
  let client: ssh2.Client;
  try {
    client = await connectSsh(sock);
  } catch (err) {
    sock.destroy();
    throw err;
  }
  // Errors after the handshake surface through the operation that is waiting.
  let lastError: Error | null = null;
  client.on('error', (err: Error) => {
    lastError = err;
  });
  let cat: ClientChannel;
  try {
    cat = await exec(client, 'cat');
  } catch (err) {
    client.end();
    sock.destroy();
    throw err;
  }
  cat.stderr.on('data', () => undefined);

  const closed = new Promise<void>((resolve) => {
    if (sock.destroyed) return resolve();
    sock.once('close', () => resolve());
  });

  return {
    echo(n, message, timeoutMs) {
      return withTimeout<Float64Array>(`${n} echo round trips`, timeoutMs, (settle) => {
        const samples = new Float64Array(n);
        const pending: Buffer[] = [];
        let got = 0;
        let i = 0;
        let start = 0n;
        const finish = (err: Error | null): void => {
          cat.off('data', onData);
          cat.off('close', onClose);
          settle(err, samples);
        };
        const send = (): void => {
          start = process.hrtime.bigint();
          cat.write(message);
        };
        const onData = (chunk: Buffer): void => {
          const end = process.hrtime.bigint();
          pending.push(chunk);
          got += chunk.length;
          if (got < message.length) return;
          const echoed = pending.length === 1 ? chunk : Buffer.concat(pending);
          if (got > message.length || !echoed.equals(message)) {
            return finish(new Error(`echo ${i}: sent ${message.length} bytes, got ${got} that do not match`));
          }
          samples[i++] = Number(end - start) / 1000;
          pending.length = 0;
          got = 0;
          if (i === n) return finish(null);
          send();
        };
        const onClose = (): void => finish(lastError ?? new Error(`cat channel closed after ${i} echoes`));
        cat.on('data', onData);
        cat.once('close', onClose);
        send();
      });
    },

    async bulk(bytes, timeoutMs) {
      const channel = await exec(client, `yes-bytes ${bytes}`);
      return withTimeout<number>(`yes-bytes ${bytes}`, timeoutMs, (settle) => {
        const start = process.hrtime.bigint();
        let received = 0;
        let lastByteAt = 0n;
        let code: number | null = null;
        const stderr: Buffer[] = [];
        channel.on('data', (chunk: Buffer) => {
          received += chunk.length;
          if (received >= bytes && lastByteAt === 0n) lastByteAt = process.hrtime.bigint();
        });
        channel.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
        channel.on('exit', (exitCode: unknown) => {
          code = typeof exitCode === 'number' ? exitCode : null;
        });
        channel.once('close', () => {
          if (received !== bytes || code !== 0) {
            const why = Buffer.concat(stderr).toString('utf8').trim();
            return settle(lastError ?? new Error(`yes-bytes: ${received}/${bytes} bytes, exit ${code}${why ? `: ${why}` : ''}`));
          }
          settle(null, Number(lastByteAt - start) / 1e9);
        });
        channel.end();
      }).catch((err: unknown) => {
        channel.destroy();
        throw err;
      });
    },

    async close() {
      cat.end();
      client.end();
      const force = setTimeout(() => sock.destroy(), SOCKET_CLOSE_GRACE_MS);
      await closed;
      clearTimeout(force);
    },
  };
}
