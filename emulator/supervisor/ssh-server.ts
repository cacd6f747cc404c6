// A sandbox's SSH daemon: a real ssh2 server with a tiny built-in command interpreter. It stands in for
// the SSH server the supervisor bridges relays to (reference §2.2 step 5: the supervisor dials the
// sandbox's SSH endpoint after `RelayOpen`), so a standard OpenSSH client can log in end to end.
import { createHash } from 'node:crypto';
import net from 'node:net';
import ssh2 from 'ssh2';
import type { AuthContext, Connection, ServerChannel, Session } from 'ssh2';
import { pino } from 'pino';
import type { Logger } from 'pino';
import { runCommand } from './commands.ts';
import type { CommandIo } from './commands.ts';

export const SANDBOX_SSH_USER = 'sandbox';
export const SANDBOX_SSH_PASSWORD = 'openshell';

/** How long `close()` waits for clients to go after asking them to, before destroying their sockets. */
const CLOSE_GRACE_MS = 1000;

export interface SandboxSshServerOptions {
  sandboxId: string;
  host?: string;
  port?: number;
  logger?: Logger;
}

export interface SandboxSshServer {
  readonly port: number;
  /** OpenSSH-style `SHA256:<base64>` fingerprint of the host key generated at start. */
  readonly hostKeyFingerprint: string;
  /** SSH client connections currently open. */
  readonly connections: number;
  close(): Promise<void>;
}

function fingerprint(publicSsh: Buffer): string {
  return `SHA256:${createHash('sha256').update(publicSsh).digest('base64').replace(/=+$/, '')}`;
}

function authenticate(ctx: AuthContext): void {
  if (ctx.username !== SANDBOX_SSH_USER) return ctx.reject();
  switch (ctx.method) {
    case 'password':
      return ctx.password === SANDBOX_SSH_PASSWORD ? ctx.accept() : ctx.reject();
    case 'publickey': {
      // Any key is welcome, but the client must prove it holds it: without a signature this is only
      // the "would you accept this key?" query.
      if (!ctx.signature) return ctx.accept();
      const key = ssh2.utils.parseKey(ctx.key.data);
      if (key instanceof Error || !ctx.blob) return ctx.reject();
      return key.verify(ctx.blob, ctx.signature, ctx.hashAlgo) ? ctx.accept() : ctx.reject();
    }
    default:
      return ctx.reject(['publickey', 'password']);
  }
}

function waitDrain(channel: ServerChannel, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = (): void => {
      channel.off('drain', done);
      signal.removeEventListener('abort', done);
      resolve();
    };
    channel.on('drain', done);
    signal.addEventListener('abort', done, { once: true });
  });
}

/** Command I/O over one session channel; with a pty, `\n` becomes `\r\n` as a terminal expects. */
function channelIo(channel: ServerChannel, signal: AbortSignal, pty: boolean, withStdin: boolean): CommandIo {
  const tty = (text: string): string => (pty ? text.replace(/\r?\n/g, '\r\n') : text);
  return {
    signal,
    async write(chunk) {
      if (signal.aborted) return;
      if (!channel.write(typeof chunk === 'string' ? tty(chunk) : chunk)) await waitDrain(channel, signal);
    },
    writeErr(text) {
      if (!signal.aborted) channel.stderr.write(tty(text));
    },
    readStdin: withStdin
      ? (onChunk) =>
          new Promise<void>((resolve) => {
            if (signal.aborted) return resolve();
            const onData = (chunk: Buffer): void => {
              // One chunk in flight at a time: stdin is only read as fast as stdout drains.
              channel.pause();
              void onChunk(chunk).then(() => channel.resume());
            };
            const finish = (): void => {
              channel.off('data', onData);
              channel.off('end', finish);
              signal.removeEventListener('abort', finish);
              resolve();
            };
            channel.on('data', onData);
            channel.once('end', finish);
            signal.addEventListener('abort', finish, { once: true });
          })
      : null,
  };
}

/** exit-status first, then EOF and close: the order OpenSSH needs to report the code. */
function finishChannel(channel: ServerChannel, signal: AbortSignal, code: number): void {
  if (signal.aborted) return;
  channel.exit(code);
  channel.end();
}

function closeSignal(channel: ServerChannel, log: Logger): AbortSignal {
  const ac = new AbortController();
  channel.on('close', () => ac.abort());
  channel.on('error', (err: Error) => log.debug({ err }, 'ssh channel error'));
  return ac.signal;
}

function runExec(channel: ServerChannel, command: string, sandboxId: string, pty: boolean, log: Logger): void {
  const signal = closeSignal(channel, log);
  runCommand(command, { sandboxId, lastCode: 0 }, channelIo(channel, signal, pty, true)).then(
    (result) => finishChannel(channel, signal, result.code),
    (err: unknown) => {
      log.warn({ err }, 'ssh exec failed');
      finishChannel(channel, signal, 1);
    },
  );
}

/** Line-by-line REPL over the same built-ins. `cat` has no stdin here (input is the command lines). */
function runShell(channel: ServerChannel, sandboxId: string, pty: boolean, log: Logger): void {
  const signal = closeSignal(channel, log);
  const io = channelIo(channel, signal, pty, false);
  const echo = (text: string): void => {
    if (pty && !signal.aborted) channel.write(text);
  };
  const lines: string[] = [];
  let partial = '';
  let running = false;
  let finished = false;
  let lastCode = 0;

  const pump = async (): Promise<void> => {
    if (running || finished) return;
    running = true;
    try {
      for (let line = lines.shift(); line !== undefined && !finished; line = lines.shift()) {
        const result = await runCommand(line, { sandboxId, lastCode }, io);
        lastCode = result.code;
        if (result.exit) {
          finished = true;
          channel.off('data', onData);
          finishChannel(channel, signal, result.code);
          return;
        }
        await io.write('$ ');
      }
    } finally {
      running = false;
    }
  };
  const kick = (): void => {
    pump().catch((err: unknown) => {
      log.warn({ err }, 'ssh shell failed');
      finished = true;
      finishChannel(channel, signal, 1);
    });
  };

  const onData = (data: Buffer): void => {
    for (const ch of data.toString('utf8')) {
      if (ch === '\n' || (pty && ch === '\r')) {
        echo('\r\n');
        lines.push(partial.replace(/\r$/, ''));
        partial = '';
      } else if (pty && (ch === '\x7f' || ch === '\b')) {
        if (partial.length > 0) {
          partial = partial.slice(0, -1);
          echo('\b \b');
        }
      } else if (pty && ch === '\x03') {
        echo('^C\r\n');
        partial = '';
        lines.push('');
      } else if (pty && ch === '\x04') {
        if (partial === '') lines.push('exit');
      } else {
        partial += ch;
        echo(ch);
      }
    }
    kick();
  };
  channel.on('data', onData);
  channel.once('end', () => {
    if (partial !== '') lines.push(partial);
    lines.push('exit');
    kick();
  });
  void io.write('$ ');
}

function handleSession(session: Session, sandboxId: string, log: Logger): void {
  let pty = false;
  session.on('pty', (accept) => {
    pty = true;
    accept?.();
  });
  session.on('env', (accept) => accept?.());
  session.on('window-change', (accept) => accept?.());
  session.on('signal', (accept) => accept?.());
  session.on('exec', (accept, _reject, info) => runExec(accept(), info.command, sandboxId, pty, log));
  session.on('shell', (accept) => runShell(accept(), sandboxId, pty, log));
}

/**
 * A fresh ed25519 host key. ssh2 occasionally emits a key its own parser rejects (seen in the
 * baseline test), so a few attempts are made before giving up.
 */
function generateHostKey(): { keys: { private: string }; hostKey: ssh2.ParsedKey } {
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 5; attempt++) {
    const keys = ssh2.utils.generateKeyPairSync('ed25519');
    const hostKey = ssh2.utils.parseKey(keys.private);
    if (!(hostKey instanceof Error)) return { keys, hostKey };
    lastError = hostKey;
  }
  throw lastError ?? new Error('could not generate a host key');
}

export async function startSandboxSshServer(opts: SandboxSshServerOptions): Promise<SandboxSshServer> {
  const log = (opts.logger ?? pino({ level: 'silent' })).child({ component: 'sandbox-ssh', sandbox: opts.sandboxId });
  const { keys, hostKey } = generateHostKey();

  const clients = new Set<Connection>();
  const sockets = new Set<net.Socket>();
  const ssh = new ssh2.Server({ hostKeys: [keys.private] }, (client, info) => {
    const clog = log.child({ peer: `${info.ip}:${info.port}` });
    clients.add(client);
    client.on('error', (err) => clog.debug({ err }, 'ssh client error'));
    client.on('close', () => clients.delete(client));
    client.on('authentication', authenticate);
    client.on('session', (accept) => handleSession(accept(), opts.sandboxId, clog));
  });

  ssh.on('error', (err: Error) => log.warn({ err }, 'ssh server error'));

  // We own the listening socket (and hand each TCP connection to ssh2) so close() can destroy stragglers.
  // Without TCP_NODELAY ssh2's small packets wait on the peer's delayed ACK (~40 ms each): an SSH
  // connect and exec on loopback took 92 ms instead of 4, and 312 ms where ssh2's native crypto
  // binding does not load (Node 24 with node_modules built for Node 20). The harness would measure
  // its own sandbox, not the hop in front of it.
  const tcp = net.createServer({ noDelay: true }, (socket) => {
    sockets.add(socket);
    socket.on('error', (err) => log.debug({ err }, 'ssh socket error'));
    socket.on('close', () => sockets.delete(socket));
    ssh.injectSocket(socket);
  });
  tcp.on('error', (err) => log.warn({ err }, 'ssh listener error'));
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    tcp.once('error', onError);
    tcp.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => {
      tcp.off('error', onError);
      resolve();
    });
  });
  const address = tcp.address() as net.AddressInfo;
  log.debug({ port: address.port }, 'sandbox ssh listening');

  let closing: Promise<void> | undefined;
  return {
    port: address.port,
    hostKeyFingerprint: fingerprint(hostKey.getPublicSSH()),
    get connections() {
      return clients.size;
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
        tcp.close(() => resolve());
        for (const client of clients) client.end();
        const force = setTimeout(() => {
          for (const socket of sockets) socket.destroy();
        }, CLOSE_GRACE_MS);
        force.unref();
        tcp.once('close', () => clearTimeout(force));
      });
      return closing;
    },
  };
}
