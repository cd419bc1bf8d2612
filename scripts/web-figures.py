#!/usr/bin/env python3
"""Figures of the web listener that the verifier does not take (BENCHMARKS.md).

Against a running server on 127.0.0.1 (standard library only):

  web-figures.py idle-memory PID [--transport ws|sse] [--count 10000]
      RSS of the server process PID before and after COUNT idle web
      sessions (each registered, its verdict read), per session.
  web-figures.py healthz [--idle 1000]
      holds IDLE connections that send nothing on webPort and on
      metricsPort, then times GET /healthz and GET / (20 each).
  web-figures.py reconnect [--count 1000]
      for COUNT users: open a WebSocket, read the verdict, close, resume
      with stream/after; times each resume from connect to its verdict.

Ports come from webPort and metricsPort in the environment (9080, 9191).
Raise the open-files limit first (`ulimit -n 30000`) for thousands.
"""

import argparse
import base64
import os
import socket
import statistics
import time

WEB = int(os.environ.get("webPort", "9080"))
METRICS = int(os.environ.get("metricsPort", "9191"))
HOST = "127.0.0.1"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def read_until(sock, marker, buffer=b""):
    while marker not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"closed before {marker!r}: {buffer!r}")
        buffer += chunk
    return buffer


def ws_open(user, stream="", after=""):
    """Opens /ws for user; returns the socket and the verdict line."""
    sock = socket.create_connection((HOST, WEB))
    key = base64.b64encode(os.urandom(16)).decode()
    query = f"user={user}" + (f"&stream={stream}&after={after}" if stream else "")
    sock.sendall(
        (
            f"GET /ws?{query} HTTP/1.1\r\nHost: {HOST}:{WEB}\r\nConnection: Upgrade\r\n"
            f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        ).encode()
    )
    buffer = read_until(sock, b"\r\n\r\n")
    head, rest = buffer.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head.decode(errors="replace"))
    # The first frame: a text message starting with the verdict.
    while len(rest) < 2 or len(rest) < 2 + frame_length(rest):
        rest += sock.recv(65536)
    payload = rest[2 : 2 + frame_length(rest)] if rest[1] < 126 else rest[4:]
    return sock, payload.split(b"\r\n", 1)[0].decode()


def frame_length(frame):
    length = frame[1] & 0x7F
    if length == 126:
        return 2 + int.from_bytes(frame[2:4], "big") if len(frame) >= 4 else 1 << 30
    return length


def sse_open(user):
    sock = socket.create_connection((HOST, WEB))
    sock.sendall(f"GET /events?user={user} HTTP/1.1\r\nHost: {HOST}:{WEB}\r\n\r\n".encode())
    read_until(sock, b"data: #OK")
    return sock


def idle_memory(args):
    before = rss_kib(args.pid)
    sockets = []
    for user in range(args.count):
        sockets.append(ws_open(user + 1)[0] if args.transport == "ws" else sse_open(user + 1))
    time.sleep(1)  # let the server's allocator settle before reading RSS
    after = rss_kib(args.pid)
    per = (after - before) * 1024 / args.count
    print(
        f"{args.transport}: {args.count} idle sessions, RSS {before} -> {after} KiB, "
        f"{per:.0f} bytes per session"
    )
    for sock in sockets:
        sock.close()


def get(port, path):
    sock = socket.create_connection((HOST, port))
    start = time.perf_counter()
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    return time.perf_counter() - start, answer.split(b" ", 2)[1].decode()


def healthz(args):
    idle = [socket.create_connection((HOST, port)) for port in (WEB, METRICS) for _ in range(args.idle)]
    for port, path in ((METRICS, "/healthz"), (WEB, "/")):
        times = []
        for _ in range(20):
            elapsed, status = get(port, path)
            assert status == "200", status
            times.append(elapsed * 1000)
        print(
            f"{path} on :{port} with {args.idle} idle on each port: "
            f"median {statistics.median(times):.2f} ms, max {max(times):.2f} ms"
        )
    for sock in idle:
        sock.close()


def reconnect(args):
    times = []
    for user in range(1, args.count + 1):
        sock, verdict = ws_open(user)
        _, stream, seq = verdict.split("|")
        sock.close()
        start = time.perf_counter()
        sock, verdict = ws_open(user, stream, seq)
        times.append((time.perf_counter() - start) * 1000)
        assert verdict.startswith(("#OK|", "#GAP|")), verdict
        sock.close()
    times.sort()
    p = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    print(
        f"WebSocket resume, connect to verdict, {len(times)} resumes: "
        f"p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms, max {times[-1]:.2f} ms"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    memory = commands.add_parser("idle-memory")
    memory.add_argument("pid", type=int)
    memory.add_argument("--transport", choices=("ws", "sse"), default="ws")
    memory.add_argument("--count", type=int, default=10000)
    health = commands.add_parser("healthz")
    health.add_argument("--idle", type=int, default=1000)
    again = commands.add_parser("reconnect")
    again.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    {"idle-memory": idle_memory, "healthz": healthz, "reconnect": reconnect}[args.command](args)


if __name__ == "__main__":
    main()
