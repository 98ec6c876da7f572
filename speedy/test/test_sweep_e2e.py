"""
Garbage collection end to end, with real daemons and a real client: a
Speedy cluster started by C{tools/speedy-cluster up} (three chunkservers,
two imageservers, a chunkmaster whose sweep grace is a second and whose
chunk grace is the least it takes, a minute), and skopeo.

skopeo copies two images that share a layer into one repository, then
C{skopeo delete}s one (its manifest: the registry API has no way to delete
an image's layers with it).  A collection (C{speedy-admin gc}) then deletes
the blobs only the deleted image used; a pull of the survivor is
byte-identical, one of the deleted image answers MANIFEST_UNKNOWN, its own
layer BLOB_UNKNOWN; a collection past the chunk grace deletes their chunks
from every chunkserver, which then hold exactly the chunks the metadata
names.  (The chunk grace is not waited for: the test ages the garbage
table's rows past it in the database, as test_gc_e2e ages intents.)
"""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from speedy.localcluster.plan import METADATA_FILE
from speedy.test.e2e_images import ImageLayout, layout_tags
from speedy.test.test_registry_clients import RegistryClient, SkopeoMixin, SpeedyLocalCluster
from speedy.test.util import require_tool

#: The chunkmaster's least chunk grace period (C{--gc-grace}).
CHUNK_GRACE = 60.0
SWEEP_GRACE = 1.0
REPOSITORY = "e2e/gc"
MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json"


class GarbageCollectionEndToEndTests(SkopeoMixin, SynchronousTestCase):

    def setUp(self):
        self.skopeo_path = require_tool("skopeo")
        self.workdir = tempfile.mkdtemp(prefix="speedy-gc-e2e-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.tmp = os.path.join(self.workdir, "tmp")
        os.makedirs(self.tmp)
        self.policy = os.path.join(self.tmp, "policy.json")
        with open(self.policy, "w") as f:
            json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
        self.layout = ImageLayout(os.path.join(self.workdir, "source"))
        # Layers of a few 4 MiB chunks each (the cluster's chunk size); the
        # same seed gives the same layer, so the images share their first.
        shared = self.layout.add_layer(5 << 20, seed=7)
        self.doomed_own = self.layout.add_layer(9 << 20, seed=8)
        kept_own = self.layout.add_layer(300_000, seed=9)
        self.layout.tag(self.image([shared, self.doomed_own], "doomed"), "doomed")
        self.layout.tag(self.image([shared, kept_own], "kept"), "kept")
        self.cluster = SpeedyLocalCluster(self.workdir, [
            "--gc-grace", f"{CHUNK_GRACE:g}s", "--gc-sweep-grace", f"{SWEEP_GRACE:g}s"])
        self.addCleanup(self.cluster.stop)
        self.cluster.start()
        self.registry = self.cluster.registries[0]

    def image(self, layers, name):
        config = self.layout.add_blob(json.dumps({
            "architecture": "amd64", "os": "linux", "config": {"Cmd": [name]},
            "rootfs": {"type": "layers",
                       "diff_ids": [self.layout.diff_id(layer) for layer in layers]},
        }).encode(), "application/vnd.oci.image.config.v1+json")
        return self.layout.add_manifest({
            "schemaVersion": 2, "mediaType": MANIFEST_ACCEPT, "config": config.to_json(),
            "layers": [layer.to_json() for layer in layers]})

    def admin(self, *argv):
        done = subprocess.run(
            [sys.executable, "-m", "speedy.admin", "--var", self.cluster.var, "--json", *argv],
            capture_output=True, text=True, timeout=300)
        self.assertEqual(done.returncode, 0, done.stderr)
        return json.loads(done.stdout)

    def age_garbage(self, seconds):
        """Make every garbage record C{seconds} older, as if that long had
        passed."""
        db = sqlite3.connect(os.path.join(self.cluster.var, METADATA_FILE), timeout=30)
        try:
            with db:
                db.execute("UPDATE garbage SET recorded = recorded - ?", (seconds,))
        finally:
            db.close()

    def named_chunks(self):
        """@return: the chunks the metadata store's blobs name, as
        C{(group, file id)}, and the blobs' digests."""
        db = sqlite3.connect(os.path.join(self.cluster.var, METADATA_FILE))
        try:
            rows = db.execute("SELECT digest, chunks FROM blobs").fetchall()
        finally:
            db.close()
        return ({(c[0], c[1]) for _, chunks in rows for c in json.loads(chunks)},
                {digest for digest, _ in rows})

    def held(self):
        """@return: the live chunks each chunkserver holds, as its last
        heartbeat said."""
        return sorted(s["load"].get("chunks") for s in self.admin("status")["servers"])

    def wait_for(self, what, predicate, patience=60.0):
        deadline = time.monotonic() + patience
        while not predicate():
            if time.monotonic() > deadline:
                self.fail(f"waited {patience:.0f}s in vain for {what}")
            time.sleep(0.5)

    def error_code(self, path):
        response = RegistryClient(self.registry).request(
            "GET", path, headers={"Accept": MANIFEST_ACCEPT})
        return response.status, response.json()["errors"][0]["code"]

    def test_delete_then_collect(self):
        doomed = layout_tags(self.layout.path)["doomed"]
        for tag in ("doomed", "kept"):
            self.copy_in(tag, f"{self.registry}/{REPOSITORY}:{tag}")
        chunks_before, blobs_before = self.named_chunks()
        self.wait_for("every chunk in the heartbeats",
                      lambda: self.held() == [len(chunks_before)] * 3)

        self.skopeo("delete", "--tls-verify=false", f"docker://{self.registry}/{REPOSITORY}:doomed")
        time.sleep(SWEEP_GRACE + 0.5)
        # (the chunkmaster's own round, every minute, may be the one that
        # sweeps: the totals count both)
        status = self.admin("gc")
        self.assertEqual(status["totals"]["blobs_deleted"], 2, status)  # its config, its layer
        chunks_after, blobs_after = self.named_chunks()
        self.assertEqual(blobs_before - blobs_after,
                         {self.doomed_own.digest, self._config_of(doomed)})
        self.assertEqual(len(chunks_before - chunks_after), 4)  # 9 MiB + a config

        target = self.copy_out(f"{self.cluster.registries[1]}/{REPOSITORY}:kept", "kept")
        self.assertSameImage(target, "kept")
        self.assertEqual(self.error_code(f"/v2/{REPOSITORY}/manifests/{doomed}"),
                         (404, "MANIFEST_UNKNOWN"))
        self.assertEqual(self.error_code(f"/v2/{REPOSITORY}/manifests/doomed"),
                         (404, "MANIFEST_UNKNOWN"))
        self.assertEqual(self.error_code(f"/v2/{REPOSITORY}/blobs/{self.doomed_own.digest}"),
                         (404, "BLOB_UNKNOWN"))
        dry = self.admin("gc", "--dry-run")
        self.assertGreaterEqual(dry["chunks_waiting"], 4, dry)

        # Past the chunk grace, a round deletes the chunks from every member.
        self.age_garbage(CHUNK_GRACE + 1)
        status = self.admin("gc")
        self.assertGreaterEqual(status["totals"]["chunks_deleted"], 4, status)
        dry = self.admin("gc", "--dry-run")
        self.assertEqual((dry["chunks_deleted"], dry["chunks_waiting"]), (0, 0), dry)
        self.wait_for("the chunkservers to hold only the chunks named",
                      lambda: self.held() == [len(chunks_after)] * 3)
        self.assertSameImage(self.copy_out(f"{self.registry}/{REPOSITORY}:kept", "kept"), "kept")

    def _config_of(self, digest):
        with open(self.layout.blob_path(digest), "rb") as f:
            return json.load(f)["config"]["digest"]
