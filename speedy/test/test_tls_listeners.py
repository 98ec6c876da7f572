"""
TLS on the HTTP listeners: the throwaway CA of C{speedy-cluster up --tls}
(L{speedy.localcluster.tls}), and a chunkmaster and an imageserver as real
processes listening on C{ssl:} and C{reuseport:...:certKey=} endpoints,
checked by a real TLS client (Python's C{ssl}, verifying the certificate
against the CA and the host name).
"""

import os
import shutil
import socket
import ssl
import stat
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from speedy.config import endpoint
from speedy.localcluster.plan import ClusterPlan
from speedy.localcluster.tls import LocalTLS
from speedy.test.processes import Daemon, free_port


def https_get(port, path, ca, host="127.0.0.1"):
    """@return: the status line and body of C{GET path} over TLS, the
    server's certificate checked against C{ca}."""
    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                         f"Connection: close\r\n\r\n".encode())
            data = b""
            while True:
                piece = sock.recv(65536)
                if not piece:
                    break
                data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], body


class LocalTLSTests(SynchronousTestCase):

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="speedy-tls-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.tls = LocalTLS(os.path.join(self.directory, "tls")).make(hosts=("10.1.2.3",))

    def test_files(self):
        """The CA directory holds only the CA certificate (what container
        tools read as a --cert-dir); the keys are readable by their owner
        only."""
        self.assertTrue(self.tls.exists())
        self.assertEqual(os.listdir(self.tls.ca_dir), ["ca.crt"])
        for key in (self.tls.key, self.tls.ca_key):
            self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)

    def test_certificate_names(self):
        """The server certificate is signed by the CA and names loopback,
        localhost and the hosts given."""
        from cryptography import x509
        with open(self.tls.certificate, "rb") as f:
            certificate = x509.load_pem_x509_certificate(f.read())
        with open(self.tls.ca_certificate, "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
        certificate.verify_directly_issued_by(ca)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual({str(a) for a in names.get_values_for_type(x509.IPAddress)},
                         {"127.0.0.1", "::1", "10.1.2.3"})
        self.assertEqual(names.get_values_for_type(x509.DNSName), ["localhost"])

    def test_endpoint_strings(self):
        """Both listen strings parse as server endpoints (files read)."""
        for kind in ("ssl", "reuseport"):
            endpoint(self.tls.listen(kind, 5000, "127.0.0.1"))
        self.assertRaises(ValueError, endpoint, "reuseport:5000:certKey=/nonexistent.pem")

    def test_plan(self):
        """With TLS the imageservers listen with it and are probed over
        https; the chunkmaster and chunkservers are unchanged."""
        plan = ClusterPlan.build(var=self.directory, imageserver_workers=2, tls=self.tls)
        roles = {r.name: r for r in plan.roles()}
        args = roles["imageserver-1.1"].args
        listen = args[args.index("--listen") + 1]
        self.assertTrue(listen.startswith("reuseport:5000:interface=127.0.0.1:privateKey="))
        self.assertEqual(roles["imageserver-1.1"].health_url, "https://127.0.0.1:5000/readyz")
        self.assertIn("tcp:8099", " ".join(roles["chunkmaster"].args))
        lines = "\n".join(self.tls.instructions(plan.registries))
        self.assertIn(f"--dest-cert-dir {self.tls.ca_dir}", lines)
        self.assertIn("/etc/containers/certs.d/127.0.0.1:5000/ca.crt", lines)


class TLSListenerEndToEndTests(SynchronousTestCase):
    """Real daemons on C{ssl:} endpoints, a real TLS client."""

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="speedy-tls-e2e-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.tls = LocalTLS(os.path.join(self.workdir, "tls")).make()
        self.db = "sqlite:" + os.path.join(self.workdir, "meta.db")

    def start(self, plugin, listen, port, args):
        daemon = Daemon(plugin, ["--listen", listen] + args, port=port, workdir=self.workdir)
        self.addCleanup(daemon.stop)
        return daemon.start()

    def test_chunkmaster_and_imageserver(self):
        master_port, image_port = free_port(), free_port()
        self.start("speedy-chunkmaster", self.tls.listen("ssl", master_port, "127.0.0.1"),
                   master_port, ["--db", self.db])
        self.start("speedy-imageserver", self.tls.listen("reuseport", image_port, "127.0.0.1"),
                   image_port, ["--db", self.db, "--master", f"http://127.0.0.1:{free_port()}"])
        status, body = https_get(master_port, "/v1/health", self.tls.ca_certificate)
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        status, body = https_get(image_port, "/v2/", self.tls.ca_certificate, host="localhost")
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        # A client that does not trust the CA is refused by its own check.
        with self.assertRaises(ssl.SSLCertVerificationError):
            context = ssl.create_default_context()
            with socket.create_connection(("127.0.0.1", image_port), timeout=10) as raw:
                context.wrap_socket(raw, server_hostname="127.0.0.1")
        # Plain HTTP on a TLS port gets no answer and does not harm it.
        with socket.create_connection(("127.0.0.1", image_port), timeout=10) as raw:
            raw.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            raw.recv(100)
        status, _ = https_get(image_port, "/v2/", self.tls.ca_certificate)
        self.assertEqual(status, b"HTTP/1.1 200 OK")
