#!/usr/bin/env python3
"""TCP_NODELAY of every TCP socket another process holds: one JSON line each.

Usage: tcp-nodelay.py PID
Prints {"local": port, "remote": port, "nodelay": 0|1} per socket. Node has no getsockopt, so a
test that must know whether a socket of a process it started has Nagle's algorithm off asks here:
the socket is copied out of that process with pidfd_getfd(2) (Linux 5.6; needs ptrace rights
over it, which root and the parent's own user have), read, and the copy closed (the process's
socket is untouched).
"""
import ctypes
import json
import os
import socket
import sys

SYS_PIDFD_GETFD = 438  # the same on x86_64 and aarch64


def ports_by_inode(pid: int) -> dict:
    out = {}
    for name in ('tcp', 'tcp6'):
        try:
            with open(f'/proc/{pid}/net/{name}') as f:
                next(f)
                for line in f:
                    cols = line.split()
                    local, remote, inode = cols[1], cols[2], cols[9]
                    out[inode] = (int(local.rsplit(':', 1)[1], 16), int(remote.rsplit(':', 1)[1], 16))
        except FileNotFoundError:
            pass
    return out


def main() -> int:
    if len(sys.argv) != 2:
        print('usage: tcp-nodelay.py PID', file=sys.stderr)
        return 2
    pid = int(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    ports = ports_by_inode(pid)
    pidfd = os.pidfd_open(pid)
    try:
        for fd in os.listdir(f'/proc/{pid}/fd'):
            try:
                link = os.readlink(f'/proc/{pid}/fd/{fd}')
            except OSError:
                continue  # closed meanwhile
            if not link.startswith('socket:['):
                continue
            inode = link[len('socket:['):-1]
            if inode not in ports:
                continue  # not TCP
            copy = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(fd), 0)
            if copy < 0:
                err = ctypes.get_errno()
                if err == 9:  # EBADF: closed meanwhile
                    continue
                print(f'pidfd_getfd: {os.strerror(err)}', file=sys.stderr)
                return 1
            s = socket.socket(fileno=copy)
            try:
                nodelay = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            finally:
                s.close()
            local, remote = ports[inode]
            print(json.dumps({'local': local, 'remote': remote, 'nodelay': 1 if nodelay else 0}))
    finally:
        os.close(pidfd)
    return 0


if __name__ == '__main__':
    sys.exit(main())
