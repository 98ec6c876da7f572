"""
Garbage collection under load, by hand (not part of the tests).

Starts a Speedy cluster with C{tools/speedy-cluster up} on free ports (one
replica group of three chunkservers, one imageserver, the chunkmaster's
grace periods C{--grace} for chunks and for unreferenced blobs), pushes
C{--images} images that share one of two base layers and each have a layer
of their own (the defaults: 130 distinct 32 MiB layers, 4.06 GiB), then
deletes half of them the way C{skopeo delete} does: C{DELETE} of the
manifest by digest, nothing else.  Their configs and own layers are then
referenced by no manifest; collection frees them: a first
C{speedy-admin gc} round marks and sweeps the registry's tables (the blobs'
chunks go to the garbage table), a second one, a grace period later,
deletes those chunks from the chunkservers, which compact their volumes
C{--compact-delay} (30 s) after.  A push-and-pull load runs against the
same registry from the first round until the compactions are over; then
the same load runs alone, for the throughput without collection.

    python bench/gc.py [--images 128] [--layer 32MiB] [--grace 60s]

Reports, one JSON line each: the chunkservers' volume files' bytes on disk
(allocated blocks) and the bytes of the chunks the metadata names (each
replica), after the push, after the deletes and after collection and
compaction; what each round deleted and how long it took; the load's
errors and MiB/s during collection (the second round and the compactions)
and alone; and a check that the survivors pull byte-identical and the
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
    """Push C{data} unless the repository has it already (a client's HEAD
    first, as skopeo and docker do: a blob pushed again is stored again,
    and its new chunks are garbage).  @return: its descriptor."""
    digest = sha(data)
    if request(address, "HEAD", f"/v2/{repo}/blobs/{digest}")[0] == 200:
        return {"mediaType": LAYER, "digest": digest, "size": len(data)}
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
    for path in glob.glob(os.path.join(var, "chunkserver-*", "**", "volume-*.dat"),
                          recursive=True):
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
        self.timeline = []  # (monotonic time, bytes so far) after each round

    def rate(self, start, end):
        """@return: MiB/s of the rounds that ended between C{start} and C{end}."""
        inside = [b for t, b in self.timeline if start <= t <= end]
        before = [b for t, b in self.timeline if t < start]
        moved = (inside[-1] if inside else 0) - (before[-1] if before else 0)
        return round(max(0, moved) / (end - start) / 2**20, 1) if end > start else None

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
                self.timeline.append((time.monotonic(), self.bytes))
            except Exception as e:  # every failure is counted, none stops the load
                self.errors.append(repr(e))
        self.seconds = time.monotonic() - started


def start_cluster(var, grace, sweep_grace):
    tool = os.path.join(ROOT, "tools", "speedy-cluster")
    supervisor = subprocess.Popen(
        [sys.executable, tool, "up", "--var", var, "--registry", "127.0.0.1:0",
         "--master-port", "0", "--chunkserver-port", "0", "--imageservers", "1",
         "--chunk-size", "16MiB", "--volume-size", "256MiB", "--gc-grace", grace,
         "--gc-sweep-grace", sweep_grace,
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


def settled(var, patience=600.0, quiet=40.0):
    """Wait until the volume files' blocks stop shrinking for C{quiet}
    seconds (longer than the chunkservers' --compact-delay, 30 s: the
    compactions after the deletes are over).  @return: their last
    L{volume_bytes}."""
    deadline = time.monotonic() + patience
    last, since = volume_bytes(var), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(2)
        now = volume_bytes(var)
        if now[0] < last[0] - 2**20:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--layer", default="32MiB")
    parser.add_argument("--load-layer", default="1MiB",
                        help="the layer each load round pushes (it pulls a survivor too)")
    parser.add_argument("--grace", default="60s",
                        help="the chunkmaster's --gc-grace and --gc-sweep-grace")
    parser.add_argument("--baseline", type=float, default=40.0,
                        help="seconds the load runs alone at the end")
    args = parser.parse_args(argv)
    size = parse_size(args.layer)
    grace = duration()(args.grace)
    workdir = tempfile.mkdtemp(prefix="speedy-bench-gc-")
    var = os.path.join(workdir, "var")
    supervisor, address = start_cluster(var, args.grace, args.grace)
    try:
        bases = [os.urandom(size) for _ in range(2)]
        images = {}
        started = time.monotonic()
        for i in range(args.images):
            own = os.urandom(size)
            digest, config = push_image(address, "bench/app", f"t{i}", [bases[i % 2], own])
            images[f"t{i}"] = (digest, config, sha(own), [sha(bases[i % 2]), sha(own)])
        pushed = time.monotonic() - started
        live = (2 + args.images) * size * 3
        report(phase="pushed", images=args.images, layer=size,
               distinct_bytes=(2 + args.images) * size, seconds=round(pushed, 1),
               volume_bytes=volume_bytes(var), chunk_bytes_named=live)
        doomed = [t for i, t in enumerate(images) if i % 2]
        for tag in doomed:  # what skopeo delete does: the manifest, by digest
            path = f"/v2/bench/app/manifests/{images[tag][0]}"
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
        # The blobs' sweep grace counts from their push, over by now for
        # most; wait for the last image's too.
        time.sleep(max(0.0, grace + 1 - (time.monotonic() - deleted_at)))
        first = time.monotonic()
        sweep = admin(var, "gc")["last"]
        first_took = time.monotonic() - first
        report(phase="round 1 (mark and sweep)", seconds=round(first_took, 2), last=sweep)
        time.sleep(max(0.0, grace + 1 - (time.monotonic() - first)))
        second = time.monotonic()
        chunks = admin(var, "gc")["last"]
        second_took = time.monotonic() - second
        collected = volume_bytes(var)
        report(phase="round 2 (chunks)", seconds=round(second_took, 2), last=chunks,
               volume_bytes=collected)
        settled(var)
        done = time.monotonic()
        load.stop.set()
        load.join()
        after = volume_bytes(var)
        loaded_live = live + load.rounds * load.size * 3
        report(phase="collected and compacted", volume_bytes=after,
               chunk_bytes_named=loaded_live,
               on_disk_over_live=round(after[0] / loaded_live, 3),
               seconds_from_round_2=round(done - second, 1))
        report(phase="load with collection", errors=len(load.errors),
               first_errors=load.errors[:3], rounds=load.rounds,
               MiB_s_whole_run=round(load.bytes / load.seconds / 2**20, 1),
               MiB_s_round_2_and_compaction=load.rate(second, done))
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
