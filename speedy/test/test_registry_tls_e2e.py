"""
End-to-end: skopeo pushes an image to a local cluster started with
C{speedy-cluster up --tls} and pulls it back, trusting the throwaway CA it
made (C{--dest-cert-dir}/C{--src-cert-dir}), never C{--tls-verify=false};
a skopeo that does not trust the CA is refused.
"""

import json
import os
import shutil
import subprocess
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from speedy.test.e2e_images import ImageLayout, layout_blobs, layout_tags
from speedy.test.test_registry_clients import SpeedyLocalCluster
from speedy.test.util import require_tool


class SkopeoOverTLSTests(SynchronousTestCase):

    def setUp(self):
        self.skopeo_path = require_tool("skopeo")
        self.tmp = tempfile.mkdtemp(prefix="speedy-tls-skopeo-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.cluster = SpeedyLocalCluster(self.tmp, ["--tls", "--imageservers", "1"])
        self.addCleanup(self.cluster.stop)
        self.cluster.start()
        self.registry = self.cluster.registries[0]
        self.ca_dir = os.path.join(self.cluster.var, "tls", "ca")
        self.policy = os.path.join(self.tmp, "policy.json")
        with open(self.policy, "w") as f:
            json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)

    def skopeo(self, *args, check=True):
        env = dict(os.environ, HOME=self.tmp, XDG_RUNTIME_DIR=self.tmp, TMPDIR=self.tmp)
        done = subprocess.run([self.skopeo_path, "--policy", self.policy, "--tmpdir", self.tmp,
                               *args], env=env, capture_output=True, timeout=300)
        if check and done.returncode != 0:
            self.fail(f"skopeo {' '.join(args)} failed ({done.returncode}):\n"
                      f"{done.stderr.decode('utf-8', 'replace')}")
        return done

    def test_push_and_pull(self):
        layout = ImageLayout(os.path.join(self.tmp, "source"))
        image = layout.add_image([300_000, 2 << 20], seed=7)
        layout.tag(image, "v1")
        reference = f"docker://{self.registry}/tls/app:v1"
        self.skopeo("copy", "--dest-cert-dir", self.ca_dir, "--preserve-digests",
                    f"oci:{layout.path}:v1", reference)
        target = os.path.join(self.tmp, "copy")
        self.skopeo("copy", "--src-cert-dir", self.ca_dir, "--preserve-digests",
                    reference, f"oci:{target}:v1")
        self.assertEqual(layout_tags(target), layout_tags(layout.path))
        for digest, content in layout_blobs(target).items():
            self.assertEqual(content, digest)
        refused = self.skopeo("inspect", "--raw", reference, check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn(b"certificate", refused.stderr)
