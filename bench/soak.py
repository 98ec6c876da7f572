"""
The soak: a cluster kept under mixed push/pull load for half an hour while
things break, to show that Speedy keeps every acknowledged blob, never
serves a wrong byte, and heals by itself.

    python bench/soak.py [--minutes 30] [--clients 6] [--push-rate 2MiB] [--workdir DIR]

A cluster of three replica groups (nine chunkservers, one of them on a
small tmpfs), a chunkmaster and two imageserver workers, all real daemons on
loopback, is loaded by client threads pushing blobs of 64 KiB to 8 MiB
through the registry API (monolithic uploads, digest checked by the
server) and pulling acknowledged ones back (sha256 checked here), each
operation tried up to five times, 1, 2, 4 and 8 s apart, as registry
clients retry.  Pushes are paced to --push-rate bytes a second all together
(pulls are not): unpaced, six clients on loopback store about 120 MB a second
(three copies), and fill 80 GB in ten minutes.  Meanwhile, on a schedule scaled to
the run's length:

  - every minute a chunkserver is killed -9 and restarted 10 s later;
  - at 15% of the run one chunkserver is lost for good (killed, its data
    deleted); once the chunkmaster calls it DOWN, a new chunkserver is
    started and `speedy-admin replace-server` gives it the lost one's place;
  - at 40% the chunkmaster is stopped for five minutes (of a 30 min run);
  - the chunkserver on a 160 MiB tmpfs fills up along the way;
  - at 75% bytes are flipped in the volume files of one chunkserver.

At the end the load stops, repairs are given time to finish, every
acknowledged blob is pulled and checked, and fsck --verify runs.  It prints
(and writes as JSON to WORKDIR/soak.json): operations attempted and
succeeded (with how many needed retries), acknowledged blobs lost (goal 0),
wrong bytes served (goal 0), the time from the permanent loss to full
redundancy, the repair throughput, and fsck's verdict.  Root is needed for
the tmpfs.
"""

import argparse
import hashlib
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from speedy.test.processes import Daemon, free_port  # noqa: E402
from speedy.units import parse_size  # noqa: E402

ADMIN = "soak-admin-token-0123456789"
KiB, MiB = 1 << 10, 1 << 20


class Cluster:
    """The daemons of the soak, started and stopped by name."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.db = "sqlite:" + os.path.join(workdir, "meta.db")
        self.master_port = free_port()
        self.master_url = f"http://127.0.0.1:{self.master_port}"
        self.registry_port = free_port()
        self.chunkservers = {}  # name -> Daemon
        self.master = None
        self.imageservers = []
        self.tmpfs = None

    def start_master(self):
        self.master = Daemon(
            "speedy-chunkmaster",
            ["--listen", f"tcp:{self.master_port}:interface=127.0.0.1", "--db", self.db,
             "--heartbeat-timeout", "5",
             "--repair-interval", "2", "--repair-rate", "64MiB", "--repair-parallelism", "2",
             "--lost-after", "60"],
            port=self.master_port, workdir=self.workdir, name="chunkmaster",
            env={"SPEEDY_ADMIN_TOKEN": ADMIN}).start()

    def add_chunkserver(self, name, group_id, data_dir=None, port=None):
        port = port or free_port()
        data_dir = data_dir or os.path.join(self.workdir, name)
        daemon = Daemon(
            "speedy-chunkserver",
            ["--data-dir", data_dir, "--listen", f"tcp:{port}:interface=127.0.0.1",
             "--group-id", str(group_id), "--server-id", name, "--master", self.master_url,
             "--heartbeat-interval", "1", "--volume-size", "64MiB",
             "--cache-size", "32MiB", "--reserve", "8MiB", "--scrub-rate", "16MiB",
             "--scrub-period", "3m"],
            port=port, workdir=self.workdir, name=name)
        daemon.data_dir, daemon.address, daemon.group_id = data_dir, f"127.0.0.1:{port}", group_id
        self.chunkservers[name] = daemon
        return daemon.start()

    def restart(self, name):
        daemon = self.chunkservers[name]
        self.chunkservers[name] = None
        return self.add_chunkserver(name, daemon.group_id, daemon.data_dir,
                                    int(daemon.address.rsplit(":", 1)[1]))

    def start_imageservers(self, workers=2):
        for n in range(workers):
            self.imageservers.append(Daemon(
                "speedy-imageserver",
                ["--listen", f"reuseport:{self.registry_port}:interface=127.0.0.1",
                 "--master", self.master_url, "--db", self.db,
                 "--chunk-size", "4MiB"],
                port=self.registry_port, workdir=self.workdir,
                name=f"imageserver-{n + 1}").start())

    def admin(self, *argv, timeout=600):
        return subprocess.run(
            [sys.executable, "-m", "speedy.admin", "--master", self.master_url, *argv],
            capture_output=True, text=True, timeout=timeout,
            env=dict(os.environ, SPEEDY_ADMIN_TOKEN=ADMIN, PYTHONPATH=ROOT))

    def status(self):
        done = self.admin("--json", "status", timeout=30)
        return json.loads(done.stdout) if done.returncode == 0 else None

    def stop(self):
        for daemon in self.imageservers + list(self.chunkservers.values()) + [self.master]:
            if daemon is not None:
                daemon.stop()
        if self.tmpfs is not None:
            subprocess.run(["umount", "-l", self.tmpfs], check=False)


class Load:
    """Client threads pushing and pulling blobs, counting outcomes."""

    def __init__(self, port, clients, rng, push_rate=2 * MiB):
        self.port = port
        self.push_rate = push_rate
        self._next_push = time.monotonic()  # when the next push may start
        self.clients = clients
        self.rng = rng
        self.lock = threading.Lock()
        self.acked = {}  # digest -> (repository, size)
        self.counts = dict(attempted=0, succeeded=0, failed=0, retried=0, wrong_bytes=0,
                           pushes=0, pulls=0)
        self.errors = {}
        self.running = False
        self.threads = []

    def start(self):
        self.running = True
        for n in range(self.clients):
            thread = threading.Thread(target=self._run, args=(n,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self):
        self.running = False
        for thread in self.threads:
            thread.join(120)

    def _run(self, n):
        rng = random.Random(n)
        while self.running:
            if self.acked and rng.random() < 0.5:
                with self.lock:
                    digest, (repository, size) = rng.choice(list(self.acked.items()))
                self.operation("pull", lambda: self.pull(repository, digest, size))
            else:
                size = rng.choice([64 * KiB, 512 * KiB, 2 * MiB, 5 * MiB, 8 * MiB])
                self._pace(size)
                data = rng.randbytes(size)
                repository = f"soak/r{rng.randrange(8)}"
                if self.operation("push", lambda: self.push(repository, data)):
                    with self.lock:
                        self.acked["sha256:" + hashlib.sha256(data).hexdigest()] = (
                            repository, size)

    def _pace(self, size):
        """Wait until a push of C{size} bytes keeps all pushes together
        within C{push_rate} bytes a second."""
        if not self.push_rate:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self._next_push)
            self._next_push = start + size / self.push_rate
        while self.running and time.monotonic() < start:
            time.sleep(min(0.5, start - time.monotonic()))

    def operation(self, kind, attempt, tries=5):
        with self.lock:
            self.counts["attempted"] += 1
            self.counts[kind + "es" if kind == "push" else kind + "s"] += 1
        for n in range(tries):
            try:
                attempt()
            except WrongBytes:
                with self.lock:
                    self.counts["wrong_bytes"] += 1
                return False
            except Exception as e:
                with self.lock:
                    key = f"{kind}: {type(e).__name__}: {str(e)[:80]}"
                    self.errors[key] = self.errors.get(key, 0) + 1
                time.sleep(2 ** n)
                continue
            with self.lock:
                self.counts["succeeded"] += 1
                self.counts["retried"] += n > 0
            return True
        with self.lock:
            self.counts["failed"] += 1
        return False

    def request(self, method, path, body=None, timeout=120):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def push(self, repository, data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, body = self.request("POST", f"/v2/{repository}/blobs/uploads/?digest={digest}",
                                    data)
        if status not in (201, 202):
            raise RuntimeError(f"push answered {status}: {body[:120]!r}")

    def pull(self, repository, digest, size):
        status, body = self.request("GET", f"/v2/{repository}/blobs/{digest}")
        if status != 200:
            raise RuntimeError(f"pull answered {status}: {body[:120]!r}")
        if len(body) == size and "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise WrongBytes(digest)
        if len(body) != size:
            raise RuntimeError(f"pull cut short at {len(body)} of {size} bytes")


class WrongBytes(Exception):
    """A pull answered 200 with bytes other than the blob's."""


def flip_bytes(data_dir, rng, count=5):
    """Flip a byte at C{count} random places holding data (not the zeros of
    a volume's unwritten end) in the volume files of a chunkserver."""
    volumes = [os.path.join(data_dir, n) for n in os.listdir(data_dir) if n.endswith(".dat")]
    flipped = 0
    for _ in range(count * 100):
        if flipped == count:
            break
        path = rng.choice(volumes)
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            offset = rng.randrange(4096, max(4097, size - 1))
            f.seek(offset)
            byte = f.read(1)
            if not byte or byte == b"\0":
                continue
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))
            flipped += 1
    return flipped


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--push-rate", type=parse_size, default=2 * MiB,
                        help="bytes a second all pushes together (e.g. 2MiB); 0 for no limit")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    workdir = args.workdir or tempfile.mkdtemp(prefix="speedy-soak-")
    os.makedirs(workdir, exist_ok=True)
    length = args.minutes * 60
    cluster = Cluster(workdir)
    events = []

    def say(what):
        line = f"[{time.monotonic() - started:7.1f}s] {what}"
        print(line, flush=True)
        events.append(line)

    started = time.monotonic()
    try:
        cluster.start_master()
        tmpfs = os.path.join(workdir, "small-disk")
        os.makedirs(tmpfs)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", tmpfs], check=True)
        cluster.tmpfs = tmpfs
        for n in range(1, 10):
            cluster.add_chunkserver(f"cs{n}", (n - 1) // 3 + 1,
                                    data_dir=os.path.join(tmpfs, "cs9") if n == 9 else None)
        while (cluster.status() or {}).get("writable_groups") != 3:
            time.sleep(0.5)
        cluster.start_imageservers()
        say(f"cluster up in {workdir}")
        load = Load(cluster.registry_port, args.clients, rng, args.push_rate)
        load.start()
        schedule = [(0.15 * length, "lose"), (0.40 * length, "master-stop"),
                    (0.40 * length + min(300, 0.17 * length), "master-start"),
                    (0.75 * length, "flip")]
        next_kill = 60.0
        lost_at = rebuilt_at = rebuild_seen = None
        lost_name, spare = "cs2", None
        while time.monotonic() - started < length:
            now = time.monotonic() - started
            if schedule and now >= schedule[0][0]:
                _, action = schedule.pop(0)
                if action == "lose":
                    cluster.chunkservers[lost_name].kill()
                    shutil.rmtree(cluster.chunkservers[lost_name].data_dir, ignore_errors=True)
                    lost_at = time.monotonic()
                    say(f"{lost_name} lost for good")
                    spare = cluster.add_chunkserver("cs10", 1)
                    while True:
                        status = cluster.status()
                        states = {s["server_id"]: s["state"] for s in (status or {}).get(
                            "servers", [])}
                        if states.get(lost_name) == "DOWN":
                            break
                        time.sleep(0.5)
                    done = cluster.admin("replace-server", lost_name, "cs10", spare.address)
                    say(f"replace-server: {done.stdout.strip()} {done.stderr.strip()}")
                elif action == "master-stop":
                    cluster.master.stop()
                    say("chunkmaster stopped")
                elif action == "master-start":
                    cluster.start_master()
                    say("chunkmaster started again")
                elif action == "flip":
                    flipped = flip_bytes(cluster.chunkservers["cs4"].data_dir, rng)
                    say(f"flipped {flipped} bytes in cs4's volumes")
            if now >= next_kill:
                next_kill += 60.0
                victims = [n for n, d in cluster.chunkservers.items()
                           if d is not None and d.running and n not in (lost_name, "cs10")]
                victim = rng.choice(victims)
                cluster.chunkservers[victim].kill()
                say(f"killed {victim} -9")
                time.sleep(10)
                cluster.restart(victim)
                say(f"restarted {victim}")
            if rebuilt_at is None and lost_at is not None:
                status = cluster.status()
                if status and any(s["server_id"] == "cs10" and not s.get("rebuilding")
                                  for s in status.get("servers", [])):
                    rebuilt_at = time.monotonic()
                    done = cluster.admin("--json", "repair", timeout=30)
                    for rebuild in json.loads(done.stdout or "{}").get("rebuilds", []):
                        if rebuild["server_id"] == "cs10":
                            rebuild_seen = rebuild
                    say(f"full redundancy again {rebuilt_at - lost_at:.0f}s after the loss")
            time.sleep(1)
        load.stop()
        say("load stopped; waiting for repairs")
        repair = cluster.admin("--json", "repair", "--run", "--wait", timeout=900)
        repairs = json.loads(repair.stdout) if repair.stdout else {}
        say("checking every acknowledged blob")
        lost = wrong = 0
        for digest, (repository, size) in list(load.acked.items()):
            try:
                load.pull(repository, digest, size)
            except WrongBytes:
                wrong += 1
            except Exception:
                lost += 1
        fsck = cluster.admin("--json", "fsck", "--verify", timeout=1800)
        fsck_report = json.loads(fsck.stdout)["report"] if fsck.stdout else {}
        counts = load.counts
        elapsed = time.monotonic() - started
        result = {
            "minutes": round(elapsed / 60, 1),
            "operations": counts,
            "success_ratio": round(counts["succeeded"] / max(1, counts["attempted"]), 5),
            "acknowledged_blobs": len(load.acked),
            "acknowledged_lost": lost,
            "wrong_bytes_served": counts["wrong_bytes"] + wrong,
            "seconds_to_full_redundancy": None if rebuilt_at is None or lost_at is None
            else round(rebuilt_at - lost_at, 1),
            "repairs": repairs.get("counters"),
            "repair_bytes_per_second": None,
            "fsck_clean": fsck_report.get("clean"),
            "fsck": {k: v["count"] for k, v in fsck_report.items()
                     if isinstance(v, dict) and "count" in v},
            "errors": dict(sorted(load.errors.items(), key=lambda kv: -kv[1])[:12]),
            "events": events,
        }
        if rebuild_seen is not None:
            result["rebuild"] = rebuild_seen
            if rebuild_seen.get("elapsed"):
                result["repair_bytes_per_second"] = round(
                    rebuild_seen["bytes_done"] / rebuild_seen["elapsed"])
        with open(os.path.join(workdir, "soak.json"), "w") as f:
            json.dump(result, f, indent=2)
        print(json.dumps({k: v for k, v in result.items() if k != "events"}, indent=2))
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
