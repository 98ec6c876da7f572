# -*- test-case-name: bench._test_loadgen -*-
"""
The reference servers the harnesses run as child processes: nginx (the
calibration ceiling, C{sendfile on}) and Debian's C{docker-registry} (CNCF
Distribution 2.8, filesystem storage).  Each listens where it is told,
optionally inside a network namespace (C{netns}).
"""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from _procstat import ProcessTree, descendants

from speedy.localcluster.health import judge_health
from speedy.localcluster.plan import pick_free_port

NGINX_CONF = """\
daemon off;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    server {{
        listen {host}:{port};
        root {dir}/www;
        location /v1/files/ {{
            client_max_body_size 0;
{put}
        }}
    }}
}}
"""

DISTRIBUTION_CONF = """\
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {dir}/data
  delete:
    enabled: true
http:
  addr: {host}:{port}
"""


#: PUT /v1/files/...: read and discarded (a pure ceiling), or stored and served back.
NGINX_PUT_SINK = "            if ($request_method = PUT) { return 201; }"
NGINX_PUT_STORE = "            dav_methods PUT;\n            create_full_put_path on;"


def free_port(host="127.0.0.1"):
    """@return: a TCP port on C{host} that nothing is bound to right now
    (L{speedy.localcluster.plan.pick_free_port})."""
    return pick_free_port(host)


def netns_prefix(netns):
    """@return: the argv prefix that runs a command in network namespace C{netns} (or none)."""
    return ["ip", "netns", "exec", netns] if netns else []


def accepts(host, port):
    """@return: whether C{host:port} accepts a TCP connection."""
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def http_healthy(url, writable_group=False):
    """
    @return: whether C{url} answers as a ready role does, judged as
        C{speedy-cluster} judges it (L{judge_health}: a C{/readyz} whose
        C{ready} is true, or a C{/v1/health} whose C{ok} is; with
        C{writable_group}, counting a writable group: an imageserver that
        can take writes).
    """
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            code, body = response.status, response.read()
    except urllib.error.HTTPError as e:
        code, body = e.code, e.read()
    except OSError:
        return False
    return judge_health(url, code, body, writable_group).healthy

def probe(netns, check, *args):
    """
    @param check: L{accepts} or L{http_healthy}.
    @return: C{check(*args)}, evaluated inside network namespace C{netns}
        (by a fresh Python there), or here when C{netns} is None.
    """
    if not netns:
        return check(*args)
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"import _servers; sys.exit(0 if _servers.{check.__name__}(*{args!r}) else 1)")
    return subprocess.run(netns_prefix(netns) + [sys.executable, "-c", code],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


class ServerProcess:
    """One server run as a foreground child process, logging into C{workdir}."""

    def __init__(self, name, argv, host, port, workdir, netns=None, ready=None, new_session=True):
        """
        @param ready: a callable answering whether the started server is
            ready for load; by default, whether its port accepts connections.
        @param new_session: start it in a session (and process group) of its
            own; False for a command that makes its own process group (a
            session leader may not).
        """
        self.name = name
        self.argv = netns_prefix(netns) + list(argv)
        self.host, self.port, self.netns = host, port, netns
        self.workdir = workdir
        self._ready = ready or (lambda: probe(netns, accepts, host, port))
        self._new_session = new_session
        self.process = None
        self.tree = None

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def start(self, timeout=30.0):
        """
        Start the process and wait until it is ready.

        @return: self.
        @raise RuntimeError: it exited or was not ready within C{timeout}
            seconds (its log is in the message).
        """
        log = open(os.path.join(self.workdir, f"{self.name}.out"), "ab")
        self.process = subprocess.Popen(self.argv, cwd=self.workdir, stdout=log, stderr=log,
                                        stdin=subprocess.DEVNULL, start_new_session=self._new_session)
        log.close()
        self.tree = ProcessTree(self.process.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            if self._ready():
                self.tree.sample()
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} was not ready on {self.host}:{self.port}:\n" + self.log())

    def log(self):
        """@return: the last 4000 characters of the process's output."""
        path = os.path.join(self.workdir, f"{self.name}.out")
        with open(path, errors="replace") as f:
            return f.read()[-4000:]

    def _signal_group(self, signum):
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:  # it has not made its own process group yet
            self.process.send_signal(signum)

    def stop(self, grace=30.0):
        """
        SIGTERM the process group, SIGKILL it after C{grace} seconds; then
        SIGKILL any descendant left behind in a process group of its own
        (a supervisor's daemons, should the supervisor have died first).
        """
        if self.process is None or self.process.poll() is not None:
            return
        left = descendants(self.process.pid) - {self.process.pid}
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.process.wait(grace)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _unprivileged():
    """@return: argv prefix that drops root to nobody (empty when not root)."""
    if os.geteuid() != 0:
        return []
    nobody = pwd.getpwnam("nobody")
    return ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]


def nginx(workdir, port, host="127.0.0.1", workers=2, netns=None, store_puts=False):
    """
    @param store_puts: store C{PUT /v1/files/...} bodies (to be fetched back)
        rather than discard them.
    @return: an unstarted L{ServerProcess} running nginx as an unprivileged
        user with its own config: static files from C{workdir/www} with
        sendfile, and C{PUT /v1/files/...} as a sink answering 201 or, with
        C{store_puts}, stored under C{workdir/www}.
    """
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    for sub in ("www/v1/files", "tmp"):
        os.makedirs(os.path.join(workdir, sub), exist_ok=True)
    with open(os.path.join(workdir, "nginx.conf"), "w") as f:
        f.write(NGINX_CONF.format(dir=workdir, host=host, port=port, workers=workers,
                                  put=NGINX_PUT_STORE if store_puts else NGINX_PUT_SINK))
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chmod(workdir, 0o755)
        for path in (workdir, os.path.join(workdir, "tmp"), os.path.join(workdir, "www", "v1", "files")):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
    argv = _unprivileged() + [binary, "-p", workdir, "-c", os.path.join(workdir, "nginx.conf"),
                              "-e", os.path.join(workdir, "error.log")]
    return ServerProcess("nginx", argv, host, port, workdir, netns)


def distribution(workdir, port, host="127.0.0.1", netns=None):
    """
    @return: an unstarted L{ServerProcess} running C{docker-registry serve}
        with filesystem storage under C{workdir/data}.
    """
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    config = os.path.join(workdir, "distribution.yml")
    with open(config, "w") as f:
        f.write(DISTRIBUTION_CONF.format(dir=workdir, host=host, port=port))
    return ServerProcess("docker-registry", [binary, "serve", config], host, port, workdir, netns)
