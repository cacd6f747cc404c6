// TCP_NODELAY of the TCP sockets another process holds (test/helpers/tcp-nodelay.py: Node has no
// getsockopt). Linux, with ptrace rights over that process (root, or the user that started it).
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export interface TcpSocketOption {
  local: number;
  remote: number;
  nodelay: 0 | 1;
}

const SCRIPT = fileURLToPath(new URL('./tcp-nodelay.py', import.meta.url));

export function tcpNoDelay(pid: number): TcpSocketOption[] {
  const out = execFileSync('python3', [SCRIPT, String(pid)], { timeout: 10_000 }).toString();
  return out
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line) as TcpSocketOption);
}
