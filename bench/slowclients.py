"""
Slow clients against a registry: does everyone else still get served?

    python bench/slowclients.py http://127.0.0.1:5000 [--trickle 100] [--stuck 200]
        [--attacker-address 127.0.0.2] [--hold 30] [--push-size 3MiB]

The attack, from C{--attacker-address} (another loopback address stands for
another host; give 127.0.0.1 to attack from the victim's own address):
    - C{--trickle} blob uploads (monolithic POSTs declaring 16 MiB) that send
      100 bytes every 0.5 s;
    - C{--stuck} connections that send part of a request's headers and then
      one header byte every 5 s, never finishing them.
Meanwhile an ordinary client (from 127.0.0.1) pushes a C{--push-size} blob
(POST, then PUT ?digest=) three times and times each push.  After C{--hold}
seconds it counts how many of the stuck connections the server still holds
open.  One JSON line with the figures is printed at the end.
"""

import argparse
import hashlib
import json
import os
import socket
import threading
import time
import urllib.parse
import urllib.request

from speedy.units import parse_size


def connect(host, port, source):
    sock = socket.socket()
    sock.settimeout(10)
    if source:
        sock.bind((source, 0))
    sock.connect((host, port))
    return sock


def still_open(sock):
    """@return: True if the server has not closed C{sock}."""
    sock.setblocking(False)
    try:
        data = sock.recv(65536)
        return False if data == b"" or data.startswith(b"HTTP/1.1 4") else True
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def trickler(host, port, source, repo, stop, opened):
    try:
        sock = connect(host, port, source)
    except OSError:
        return
    digest = "sha256:" + "0" * 64
    try:
        sock.sendall(f"POST /v2/{repo}/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: {host}\r\n"
                     f"Content-Type: application/octet-stream\r\nContent-Length: {16 << 20}\r\n\r\n"
                     .encode())
        opened.append(sock)
        while not stop.is_set():
            sock.sendall(b"x" * 100)
            stop.wait(0.5)
    except OSError:
        pass


def stuck(host, port, source, stop, sockets):
    try:
        sock = connect(host, port, source)
        sock.sendall(f"GET /v2/ HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode())
    except OSError:
        return
    sockets.append(sock)
    while not stop.is_set():
        stop.wait(5)
        try:
            sock.sendall(b"a")
        except OSError:
            return


def push(base, repo, blob):
    """@return: seconds one monolithic push of C{blob} took, or None if it failed."""
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    started = time.monotonic()
    try:
        request = urllib.request.Request(f"{base}/v2/{repo}/blobs/uploads/", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=300) as answer:
            location = answer.headers["Location"]
        url = urllib.parse.urljoin(base, location)
        url += ("&" if "?" in url else "?") + "digest=" + urllib.parse.quote(digest)
        request = urllib.request.Request(url, method="PUT", data=blob,
                                         headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(request, timeout=300) as answer:
            answer.read()
    except OSError as e:
        print(f"push failed: {e}")
        return None
    return time.monotonic() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--trickle", type=int, default=100)
    parser.add_argument("--stuck", type=int, default=200)
    parser.add_argument("--attacker-address", default="127.0.0.2")
    parser.add_argument("--hold", type=float, default=30.0)
    parser.add_argument("--push-size", type=parse_size, default="3MiB")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    parsed = urllib.parse.urlsplit(args.url)
    host, port = parsed.hostname, parsed.port or 80
    blob = os.urandom(args.push_size)
    quiet = [push(args.url, "bench/slow-quiet", blob) for _ in range(3)]

    stop = threading.Event()
    trickling, stuck_sockets, threads = [], [], []
    for i in range(args.trickle):
        threads.append(threading.Thread(target=trickler, daemon=True, args=(
            host, port, args.attacker_address, f"bench/slow-{i}", stop, trickling)))
    for _ in range(args.stuck):
        threads.append(threading.Thread(target=stuck, daemon=True, args=(
            host, port, args.attacker_address, stop, stuck_sockets)))
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    attacked = [push(args.url, "bench/slow-victim", blob) for _ in range(3)]
    started = time.monotonic()
    remaining = args.hold - 2.0 - sum(t or 0 for t in attacked)
    if remaining > 0:
        time.sleep(remaining)
    stuck_open = sum(still_open(s) for s in list(stuck_sockets))
    trickling_open = sum(still_open(s) for s in list(trickling))
    stop.set()
    for sock in stuck_sockets + trickling:
        sock.close()
    figures = {
        "label": args.label, "url": args.url, "attacker": args.attacker_address,
        "push_size": args.push_size, "push_seconds_quiet": quiet,
        "push_seconds_attacked": attacked,
        "stuck_connections": args.stuck, "stuck_accepted": len(stuck_sockets),
        "stuck_open_after_s": round(args.hold, 1), "stuck_open": stuck_open,
        "trickling_uploads": args.trickle, "trickling_open": trickling_open,
        "waited": round(time.monotonic() - started, 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
