"""
V1 against V2 push and pull throughput on one local cluster, by hand (not
part of the tests).

Starts a Speedy cluster with C{tools/speedy-cluster up} on free ports (one
replica group of three chunkservers, one imageserver, in a temp dir), then
for each phase moves C{--count} layers of C{--size} bytes one after the
other: V1 pushes (image JSON, the layer, the payload checksum) with the
layer sent with chunked transfer encoding as Docker 1.x sent it, or with a
C{Content-Length}; V2 pushes (a monolithic C{POST ?digest=}) both ways
too; and the pulls of each, every pulled layer checked against what was
pushed.  One JSON line per phase: MiB/s and seconds.

    python bench/bench_v1.py [--count 8] [--size 64MiB] [--chunk-size 16MiB] [--rounds 3]

Every kind is measured once per round, in turn, and the medians over the
rounds close the output (the machine's other load moves single runs a
lot).
"""

import argparse
import hashlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from speedy import localcluster  # noqa: E402
from speedy.units import parse_size  # noqa: E402

PIECE = 1 << 20

#: Each push kind: the API, and how the layer's body is sent.
KINDS = ("v1 chunked", "v1 length", "v2 chunked", "v2 length")


def request(address, method, path, body=None, headers=None):
    """@return: C{(status, headers dict, body bytes)}."""
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=600)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def pieces(data):
    view = memoryview(data)
    for start in range(0, len(data), PIECE):
        yield view[start:start + PIECE]


def expect(status, wanted, what):
    if status != wanted:
        raise SystemExit(f"{what}: HTTP {status}, wanted {wanted}")


def image_json(image):
    return json.dumps({"id": image}).encode()


def payload_checksum(image, layer):
    """The client's checksum of a V1 push, computed before the clock starts
    (Docker computes it while it sends the layer: not the registry's cost)."""
    return "sha256:" + hashlib.sha256(image_json(image) + b"\n" + layer).hexdigest()


def push_v1(address, image, layer, payload, chunked=True):
    document = image_json(image)
    expect(request(address, "PUT", f"/v1/images/{image}/json", document)[0], 200, "V1 json")
    body = pieces(layer) if chunked else layer
    expect(request(address, "PUT", f"/v1/images/{image}/layer", body)[0], 200, "V1 layer")
    status = request(address, "PUT", f"/v1/images/{image}/checksum",
                     headers={"X-Docker-Checksum-Payload": payload})[0]
    expect(status, 200, "V1 checksum")


def pull_v1(address, image):
    status, _, body = request(address, "GET", f"/v1/images/{image}/layer")
    expect(status, 200, "V1 layer GET")
    return body


def push_v2(address, digest, layer, chunked=False):
    body = pieces(layer) if chunked else layer
    status = request(address, "POST", f"/v2/bench/v2/blobs/uploads/?digest={digest}", body,
                     {"Content-Type": "application/octet-stream"})[0]
    expect(status, 201, "V2 blob POST")


def pull_v2(address, digest):
    status, _, body = request(address, "GET", f"/v2/bench/v2/blobs/{digest}")
    expect(status, 200, "V2 blob GET")
    return body


def start_cluster(var, chunk_size):
    tool = os.path.join(ROOT, "tools", "speedy-cluster")
    supervisor = subprocess.Popen(
        [sys.executable, tool, "up", "--var", var, "--registry", "127.0.0.1:0",
         "--master-port", "0", "--chunkserver-port", "0", "--imageservers", "1",
         "--chunk-size", chunk_size, "--volume-size", "1GiB", "--start-timeout", "60"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        state = localcluster.read_state(var)
        if state is not None and state["ready"]:
            return supervisor, state["registries"][0]
        if supervisor.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the cluster did not start")
        time.sleep(0.2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--size", default="64MiB")
    parser.add_argument("--chunk-size", default="16MiB")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    workdir = tempfile.mkdtemp(prefix="speedy-bench-v1-")
    supervisor, address = start_cluster(os.path.join(workdir, "var"), args.chunk_size)
    try:
        layers = [os.urandom(size) for _ in range(args.count)]
        speeds = {}
        for round_ in range(args.rounds):
            for kind in KINDS:
                salt = f"{kind} {round_}".encode()
                data = [salt + layer[len(salt):] for layer in layers]
                ids = [hashlib.sha256(layer).hexdigest() for layer in data]
                payloads = [payload_checksum(i, layer) for i, layer in zip(ids, data)]
                chunked = kind.endswith("chunked")
                for action in ("push", "pull"):
                    started = time.monotonic()
                    for i in range(args.count):
                        if kind.startswith("v1") and action == "push":
                            push_v1(address, ids[i], data[i], payloads[i], chunked)
                        elif action == "push":
                            push_v2(address, "sha256:" + ids[i], data[i], chunked)
                        else:
                            pulled = (pull_v1(address, ids[i]) if kind.startswith("v1")
                                      else pull_v2(address, "sha256:" + ids[i]))
                            if pulled != data[i]:
                                raise SystemExit(f"{kind} pull: bytes differ")
                    seconds = time.monotonic() - started
                    speed = args.count * size / seconds / 2**20
                    speeds.setdefault(f"{kind} {action}", []).append(speed)
                    print(json.dumps({"round": round_, "phase": f"{kind} {action}",
                                      "count": args.count, "size": size,
                                      "chunk_size": args.chunk_size,
                                      "seconds": round(seconds, 3), "MiB_s": round(speed, 1)}),
                          flush=True)
        for phase, values in speeds.items():
            print(json.dumps({"phase": phase, "median_MiB_s": round(statistics.median(values), 1),
                              "rounds": len(values)}), flush=True)
    finally:
        os.killpg(supervisor.pid, signal.SIGTERM)
        supervisor.wait(60)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
