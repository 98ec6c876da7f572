# -*- test-case-name: speedy.test.test_localcluster_plan -*-
"""
The shape of a local cluster: which roles, on which ports, with which
command lines (L{ClusterPlan}, L{Role}).
"""

import os
import random
import secrets
import socket
import tempfile
import time

from attrs import field, frozen
from twisted.logger import Logger


#: What each role's process runs: twistd, in a process group of its own.
TWISTD_IN_OWN_GROUP = "import os; os.setpgid(0, 0); from twisted.scripts.twistd import run; run()"

_log = Logger()

STATE_FILE = "cluster.json"
#: Where under C{var} the cluster's secrets are kept, a file each (0600).
SECRETS_DIR = "secrets"
METADATA_FILE = "metadata.sqlite"

#: Imageserver processes per registry port that C{up} starts unless told:
#: measured on a 2-core machine (see docs/quickstart.md).
DEFAULT_IMAGESERVER_WORKERS = 2

#: Each chunkserver's memory cache and staged-read memory in a cluster
#: C{up} starts unless told: sized for a workstation (the chunkservers'
#: own defaults, 512 MiB and 64 MiB, are for servers; three of them faulted
#: in 1.5 GiB of cache at start).  See docs/quickstart.md.
LOCAL_CACHE_SIZE = 64 * 2**20
LOCAL_STAGED_READ_LIMIT = 16 * 2**20

#: Each imageserver process's fill slots and upload backlog in a cluster
#: C{up} starts unless told: on loopback clients send faster than three
#: chunkservers store, and with the imageservers' own (8 slots, no backlog
#: limit) whole chunks piled up at one per upload (0.6 GiB per imageserver,
#: 0.47 GiB per chunkserver at concurrency 50 in the race); with these the
#: race's seven processes peaked at 1.3 GiB instead of 2.7, pushing as fast.
#: See docs/quickstart.md.
LOCAL_FILL_SLOTS = 4
LOCAL_UPLOAD_BACKLOG = 32 * 2**20


class ClusterError(Exception):
    """The cluster could not be started, stopped or read."""


class RoleFailed(ClusterError):
    """A role exited or stayed unhealthy while the cluster was starting."""


def _address(host, port):
    return f"{host}:{port}"


#: The kernel's range of ephemeral ports, where it is not readable.
EPHEMERAL_PORTS = (32768, 60999)
#: Free ports are picked from here up to the ephemeral range.
FIRST_PICKED_PORT = 10000


def ephemeral_ports(path="/proc/sys/net/ipv4/ip_local_port_range"):
    """@return: C{(low, high)}, the ports the kernel gives outgoing
    connections their local end from."""
    try:
        with open(path) as f:
            low, high = (int(n) for n in f.read().split())
        return low, high
    except (OSError, ValueError):
        return EPHEMERAL_PORTS


#: Where pickers on this machine note the ports they handed out, so that
#: no other picker hands one out again before its role has bound it.
PICKED_DIR = os.path.join(tempfile.gettempdir(), "speedy-picked-ports")
#: Seconds a picked port stays noted (a role binds its port long before).
PICKED_FOR = 600.0


def _note_picked(port, directory, now):
    """
    Note C{port} as picked, unless another picker noted it less than
    L{PICKED_FOR} seconds ago.

    @return: True if this call noted it.
    """
    path = os.path.join(directory, str(port))
    for stale_taken in (False, True):
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return True
        except FileExistsError:
            if stale_taken:  # another picker noted it afresh meanwhile
                return False
        try:
            if now - os.stat(path).st_mtime < PICKED_FOR:
                return False
            # Stale: one picker alone wins the rename, then notes it afresh.
            os.rename(path, f"{path}.stale-{os.getpid()}")
            os.unlink(f"{path}.stale-{os.getpid()}")
        except OSError:
            return False


def pick_free_port(host="127.0.0.1", rng=random, tries=100, directory=None, clock=time.time):
    """
    A port is picked some time before its role binds it.  A port from the
    kernel's ephemeral range may meanwhile become the local end of any
    outgoing connection on the machine, and another process's picker may
    hand out the same port (the role that binds it second then fails with
    EADDRINUSE).  So the port is picked at random below the ephemeral range,
    checked by binding it, and noted in C{directory} (L{PICKED_DIR}), which
    every picker on the machine skips for L{PICKED_FOR} seconds.  Only if
    none of C{tries} will do does the kernel pick.

    @return: a TCP port on C{host} that nothing is bound to right now.
    """
    directory = PICKED_DIR if directory is None else directory
    os.makedirs(directory, exist_ok=True)
    low, _ = ephemeral_ports()
    for _ in range(tries if low > FIRST_PICKED_PORT + 1 else 0):
        port = rng.randrange(FIRST_PICKED_PORT, low)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        if _note_picked(port, directory, clock()):
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@frozen
class Role:
    """
    One daemon of the cluster: its twistd plugin and arguments, where it
    listens, and how to tell it is healthy (an HTTP health URL, its
    C{/readyz}, or None to wait for its port to accept connections).  A
    role that C{shares_port} with others (an imageserver worker) must also
    be seen listening on it.  C{metrics_port} is its C{--metrics} side
    listener's, or None.
    """

    name: str
    plugin: str
    args: tuple
    host: str
    port: int
    health_url: str | None = None
    needs_writable_group: bool = False
    shares_port: bool = False
    metrics_port: int | None = None

    @property
    def address(self):
        return _address(self.host, self.port)

    def command(self, python, log_path):
        """@return: the argv that runs this role in the foreground, logging
        to C{log_path}."""
        return [python, "-c", TWISTD_IN_OWN_GROUP, "-n", "--pidfile=", "--logfile", log_path,
                self.plugin, *self.args]


@frozen
class ClusterPlan:
    """
    The shape of a local cluster: ports, sizes and the var directory.  Use
    L{ClusterPlan.build} to make one from command-line style arguments.
    """

    var: str
    host: str
    master_port: int
    chunkserver_ports: tuple
    imageserver_ports: tuple
    #: each chunkserver's C{--metrics} port, in order, or none
    chunkserver_metrics_ports: tuple = ()
    #: each imageserver worker's C{--metrics} port (imageserver by
    #: imageserver, worker by worker), or none
    imageserver_metrics_ports: tuple = ()
    group_size: int = 3
    imageserver_workers: int = 1
    chunk_size: int | None = None
    volume_size: int | None = None
    cache_size: int | None = None
    read_window: int | None = None
    cut_through: int | None = None
    heartbeat_interval: float | None = None
    scrub_rate: int | None = None
    htpasswd: str | None = None
    token_config: str | None = None
    access: str | None = None
    scrub_period: str | None = None
    gc_grace: str | None = None
    gc_sweep_grace: str | None = None
    replication: str | None = None
    #: the imageservers' C{--request-metrics}: C{on}, C{off} or theirs
    request_metrics: str | None = None
    staged_read_limit: int | None = None
    #: the imageservers' C{--fill-slots} and C{--upload-backlog}
    fill_slots: int | None = None
    upload_backlog: int | None = None
    db: str | None = None
    #: a L{speedy.localcluster.tls.LocalTLS}: the registry listens with TLS
    tls: object = None
    cluster_secret: str = field(factory=lambda: secrets.token_urlsafe(24), repr=False)
    admin_token: str = field(factory=lambda: secrets.token_urlsafe(24), repr=False)

    @classmethod
    def build(cls, var="var", registry="127.0.0.1:5000", master_port=8099, chunkserver_port=8001,
              chunkservers=3, imageservers=1, group_size=3, imageserver_workers=1,
              metrics_port=None, **options):
        """
        Lay out a cluster: imageservers on the registry port and the ones
        after it, C{imageserver_workers} processes sharing each of those
        ports, chunkservers on C{chunkserver_port} and the ones after it.
        A port of 0 gives every role of that kind a free port of its own.
        With C{metrics_port}, every chunkserver and every imageserver
        worker gets a C{--metrics} listener of its own, on that port and the
        ones after it (chunkservers first; 0: free ports), whose C{/readyz}
        tells C{up} that very process is ready; without, chunkservers are
        waited for by their wire port and imageservers by their registry
        port's C{/readyz}.

        @param options: C{chunk_size}, C{volume_size}, C{cache_size}, C{read_window},
            C{cut_through}, C{replication} (C{fanout} or C{chain}),
            C{staged_read_limit}, C{fill_slots}, C{upload_backlog}, C{heartbeat_interval}, C{scrub_rate} (bytes a second),
            C{scrub_period} (a duration: C{1s}, C{7d}), C{gc_grace} and
            C{gc_sweep_grace} (the chunkmaster's, durations), C{htpasswd} (the
            imageservers' users: C{--auth htpasswd:PATH}), C{access} (their
            allow rules), C{db} (the metadata store's
            URL; a SQLite file under C{var} by default), C{cluster_secret},
            C{admin_token}, C{tls} (a L{speedy.localcluster.tls.LocalTLS}:
            the imageservers listen with TLS).
        @raise ClusterError: on counts that cannot make a cluster.
        @return: a L{ClusterPlan}.
        """
        host, _, port = registry.rpartition(":")
        if not host or not port.isdigit():
            raise ClusterError(f"registry address must be HOST:PORT, not {registry!r}")
        if imageservers < 1:
            raise ClusterError("a cluster needs at least one imageserver")
        if imageserver_workers < 1:
            raise ClusterError("an imageserver needs at least one worker")
        if group_size < 1 or chunkservers < group_size or chunkservers % group_size:
            raise ClusterError(
                f"{chunkservers} chunkservers cannot form replica groups of {group_size}: "
                f"use a positive multiple of {group_size}")

        taken = set()

        def ports(first, count):
            """C{count} ports from C{first} on, or free ones (0), each
            distinct from every other port of the plan: the kernel may hand
            out a port it handed out a moment ago, once nothing holds it."""
            if first != 0:
                chosen = tuple(range(first, first + count))
            else:
                chosen = []
                while len(chosen) < count:
                    port = pick_free_port(host)
                    if port not in taken and port not in chosen:
                        chosen.append(port)
                chosen = tuple(chosen)
            taken.update(chosen)
            return chosen

        metrics = () if metrics_port is None else ports(
            int(metrics_port), chunkservers + imageservers * imageserver_workers)
        return cls(
            var=os.path.abspath(var), host=host,
            master_port=ports(int(master_port), 1)[0],
            chunkserver_ports=ports(int(chunkserver_port), chunkservers),
            imageserver_ports=ports(int(port), imageservers),
            chunkserver_metrics_ports=metrics[:chunkservers],
            imageserver_metrics_ports=metrics[chunkservers:],
            group_size=group_size, imageserver_workers=imageserver_workers, **options)

    def secret_file(self, name):
        """@return: the path of the file holding the secret C{name}
        (C{cluster-secret}, C{admin-token})."""
        return os.path.join(self.var, SECRETS_DIR, name)

    def write_secrets(self):
        """Write the cluster secret and the admin token, each to its
        L{secret_file}, readable by this user only: the roles read them
        there, so they never show on a command line."""
        directory = os.path.join(self.var, SECRETS_DIR)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        for name, value in [("cluster-secret", self.cluster_secret),
                            ("admin-token", self.admin_token)]:
            path = self.secret_file(name)
            descriptor = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as f:
                f.write(value + "\n")
            os.replace(path + ".new", path)

    @property
    def master_url(self):
        return f"http://{self.host}:{self.master_port}"

    @property
    def registries(self):
        """@return: the C{host:port} of every imageserver's registry."""
        return tuple(_address(self.host, p) for p in self.imageserver_ports)

    @property
    def registry_scheme(self):
        """@return: C{https} when the registry listens with TLS, else C{http}."""
        return "https" if self.tls is not None else "http"

    def _listen(self, port, shared=False, tls=False):
        if tls and self.tls is not None:
            return self.tls.listen("reuseport" if shared else "ssl", port, self.host)
        return f"{'reuseport' if shared else 'tcp'}:{port}:interface={self.host}"

    def roles(self):
        """@return: every L{Role} of the cluster, in the order they start."""
        db = self.db or "sqlite:" + os.path.join(self.var, METADATA_FILE)
        master = Role(
            "chunkmaster", "speedy-chunkmaster",
            ("--listen", self._listen(self.master_port), "--db", db,
             "--cluster-secret-file", self.secret_file("cluster-secret"),
             "--admin-token-file", self.secret_file("admin-token"),
             "--group-size", str(self.group_size))
            + (("--gc-grace", self.gc_grace) if self.gc_grace is not None else ())
            + (("--gc-sweep-grace", self.gc_sweep_grace)
               if self.gc_sweep_grace is not None else ()),
            self.host, self.master_port, health_url=f"{self.master_url}/readyz")
        chunkservers = []
        for i, port in enumerate(self.chunkserver_ports):
            args = ["--data-dir", os.path.join(self.var, f"chunkserver-{i + 1}"),
                    "--listen", self._listen(port), "--group-id", str(i // self.group_size + 1),
                    "--master", self.master_url,
                    "--cluster-secret-file", self.secret_file("cluster-secret")]
            if self.volume_size is not None:
                args += ["--volume-size", str(self.volume_size)]
            if self.cache_size is not None:
                args += ["--cache-size", str(self.cache_size)]
            if self.staged_read_limit is not None:
                args += ["--staged-read-limit", str(self.staged_read_limit)]
            if self.heartbeat_interval is not None:
                args += ["--heartbeat-interval", f"{self.heartbeat_interval:g}"]
            if self.scrub_rate is not None:
                args += ["--scrub-rate", str(self.scrub_rate)]
            if self.scrub_period is not None:
                args += ["--scrub-period", self.scrub_period]
            metrics = self._metrics_port(self.chunkserver_metrics_ports, i)
            if metrics is not None:
                args += ["--metrics", self._listen(metrics)]
            chunkservers.append(Role(
                f"chunkserver-{i + 1}", "speedy-chunkserver", tuple(args), self.host, port,
                health_url=self._readyz(metrics), metrics_port=metrics))
        shared = self.imageserver_workers > 1
        imageservers = []
        for i, port in enumerate(self.imageserver_ports):
            args = ["--listen", self._listen(port, shared, tls=True), "--master", self.master_url,
                    "--cluster-secret-file", self.secret_file("cluster-secret"), "--db", db]
            if self.chunk_size is not None:
                args += ["--chunk-size", str(self.chunk_size)]
            if self.read_window is not None:
                args += ["--read-window", str(self.read_window)]
            if self.cut_through is not None:
                args += ["--cut-through", str(self.cut_through)]
            if self.fill_slots is not None:
                args += ["--fill-slots", str(self.fill_slots)]
            if self.upload_backlog is not None:
                args += ["--upload-backlog", str(self.upload_backlog)]
            if self.replication is not None:
                args += ["--replication", self.replication]
            if self.request_metrics is not None:
                args += ["--request-metrics", self.request_metrics]
            if self.htpasswd is not None:
                args += ["--auth", "htpasswd:" + os.path.abspath(self.htpasswd)]
            if self.access is not None:
                args += ["--access", os.path.abspath(self.access)]
            if self.token_config is not None:
                args += ["--auth", "token:" + os.path.abspath(self.token_config)]
            for w in range(self.imageserver_workers):
                metrics = self._metrics_port(self.imageserver_metrics_ports,
                                             i * self.imageserver_workers + w)
                imageservers.append(Role(
                    f"imageserver-{i + 1}.{w + 1}" if shared else f"imageserver-{i + 1}",
                    "speedy-imageserver",
                    tuple(args) + (() if metrics is None else ("--metrics", self._listen(metrics))),
                    self.host, port,
                    health_url=(self._readyz(metrics) if metrics is not None else
                                f"{self.registry_scheme}://{self.host}:{port}/readyz"),
                    needs_writable_group=True, shares_port=shared, metrics_port=metrics))
        return (master, *chunkservers, *imageservers)

    @staticmethod
    def _metrics_port(ports, index):
        return ports[index] if index < len(ports) else None

    def _readyz(self, metrics_port):
        """@return: the C{/readyz} URL of a C{--metrics} listener (plain
        HTTP: it never has TLS), or None without one."""
        return None if metrics_port is None else f"http://{self.host}:{metrics_port}/readyz"
