import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import ssh2 from 'ssh2';
import type { ClientChannel } from 'ssh2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runSshCommand } from '../../emulator/ssh-client.ts';
import { SANDBOX_SSH_USER, startSandboxSshServer } from '../../emulator/supervisor/ssh-server.ts';
import type { SandboxSshServer } from '../../emulator/supervisor/ssh-server.ts';

const run = promisify(execFile);
const SANDBOX = 'sbx-ssh-server-test';

let ssh: SandboxSshServer;
let keyDir: string;

beforeAll(async () => {
  ssh = await startSandboxSshServer({ sandboxId: SANDBOX });
  keyDir = await mkdtemp(join(tmpdir(), 'ohs-ssh-key-'));
});

afterAll(async () => {
  // Leak check: every test ended its SSH client.
  for (let waited = 0; ssh && ssh.connections > 0 && waited < 5000; waited += 20) await new Promise((r) => setTimeout(r, 20));
  const leaked = ssh?.connections ?? 0;
  await ssh?.close();
  if (keyDir) await rm(keyDir, { recursive: true, force: true });
  expect(leaked).toBe(0);
});

function dial(): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.1', port: ssh.port });
    sock.once('connect', () => {
      sock.off('error', reject);
      resolve(sock);
    });
    sock.once('error', reject);
  });
}

async function exec(command: string, stdin?: string) {
  return runSshCommand(await dial(), command, { stdin, timeoutMs: 10_000 });
}

describe('sandbox ssh server', () => {
  it('reports an OpenSSH-style host key fingerprint', () => {
    expect(ssh.hostKeyFingerprint).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
  });

  it('echo prints its arguments with exit code 0', async () => {
    expect(await exec('echo hi')).toEqual({ stdout: 'hi\n', stderr: '', code: 0 });
    expect((await exec('echo "two  words" and\\ more')).stdout).toBe('two  words and more\n');
  });

  it('sandbox-id prints the sandbox id', async () => {
    expect((await exec('sandbox-id')).stdout).toBe(`${SANDBOX}\n`);
  });

  it('cat copies stdin to stdout until EOF', async () => {
    expect(await exec('cat', 'piped\ninput')).toEqual({ stdout: 'piped\ninput', stderr: '', code: 0 });
  });

  it('an unknown command fails with 127 and says so on stderr', async () => {
    expect(await exec('frobnicate --now')).toEqual({ stdout: '', stderr: 'frobnicate: command not found\n', code: 127 });
  });

  it('exit, sleep and yes-bytes behave', async () => {
    expect((await exec('exit 7')).code).toBe(7);
    expect((await exec('sleep 0.05')).code).toBe(0);
    const bulk = await exec('yes-bytes 3000000');
    expect(bulk.code).toBe(0);
    expect(bulk.stdout.length).toBe(3_000_000);
    expect(/^y+$/.test(bulk.stdout)).toBe(true);
  });

  it('an interactive shell runs commands line by line until exit', async () => {
    const sock = await dial();
    const client = new ssh2.Client();
    const result = await new Promise<{ out: string; code: number | null }>((resolve, reject) => {
      client.on('error', reject);
      client.on('ready', () => {
        client.shell(false, (err: Error | undefined, channel: ClientChannel) => {
          if (err) return reject(err);
          let out = '';
          let code: number | null = null;
          channel.on('data', (d: Buffer) => (out += d.toString()));
          channel.on('exit', (c: number | null) => (code = c));
          channel.on('close', () => resolve({ out, code }));
          channel.write('echo hi\nsandbox-id\nnope\nexit 3\n');
        });
      });
      client.connect({ sock, username: SANDBOX_SSH_USER, password: 'openshell', readyTimeout: 10_000 });
    }).finally(() => client.end());
    expect(result).toEqual({ out: `$ hi\n$ ${SANDBOX}\n$ $ `, code: 3 });
  });

  it('a wrong password is refused', async () => {
    const sock = await dial();
    const client = new ssh2.Client();
    const err = await new Promise<Error & { level?: string }>((resolve, reject) => {
      client.on('error', resolve);
      client.on('ready', () => reject(new Error('logged in with a wrong password')));
      client.connect({ sock, username: SANDBOX_SSH_USER, password: 'wrong', readyTimeout: 10_000 });
    }).finally(() => client.end());
    expect(err.level).toBe('client-authentication');
  });

  it('another user is refused even with the right password', async () => {
    const sock = await dial();
    const client = new ssh2.Client();
    const err = await new Promise<Error & { level?: string }>((resolve, reject) => {
      client.on('error', resolve);
      client.on('ready', () => reject(new Error('logged in as root')));
      client.connect({ sock, username: 'root', password: 'openshell', readyTimeout: 10_000 });
    }).finally(() => client.end());
    expect(err.level).toBe('client-authentication');
  });

  it('the OpenSSH client logs in with any key and runs a command', async () => {
    const key = join(keyDir, 'k');
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', key]);
    const { stdout } = await run(
      '/usr/bin/ssh',
      [
        '-F', '/dev/null',
        '-i', key,
        '-o', 'IdentitiesOnly=yes',
        '-o', 'StrictHostKeyChecking=no',
        '-o', 'UserKnownHostsFile=/dev/null',
        '-o', 'BatchMode=yes',
        '-o', 'LogLevel=ERROR',
        '-p', String(ssh.port),
        `${SANDBOX_SSH_USER}@127.0.0.1`,
        'sandbox-id',
      ],
      { timeout: 20_000 },
    );
    expect(stdout).toBe(`${SANDBOX}\n`);
  });

  it('the OpenSSH client sees the exit code of a failing command', async () => {
    const key = join(keyDir, 'k2');
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', key]);
    const failure = await run(
      '/usr/bin/ssh',
      ['-F', '/dev/null', '-i', key, '-o', 'IdentitiesOnly=yes', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null',
        '-o', 'BatchMode=yes', '-o', 'LogLevel=ERROR', '-p', String(ssh.port), `${SANDBOX_SSH_USER}@127.0.0.1`, 'exit', '5'],
      { timeout: 20_000 },
    ).then(
      () => null,
      (err: { code?: number }) => err,
    );
    expect(failure?.code).toBe(5);
  });
});
