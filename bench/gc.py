"""
Garbage collection under load, by hand (not part of the tests).

Starts a Speedy cluster with C{tools/speedy-cluster up} on free ports (one
replica group of three chunkservers, one imageserver, the chunkmaster's
grace period C{--grace}), pushes C{--images} images that share one of two
base layers and each have a layer of their own, then deletes half of them
(manifest, config and own layer: what a registry client's delete and a
blob delete do), and runs collection (C{speedy-admin gc}) while a
push-and-pull load runs against the same registry.  Then the same load
runs alone, for the throughput without collection.

    python bench/gc.py [--images 16] [--layer 32MiB] [--grace 60s]

Reports, one JSON line each: the chunkservers' volume bytes on disk
(allocated blocks) and the bytes of the chunks the metadata names, after
the push, after the deletes and after collection; what collection deleted
and how long it took; the load's errors and MiB/s with and without
collection; and a check that the survivors pull byte-identical and the
deleted manifests answer MANIFEST_UNKNOWN.
"""

import argparse
import glob
import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from bench_v1 import request  # noqa: E402
from speedy import localcluster  # noqa: E402
from speedy.config import duration  # noqa: E402
from speedy.units import parse_size  # noqa: E402

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(address, repo, data):
    digest = sha(data)
    status = request(address, "POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", data,
                     {"Content-Type": "application/octet-stream"})[0]
    if status != 201:
        raise RuntimeError(f"blob push: {status}")
    return {"mediaType": LAYER, "digest": digest, "size": len(data)}


def push_image(address, repo, tag, layers):
    """Push C{layers} (bytes) and a config, then the manifest under C{tag}.
    @return: the manifest's digest."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode()
    descriptors = [push_blob(address, repo, layer) for layer in layers]
    config_descriptor = dict(push_blob(address, repo, config), mediaType=CONFIG)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST,
                           "config": config_descriptor, "layers": descriptors}).encode()
    status = request(address, "PUT", f"/v2/{repo}/manifests/{tag}", manifest,
                     {"Content-Type": MANIFEST})[0]
    if status != 201:
        raise RuntimeError(f"manifest push: {status}")
    return sha(manifest), config_descriptor["digest"]


def pull_image(address, repo, tag):
    """@return: the layers' bytes, each checked against its digest."""
    status, _, body = request(address, "GET", f"/v2/{repo}/manifests/{tag}",
                              headers={"Accept": MANIFEST})
    if status != 200:
        return status, None
    layers = []
    for descriptor in json.loads(body)["layers"]:
        status, _, data = request(address, "GET", f"/v2/{repo}/blobs/{descriptor['digest']}")
        if status != 200 or sha(data) != descriptor["digest"]:
            raise RuntimeError(f"layer pull: {status}")
        layers.append(data)
    return 200, layers


def volume_bytes(var):
    """@return: (allocated bytes on disk, apparent bytes) of every volume file."""
    allocated = apparent = 0
    for path in glob.glob(os.path.join(var, "chunkserver-*", "**", "*"), recursive=True):
        if os.path.isfile(path):
            st = os.stat(path)
            allocated += st.st_blocks * 512
            apparent += st.st_size
    return allocated, apparent


def admin(var, *args):
    out = subprocess.run(
        [sys.executable, "-m", "speedy.admin", "--var", var, "--json", *args],
        check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out)


class Load(threading.Thread):
    """Pushes an image with a new layer of C{size} bytes and pulls a
    survivor, again and again, counting errors and bytes."""

    def __init__(self, address, survivors, size):
        super().__init__(daemon=True)
        self.address, self.survivors, self.size = address, survivors, size
        self.stop = threading.Event()
        self.errors, self.bytes, self.rounds = [], 0, 0
        self.seconds = 0.0

    def run(self):
        started = time.monotonic()
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                layer = os.urandom(self.size)
                push_image(self.address, "bench/load", f"l{threading.get_ident()}-{n}", [layer])
                tag, expected = self.survivors[n % len(self.survivors)]
                status, layers = pull_image(self.address, "bench/app", tag)
                if status != 200 or [sha(x) for x in layers] != expected:
                    raise RuntimeError(f"survivor {tag}: {status}")
                self.bytes += self.size + sum(len(x) for x in layers)
                self.rounds += 1
            except Exception as e:  # every failure is counted, none stops the load
                self.errors.append(repr(e))
        self.seconds = time.monotonic() - started


def start_cluster(var, grace):
    tool = os.path.join(ROOT, "tools", "speedy-cluster")
    supervisor = subprocess.Popen(
        [sys.executable, tool, "up", "--var", var, "--registry", "127.0.0.1:0",
         "--master-port", "0", "--chunkserver-port", "0", "--imageservers", "1",
         "--chunk-size", "16MiB", "--volume-size", "256MiB", "--gc-grace", grace,
         "--start-timeout", "60"],
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


def report(**fields):
    print(json.dumps(fields), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--layer", default="32MiB")
    parser.add_argument("--load-layer", default="8MiB")
    parser.add_argument("--grace", default="60s")
    parser.add_argument("--baseline", type=float, default=30.0,
                        help="seconds the load runs alone at the end")
    args = parser.parse_args(argv)
    size = parse_size(args.layer)
    workdir = tempfile.mkdtemp(prefix="speedy-bench-gc-")
    var = os.path.join(workdir, "var")
    supervisor, address = start_cluster(var, args.grace)
    try:
        bases = [os.urandom(size) for _ in range(2)]
        images = {}
        for i in range(args.images):
            own = os.urandom(size)
            digest, config = push_image(address, "bench/app", f"t{i}", [bases[i % 2], own])
            images[f"t{i}"] = (digest, config, sha(own), [sha(bases[i % 2]), sha(own)])
        live = (2 + args.images) * size * 3
        report(phase="pushed", images=args.images, layer=size,
               volume_bytes=volume_bytes(var), chunk_bytes_named=live)
        doomed = [t for i, t in enumerate(images) if i % 2]
        for tag in doomed:
            digest, config, own, _ = images[tag]
            for path in (f"/v2/bench/app/manifests/{digest}", f"/v2/bench/app/blobs/{config}",
                         f"/v2/bench/app/blobs/{own}"):
                status = request(address, "DELETE", path)[0]
                if status != 202:
                    raise SystemExit(f"DELETE {path}: {status}")
        deleted_at = time.monotonic()
        live -= len(doomed) * size * 3
        report(phase="deleted", images=len(doomed), volume_bytes=volume_bytes(var),
               chunk_bytes_named=live, dry_run=admin(var, "gc", "--dry-run"))
        survivors = [(t, images[t][3]) for t in images if t not in doomed]
        load = Load(address, survivors, parse_size(args.load_layer))
        load.start()
        grace = duration()(args.grace)
        time.sleep(max(0.0, grace + 1 - (time.monotonic() - deleted_at)))
        started = time.monotonic()
        status = admin(var, "gc")
        took = time.monotonic() - started
        time.sleep(5)
        load.stop.set()
        load.join()
        loaded_live = live + load.rounds * load.size * 3
        report(phase="collected", seconds=round(took, 2), last=status["last"],
               volume_bytes=volume_bytes(var), chunk_bytes_named=loaded_live)
        report(phase="load with collection", errors=len(load.errors),
               first_errors=load.errors[:3], rounds=load.rounds,
               MiB_s=round(load.bytes / load.seconds / 2**20, 1))
        alone = Load(address, survivors, parse_size(args.load_layer))
        alone.start()
        time.sleep(args.baseline)
        alone.stop.set()
        alone.join()
        report(phase="load alone", errors=len(alone.errors), rounds=alone.rounds,
               MiB_s=round(alone.bytes / alone.seconds / 2**20, 1))
        identical = all(pull_image(address, "bench/app", t)[1] is not None for t, _ in survivors)
        gone = [request(address, "GET", f"/v2/bench/app/manifests/{images[t][0]}",
                        headers={"Accept": MANIFEST}) for t in doomed]
        report(phase="check", survivors_pull_identical=identical,
               deleted_manifests=sorted({f"{s} {json.loads(b)['errors'][0]['code']}"
                                         for s, _, b in gone}))
    finally:
        os.killpg(supervisor.pid, signal.SIGTERM)
        supervisor.wait(60)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
