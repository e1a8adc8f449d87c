#!/usr/bin/env python3
"""A hostile SFTP server for credgate's probe tests (tests/api/probes).

Usage: hostile_sftp.py endless|trickle|stall

Listens on a free loopback port, prints that port on the first line of
stdout, and accepts any user with any password or key. What it does once the
client opens the SFTP subsystem depends on the mode:

- endless: speaks just enough SFTP v3 (INIT, OPENDIR, READDIR, CLOSE) to
  list a directory whose READDIR never reaches the end: every answer carries
  a new batch of long, unique names, at once.
- trickle: the same directory, one name per answer, each answer 50 ms late:
  every call is answered in time, the listing never is.
- stall: accepts the subsystem and never answers anything on it.

It exits when its stdin closes, so it never outlives the test process that
started it, even when that process is killed. Needs paramiko
(scripts/install-test-deps.sh installs it).
"""

import itertools
import os
import socket
import struct
import sys
import threading
import time

import paramiko

# SFTP v3 packet types (draft-ietf-secsh-filexfer-02).
FXP_INIT, FXP_VERSION, FXP_OPEN, FXP_CLOSE = 1, 2, 3, 4
FXP_OPENDIR, FXP_READDIR = 11, 12
FXP_STATUS, FXP_HANDLE, FXP_NAME = 101, 102, 104
FX_OK, FX_OP_UNSUPPORTED = 0, 8

# One READDIR answer: 100 names of 200 bytes, about 25 kB, well below
# libssh2's packet limit, so the client accepts every one of them.
BATCH = 100
NAME_LENGTH = 200

MODE = sys.argv[1] if len(sys.argv) > 1 else "endless"
HOST_KEY = paramiko.ECDSAKey.generate()
COUNTER = itertools.count()


def string(data):
    return struct.pack(">I", len(data)) + data


def packet(kind, body):
    return struct.pack(">IB", len(body) + 1, kind) + body


def read_exact(channel, n):
    data = b""
    while len(data) < n:
        chunk = channel.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def name_batch(request_id, count):
    body = struct.pack(">II", request_id, count)
    for _ in range(count):
        name = ("f%d-" % next(COUNTER)).encode().ljust(NAME_LENGTH, b"x")
        # filename, longname, attrs with no flags set
        body += string(name) + string(name) + struct.pack(">I", 0)
    return packet(FXP_NAME, body)


def status(request_id, code):
    return packet(FXP_STATUS, struct.pack(">II", request_id, code) + string(b"") + string(b""))


def serve_endless(channel):
    try:
        while True:
            (length,) = struct.unpack(">I", read_exact(channel, 4))
            payload = read_exact(channel, length)
            kind = payload[0]
            if kind == FXP_INIT:
                channel.sendall(packet(FXP_VERSION, struct.pack(">I", 3)))
                continue
            (request_id,) = struct.unpack(">I", payload[1:5])
            if kind == FXP_OPENDIR:
                channel.sendall(packet(FXP_HANDLE, struct.pack(">I", request_id) + string(b"dir")))
            elif kind == FXP_READDIR and MODE == "trickle":
                time.sleep(0.05)
                channel.sendall(name_batch(request_id, 1))
            elif kind == FXP_READDIR:
                channel.sendall(name_batch(request_id, BATCH))
            elif kind == FXP_CLOSE:
                channel.sendall(status(request_id, FX_OK))
            else:
                channel.sendall(status(request_id, FX_OP_UNSUPPORTED))
    except (EOFError, OSError, socket.error):
        pass


def serve_stall(channel):
    # Read and drop whatever comes, never answer: the channel stays open
    # until the client goes away.
    try:
        while channel.recv(65536):
            pass
    except (EOFError, OSError, socket.error):
        pass


class Server(paramiko.ServerInterface):
    def get_allowed_auths(self, username):
        return "password,publickey"

    def check_auth_password(self, username, password):
        return paramiko.AUTH_SUCCESSFUL

    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind, chanid):
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_subsystem_request(self, channel, name):
        if name != "sftp":
            return False
        serve = serve_stall if MODE == "stall" else serve_endless
        threading.Thread(target=serve, args=(channel,), daemon=True).start()
        return True


def handle(conn):
    # Without it, Nagle's algorithm and the client's delayed ACK add some
    # 40 ms to every READDIR answer.
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(conn)
    transport.add_server_key(HOST_KEY)
    try:
        transport.start_server(server=Server())
        # Keep the transport and its channels alive until the client leaves:
        # paramiko closes a channel whose object is garbage collected.
        channels = []
        while transport.is_active():
            channel = transport.accept(timeout=1)
            if channel is not None:
                channels.append(channel)
    except (EOFError, OSError, paramiko.SSHException):
        pass
    finally:
        transport.close()


def exit_when_stdin_closes():
    while sys.stdin.buffer.read(1024):
        pass
    os._exit(0)


def main():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
