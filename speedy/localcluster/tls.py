# -*- test-case-name: speedy.test.test_localcluster_tls -*-
"""
A throwaway certificate authority and server certificate for a local
cluster run with C{speedy-cluster up --tls}:

    VAR/tls/ca/ca.crt          the CA's certificate: what clients trust
                               (skopeo --dest-cert-dir VAR/tls/ca)
    VAR/tls/server/server.pem  the listeners' certificate (127.0.0.1,
                               ::1, localhost and the cluster's host)
    VAR/tls/server/server.key  its key (0600)

    VAR/tls/ca-key/ca.key      the CA's key (0600); nothing else is signed

The CA directory holds only C{ca.crt}: container tools read every C{*.crt}
of a certificate directory as a CA, and refuse a C{*.key} without a
matching C{*.cert} (a client certificate), so the CA's key lives apart.
"""

import datetime
import ipaddress
import os

from attrs import frozen

#: Days the throwaway certificates are valid.
VALID_DAYS = 30


@frozen
class LocalTLS:
    """The files of a local cluster's TLS (see the module docstring)."""

    directory: str

    @property
    def ca_dir(self):
        return os.path.join(self.directory, "ca")

    @property
    def ca_certificate(self):
        return os.path.join(self.ca_dir, "ca.crt")

    @property
    def ca_key(self):
        return os.path.join(self.directory, "ca-key", "ca.key")

    @property
    def certificate(self):
        return os.path.join(self.directory, "server", "server.pem")

    @property
    def key(self):
        return os.path.join(self.directory, "server", "server.key")

    def exists(self):
        return all(os.path.exists(p) for p in (self.ca_certificate, self.certificate, self.key))

    def make(self, hosts=("127.0.0.1",), clock=None):
        """
        Write a new CA and a server certificate for C{hosts} (IP addresses
        or names; 127.0.0.1, ::1 and localhost are always included).

        @return: self.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = clock() if clock else datetime.datetime.now(datetime.timezone.utc)
        start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=VALID_DAYS)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Speedy local cluster CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(start).not_valid_after(end)
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(
                  digital_signature=True, key_cert_sign=True, crl_sign=True,
                  content_commitment=False, key_encipherment=False, data_encipherment=False,
                  key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        names = []
        for host in dict.fromkeys(("127.0.0.1", "::1", "localhost") + tuple(hosts)):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        server = (x509.CertificateBuilder()
                  .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
                  .issuer_name(ca_name).public_key(key.public_key())
                  .serial_number(x509.random_serial_number())
                  .not_valid_before(start).not_valid_after(end)
                  .add_extension(x509.SubjectAlternativeName(names), critical=False)
                  .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                  .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                 critical=False)
                  .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                      ca_key.public_key()), critical=False)
                  .sign(ca_key, hashes.SHA256()))

        def pem_key(k):
            return k.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())

        _write(self.ca_certificate, ca.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(self.ca_key, pem_key(ca_key), 0o600)
        _write(self.certificate, server.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(self.key, pem_key(key), 0o600)
        return self

    def listen(self, kind, port, host):
        """@return: the endpoint string of a TLS listener on C{host:port}
        (C{kind} C{ssl}, or C{reuseport} for a port several processes
        share)."""
        return (f"{kind}:{port}:interface={_escape(host)}"
                f":privateKey={_escape(self.key)}:certKey={_escape(self.certificate)}")

    def instructions(self, registries):
        """@return: lines telling how to point clients at the CA."""
        first = registries[0]
        return [
            f"TLS: the registry's certificate is signed by the throwaway CA {self.ca_certificate}",
            f"  skopeo: skopeo copy --dest-cert-dir {self.ca_dir} IMAGE docker://{first}/NAME:TAG"
            f"  (--src-cert-dir / --cert-dir for copy from / inspect)",
            f"  podman: podman push --cert-dir {self.ca_dir} IMAGE {first}/NAME:TAG, or once for all:",
            f"          sudo mkdir -p /etc/containers/certs.d/{first} && "
            f"sudo cp {self.ca_certificate} /etc/containers/certs.d/{first}/ca.crt",
            f"  curl:   curl --cacert {self.ca_certificate} https://{first}/v2/",
        ]


def _escape(text):
    return text.replace("\\", "\\\\").replace(":", "\\:")


def _write(path, data, mode):
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    descriptor = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as f:
        f.write(data)
    os.chmod(path + ".new", mode)
    os.replace(path + ".new", path)
