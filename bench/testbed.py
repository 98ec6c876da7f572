# -*- test-case-name: bench._test_loadgen -*-
"""
The emulated 1 GbE testbed of the original Speedy README, on this machine.

Five network namespaces hang off a bridge that lives in a sixth:

    speedybench-client  198.18.0.10   the load generator
    speedybench-node1   198.18.0.11   imageserver workers + chunkmaster (or nginx)
    speedybench-node2   198.18.0.12   chunkserver, replica group 1
    speedybench-node3   198.18.0.13   chunkserver, replica group 1
    speedybench-node4   198.18.0.14   chunkserver, replica group 1
    speedybench-bridge                bridge br0 joining the veth pairs

Every veth end is shaped with C{tc tbf} to C{--rate} (1 Gbit/s), so each
link is 1 Gbit/s in both directions, as the original's NICs were; each
queue holds C{--queue-latency} (20 ms) worth of bytes.  The
addresses are from the benchmarking range 198.18.0.0/15 and no namespace
has a default route, so no packet can leave; nothing is added to the host's
own namespace.  Everything is removed on exit, on SIGINT/SIGTERM/SIGHUP, and
by C{--cleanup} after a crash.  Needs root (C{ip netns}, C{tc}).

    sudo python bench/testbed.py --server nginx --counts 20 --concurrency 10
        the plumbing check: nginx (sendfile, PUTs stored) in node1, the
        load generator in client; upload and download should each sit
        just under the link rate (~112 MiB/s of payload at 1 Gbit/s)
    sudo python bench/testbed.py [--counts 100,500,1000] [--concurrency 10,50,100]
        the original's table against a Speedy cluster (file API, 16 MiB
        files; imageservers with --read-window 16KiB), a fresh cluster
        for each row
    sudo python bench/testbed.py --cleanup

Scale-out (issue 20) adds a second client, a second imageserver node and a
second replica group to the same bridge:

    speedybench-client2 198.18.0.20   a second load generator
    speedybench-node5   198.18.0.15   imageserver workers (the second node)
    speedybench-node6-8 198.18.0.16-18  chunkservers, replica group 2

    sudo python bench/testbed.py --scenario scale-out [--counts 100] [--concurrency 10]
        both clients at once (each C{count} files at C{concurrency}) against
        one imageserver node and one group, then against two and two (each
        client its own node): the aggregate upload and download
    sudo python bench/testbed.py --scenario rebalance|drain [--transfer-rate 32MiB]
        group 1 filled, group 2 started in the running cluster, the client's
        put/get without a transfer, then again during C{speedy-admin
        rebalance --spread 0} (or C{drain group 1}) at the chunkmaster's
        rate limit; the chunk bytes the transfer copied during the client's
        upload and download (watched by L{_transferwatch}), then the
        transfer's own throughput
    sudo python bench/testbed.py --scenario transfer [--transfer-rate 0,48MiB]
        for each rate, a fresh cluster: group 1 filled, group 2 started,
        group 1 drained with no client: the transfer's chunks/s and MiB/s
        against its limit (C{--no-shape}: unshaped veths)
    python bench/testbed.py --loopback --scenario transfer|rebalance|drain|scale-out
        the same, every host an address of this machine's loopback
        (127.0.100.x), no namespaces, no shaping, no root

The chunkmaster's C{--transfer-rate} counts every byte written to each
target replica: a chunk is written three times, so 48MiB lets at most 16
MiB/s of chunks move.

It prints every phase as a JSON line, then the table in the original
README's columns.  C{--iperf} adds a raw TCP measurement (iperf3) of the
client-node1 link in each direction.
"""

import argparse
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import attrs
from _servers import ServerProcess, http_healthy, netns_prefix, nginx, probe
from _stats import json_line
from _transferwatch import copied_between, read_samples, transfer_at

from speedy.localcluster import DEFAULT_IMAGESERVER_WORKERS, ClusterPlan, listening_ports
from speedy.units import parse_size

HERE = os.path.dirname(os.path.abspath(__file__))
PREFIX = "speedybench-"
BRIDGE_NS = PREFIX + "bridge"
HOSTS = {"client": "198.18.0.10", "node1": "198.18.0.11", "node2": "198.18.0.12",
         "node3": "198.18.0.13", "node4": "198.18.0.14"}
CHUNKSERVER_NODES = ("node2", "node3", "node4")
HTTP_PORT = 8080
#: How deep each shaped link's FIFO is, as time at the link rate.  Measured
#: with the kernel's sizing of the imageserver's chunkserver sockets (read
#: window 0; 100 files of 16 MiB; download M/s at concurrency 10 / 50 /
#: 100): 20 ms 104.9 / 108.5 / 106.8, 5 ms 111.2 / 102.7 / 105.3; nginx ran
#: at 114 with either.
QUEUE_LATENCY = "20ms"
#: The imageservers' --read-window, as for a deployment on 1 GbE: three
#: chunkservers answer node1 through one 1 Gbit/s link, and with the
#: kernel's own sizing their windows overran its queue (TCP incast).  The
#: windows of all the reads in flight must fit the queue in front of node1
#: (20 ms at 1 Gbit/s, 2.5 MB): 100 reads of 16 KiB do.  Measured (100
#: files; download M/s at concurrency 10 / 50 / 100): the kernel's sizing
#: 101.5-104.9 / 108.5 / 106.8, 128 KiB 110.0 / 108.2 / 109.2, 64 KiB
#: 111.1 / 107.9-109.1 (drops into node1 at 50), 32 KiB - / 109.7 / -,
#: 16 KiB 112.9 / 111.4 / 110.3 (no drops).
READ_WINDOW = "16KiB"
MASTER_PORT = 8099
CHUNKSERVER_PORT = 8001

ORIGINAL_COLUMNS = ("concurrent", "fileSize(M)", "file count", "upload time(seconds)",
                    "download time(seconds)", "upload speed(M/s)", "download speed(M/s)")


#: Whether the hosts are network namespaces (False with C{--loopback}).
_namespaces = True


def netns(name):
    """@return: host C{name}'s network namespace, or None on loopback."""
    return PREFIX + name if _namespaces else None


def _run(*argv):
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)


def our_namespaces():
    """@return: the names of the testbed's network namespaces that exist now."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def cleanup():
    """
    Kill every process still running inside a testbed namespace (they are
    the testbed's own) and delete the namespaces, which removes the veths,
    the bridge and the qdiscs with them.

    @return: the names of the namespaces removed.
    """
    removed = our_namespaces()
    for name in removed:
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout
        for pid in pids.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)
    return removed


def shape(namespace, device, rate, latency=QUEUE_LATENCY):
    """
    Limit C{device}'s egress in C{namespace} to C{rate} with a token bucket
    whose FIFO holds at most C{latency} worth of bytes at that rate.
    """
    _run("ip", "netns", "exec", namespace, "tc", "qdisc", "replace", "dev", device, "root",
         "tbf", "rate", rate, "burst", "256kb", "latency", latency)


def build(rate, latency=QUEUE_LATENCY, hosts=None):
    """
    Create the namespaces, the bridge and one shaped veth pair per host.

    @param rate: a tc rate such as C{"1gbit"}, or None for unshaped links.
    @param latency: the depth of each shaped link's queue (L{shape}).
    @param hosts: C{{name: address}} of the hosts (default: L{HOSTS}).
    """
    _run("ip", "netns", "add", BRIDGE_NS)
    _run("ip", "-n", BRIDGE_NS, "link", "add", "br0", "type", "bridge")
    _run("ip", "-n", BRIDGE_NS, "link", "set", "br0", "up")
    for host, address in (hosts or HOSTS).items():
        ns, port = netns(host), f"v-{host}"
        _run("ip", "netns", "add", ns)
        _run("ip", "-n", BRIDGE_NS, "link", "add", port, "type", "veth", "peer", "name", "eth0",
             "netns", ns)
        _run("ip", "-n", BRIDGE_NS, "link", "set", port, "master", "br0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        if rate:
            shape(ns, "eth0", rate, latency)
            shape(BRIDGE_NS, port, rate, latency)


def _worker_ready(servers, index, port, healthy):
    """
    @return: whether C{servers[index]}, an imageserver worker sharing
        C{port}, listens on it itself and C{healthy()} (the port answers
        healthy: whichever worker the kernel picked).
    """
    return port in listening_ports(servers[index].process.pid) and healthy()


def speedy_cluster(workdir, workers, read_window=None, cut_through=None, replication=None):
    """
    @return: unstarted L{ServerProcess}es, in start order, for a Speedy
        cluster laid out like the original's: chunkmaster and C{workers}
        imageserver processes sharing the HTTP port in node1, one
        chunkserver in each of node2-node4 (one replica group).  The roles
        and their flags are L{speedy.localcluster}'s; only the chunkservers'
        listen addresses move to their own nodes.
    @param read_window: the imageservers' C{--read-window} (None: their
        default).
    @param cut_through: the imageservers' C{--cut-through} (None: their
        default).
    @param replication: the imageservers' C{--replication} (None: their
        default).
    """
    plan = ClusterPlan.build(var=os.path.join(workdir, "var"), registry=f"{HOSTS['node1']}:{HTTP_PORT}",
                             master_port=MASTER_PORT, chunkserver_port=CHUNKSERVER_PORT,
                             chunkservers=len(CHUNKSERVER_NODES), imageserver_workers=workers,
                             read_window=read_window, cut_through=cut_through,
                             replication=replication)
    logs = os.path.join(plan.var, "logs")
    os.makedirs(logs, exist_ok=True)
    plan.write_secrets()  # where the roles read the cluster secret and admin token
    servers = []
    chunkserver_nodes = iter(CHUNKSERVER_NODES)
    for role in plan.roles():
        node = "node1"
        if role.plugin == "speedy-chunkserver":
            node = next(chunkserver_nodes)
            args = list(role.args)
            args[args.index("--listen") + 1] = f"tcp:{role.port}:interface={HOSTS[node]}"
            role = attrs.evolve(role, args=tuple(args), host=HOSTS[node])
        ready = None
        if role.health_url:
            ready = functools.partial(probe, netns(node), http_healthy, role.health_url,
                                      role.needs_writable_group)
        if role.shares_port:
            ready = functools.partial(_worker_ready, servers, len(servers), role.port, ready)
        servers.append(ServerProcess(role.name, role.command(sys.executable, os.path.join(
            logs, role.name + ".log")), role.host, role.port, workdir, netns=netns(node), ready=ready,
            new_session=False))
    return servers


def load(url, *, count, size, concurrency, label, phase_timeout):
    """
    Run the file API workload (PUT then GET, verified) from the client
    namespace.

    @return: the (put, get) phase summaries.
    @raise RuntimeError: the load generator failed.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as out:
        argv = netns_prefix(netns("client")) + [
            sys.executable, os.path.join(HERE, "loadgen.py"), url, "--api", "files",
            "--count", str(count), "--size", str(size), "--concurrency", str(concurrency),
            "--label", label, "--phase-timeout", str(phase_timeout), "--jsonl", out.name]
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              timeout=2 * phase_timeout + 120)
        rows = {row["op"]: row for row in map(json.loads, out.read().splitlines())}
    if "put" not in rows or "get" not in rows:
        raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr[-2000:]}")
    return rows["put"], rows["get"]


def iperf(seconds=5):
    """
    @return: iperf3's received bit rate client->node1 and node1->client,
        in Mbit/s, or None when iperf3 is not installed.
    """
    if shutil.which("iperf3") is None:
        return None
    rates = {}
    for direction, extra in (("client->node1", []), ("node1->client", ["-R"])):
        server = subprocess.Popen(netns_prefix(netns("node1")) + ["iperf3", "-s", "-1", "-B", HOSTS["node1"]],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            out = subprocess.run(netns_prefix(netns("client")) + [
                "iperf3", "-c", HOSTS["node1"], "-t", str(seconds), "-J", *extra],
                capture_output=True, text=True, timeout=seconds + 30).stdout
            rates[direction] = round(json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6, 1)
        finally:
            server.kill()
            server.wait()
    return rates


def original_row(put, get, size):
    """@return: one row of the original README table from a put and a get phase."""
    return {
        "concurrent": put["concurrency"], "fileSize(M)": size >> 20, "file count": put["requests"],
        "upload time(seconds)": round(put["wall_s"], 2), "download time(seconds)": round(get["wall_s"], 2),
        "upload speed(M/s)": put["MiB_s"], "download speed(M/s)": get["MiB_s"],
        "errors": put["errors"] + get["errors"],
        "error_kinds": {**put["error_kinds"], **get["error_kinds"]},
    }


def print_original_table(rows):
    """Print C{rows} in the original README's columns, then a note for each row with errors."""
    print(" ".join(ORIGINAL_COLUMNS))
    for row in rows:
        print(" ".join(str(row[c]) for c in ORIGINAL_COLUMNS))
    for row in rows:
        if row["errors"]:
            print(f"# {row['file count']} files at concurrency {row['concurrent']}: "
                  f"{row['errors']} errors ({row['error_kinds']}); speeds count only the "
                  "files that succeeded")


# --- scale-out: two imageserver nodes, two groups, transfers (issue 20) ------

#: The hosts the scale-out scenarios add to L{HOSTS}.
SCALE_OUT_HOSTS = {"client2": "198.18.0.20", "node5": "198.18.0.15", "node6": "198.18.0.16",
                   "node7": "198.18.0.17", "node8": "198.18.0.18"}
#: The nodes of each replica group's chunkservers, and of each imageserver.
GROUP_NODES = {1: ("node2", "node3", "node4"), 2: ("node6", "node7", "node8")}
IMAGESERVER_NODES = ("node1", "node5")
CLIENTS = ("client", "client2")
ALL_HOSTS = {**HOSTS, **SCALE_OUT_HOSTS}


def use_loopback():
    """
    Run the scale-out scenarios in this machine's own network namespace,
    unshaped (C{--loopback}, no root needed): each host becomes an address
    of the loopback's 127.0.0.0/8 with the last byte of its testbed
    address (node1 is 127.0.100.11), so the roles keep their ports.
    """
    global _namespaces
    _namespaces = False
    for hosts in (HOSTS, ALL_HOSTS):
        for name, address in hosts.items():
            hosts[name] = "127.0.100." + address.rsplit(".", 1)[1]


@attrs.frozen
class ScaleOutCluster:
    """A cluster laid out over the scale-out hosts: its plan, and its
    L{ServerProcess}es in start order, each with its replica group (None
    for the chunkmaster and the imageservers)."""

    plan: object
    servers: tuple  # of (group_id or None, ServerProcess)

    def admin(self, *argv):
        """@return: C{speedy-admin --json ARGV}'s answer, run in node1."""
        done = subprocess.run(
            netns_prefix(netns("node1")) + [
                sys.executable, "-m", "speedy.admin", "--master",
                f"http://{HOSTS['node1']}:{MASTER_PORT}", "--token-file",
                self.plan.secret_file("admin-token"), "--json", *argv],
            capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"speedy-admin {' '.join(argv)}: {done.stderr[-2000:]}")
        return json.loads(done.stdout)


def scale_out_cluster(workdir, *, workers, imageserver_nodes, groups, master_args=(),
                      read_window=None, replication=None):
    """
    @return: an unstarted L{ScaleOutCluster}: the chunkmaster (with
        C{master_args} added) and C{workers} imageserver workers on each of
        the first C{imageserver_nodes} of L{IMAGESERVER_NODES}, all on
        L{HTTP_PORT}, and C{groups} replica groups on L{GROUP_NODES}.
        The roles and their flags are L{speedy.localcluster}'s.
    """
    plan = ClusterPlan.build(var=os.path.join(workdir, "var"),
                             registry=f"{HOSTS['node1']}:{HTTP_PORT}", master_port=MASTER_PORT,
                             chunkserver_port=CHUNKSERVER_PORT, chunkservers=3 * groups,
                             imageservers=imageserver_nodes, imageserver_workers=workers,
                             read_window=read_window, replication=replication)
    os.makedirs(os.path.join(plan.var, "logs"), exist_ok=True)
    plan.write_secrets()
    servers, processes = [], []
    for role in plan.roles():
        args, node, group = list(role.args), "node1", None
        if role.plugin == "speedy-chunkmaster":
            args += list(master_args)
        elif role.plugin == "speedy-chunkserver":
            index = int(role.name.rsplit("-", 1)[1]) - 1
            group = index // 3 + 1
            node = GROUP_NODES[group][index % 3]
            args[args.index("--listen") + 1] = f"tcp:{role.port}:interface={ALL_HOSTS[node]}"
        else:
            node = IMAGESERVER_NODES[int(role.name.split("-")[1].split(".")[0]) - 1]
            at = args.index("--listen") + 1
            args[at] = f"{args[at].split(':')[0]}:{HTTP_PORT}:interface={ALL_HOSTS[node]}"
            role = attrs.evolve(role, port=HTTP_PORT,
                                health_url=f"http://{ALL_HOSTS[node]}:{HTTP_PORT}/v1/health")
        role = attrs.evolve(role, args=tuple(args), host=ALL_HOSTS[node])
        ready = None
        if role.health_url:
            ready = functools.partial(probe, netns(node), http_healthy, role.health_url,
                                      role.needs_writable_group)
        if role.shares_port:
            ready = functools.partial(_worker_ready, processes, len(processes), role.port, ready)
        processes.append(ServerProcess(
            role.name, role.command(sys.executable, os.path.join(plan.var, "logs",
                                                                  role.name + ".log")),
            role.host, role.port, workdir, netns=netns(node), ready=ready, new_session=False))
        servers.append((group, processes[-1]))
    return ScaleOutCluster(plan, tuple(servers))


def concurrent_load(targets, *, count, size, concurrency, label, phase_timeout, ops="put,get"):
    """
    Run the file API workload from several clients at once, each
    C{(client, node)} of C{targets} against the imageserver in C{node}.

    @return: C{{op: row}}: per op, the clients' rows and the aggregate,
        the bytes all moved over the longest client's wall time (a lower
        bound: the clients started together).
    """
    outs, running = [], []
    try:
        for client, node in targets:
            out = tempfile.NamedTemporaryFile("r", suffix=".jsonl")
            outs.append(out)
            running.append(subprocess.Popen(netns_prefix(netns(client)) + [
                sys.executable, os.path.join(HERE, "loadgen.py"),
                f"http://{ALL_HOSTS[node]}:{HTTP_PORT}", "--api", "files", "--ops", ops,
                "--count", str(count), "--size", str(size), "--concurrency", str(concurrency),
                "--label", f"{label}-{client}", "--phase-timeout", str(phase_timeout),
                "--jsonl", out.name],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        results = {}
        for (client, node), process, out in zip(targets, running, outs):
            _, err = process.communicate(timeout=2 * phase_timeout + 120)
            rows = {row["op"]: row for row in map(json.loads, out.read().splitlines())}
            for op in ops.split(","):
                if op not in rows:
                    raise RuntimeError(f"load generator in {client} failed "
                                       f"({process.returncode}): {err[-2000:]}")
                results.setdefault(op, []).append(dict(rows[op], client=client, node=node))
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
        for out in outs:
            out.close()
    answer = {}
    for op, rows in results.items():
        moved = sum(row["ok"] for row in rows) * size
        wall = max(row["wall_s"] for row in rows)
        answer[op] = {"op": op, "clients": rows, "errors": sum(row["errors"] for row in rows),
                      "aggregate_MiB_s": round(moved / (1 << 20) / wall, 2),
                      "sum_MiB_s": round(sum(row["MiB_s"] for row in rows), 2),
                      "wall_s": wall}
    return answer


def _start(servers, started, group=None):
    for server_group, server in servers:
        if server_group == group or (group is None and server_group in (None, 1)):
            started.append(server.start(timeout=120))


def scale_out(args, workdir_for):
    """The scale-out table: both clients against one imageserver node and one
    group, then against two and two.  @return: the rows."""
    rows = []
    for nodes, groups in ((1, 1), (2, 2)):
        with workdir_for(args.counts[0] * 2 * args.size * 3) as workdir:
            cluster = scale_out_cluster(workdir, workers=args.imageserver_workers,
                                        imageserver_nodes=nodes, groups=groups,
                                        read_window=args.read_window,
                                        replication=args.replication)
            started = []
            try:
                for _, server in cluster.servers:
                    started.append(server.start(timeout=120))
                targets = [(client, IMAGESERVER_NODES[i % nodes])
                           for i, client in enumerate(CLIENTS)]
                result = concurrent_load(targets, count=args.counts[0], size=args.size,
                                         concurrency=args.concurrency[0],
                                         label=f"scale-{nodes}x{groups}",
                                         phase_timeout=args.phase_timeout)
            finally:
                for server in reversed(started):
                    server.stop()
        row = {"imageserver_nodes": nodes, "groups": groups, "clients": len(CLIENTS),
               "files_per_client": args.counts[0], "concurrency_per_client": args.concurrency[0],
               "put": result["put"], "get": result["get"]}
        print(json_line(row), flush=True)
        rows.append(row)
    print()
    print("| imageserver nodes x groups | upload MiB/s (aggregate) | download MiB/s (aggregate) |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['imageserver_nodes']} x {row['groups']} | "
              f"{row['put']['aggregate_MiB_s']} | {row['get']['aggregate_MiB_s']} |")
    if len(rows) == 2:
        print(f"scale-out: upload {rows[1]['put']['aggregate_MiB_s'] / rows[0]['put']['aggregate_MiB_s']:.2f}x, "
              f"download {rows[1]['get']['aggregate_MiB_s'] / rows[0]['get']['aggregate_MiB_s']:.2f}x")
    return rows


def _started(answer):
    """@return: the transfer C{speedy-admin --json drain|rebalance} started."""
    if not answer.get("transfers"):
        raise RuntimeError(f"no transfer started: {answer}")
    return answer["transfers"][0]


def _wait_transfer(cluster, transfer_id, timeout, until=("deleting", "done")):
    """@return: the transfer's row once its state is in C{until}."""
    deadline = time.monotonic() + timeout
    while True:
        transfers = cluster.admin("transfers")["transfers"]
        row = next(t for t in transfers if t["transfer_id"] == transfer_id)
        if row["state"] in until:
            return row
        if time.monotonic() > deadline:
            raise RuntimeError(f"transfer {transfer_id} still {row['state']} after {timeout}s")
        time.sleep(0.5)


@contextlib.contextmanager
def watching(cluster, interval=1.0):
    """
    Run L{_transferwatch} against the chunkmaster, in node1, while the
    block runs.

    @return: a context manager giving a callable that answers the
        watcher's samples so far.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as out:
        process = subprocess.Popen(netns_prefix(netns("node1")) + [
            sys.executable, os.path.join(HERE, "_transferwatch.py"),
            f"http://{HOSTS['node1']}:{MASTER_PORT}", cluster.plan.secret_file("admin-token"),
            out.name, "--interval", str(interval)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield functools.partial(read_samples, out.name)
        finally:
            process.kill()
            process.wait()


def _rate_limit(rate):
    """@return: the chunkmaster's C{--transfer-rate} in bytes a second (0: none)."""
    return parse_size(rate) if rate not in ("0", "") else 0


def _two_groups(args, workdir, started, rate, fill):
    """
    Start a cluster of one imageserver node and replica group 1, put
    C{fill} files into it from the client, then start group 2 in the
    running cluster (no restart of any role) and wait until it takes writes.

    @return: the L{ScaleOutCluster}.
    """
    master_args = ["--transfer-rate", rate, "--transfer-parallelism",
                   str(args.transfer_parallelism), "--transfer-interval", "1",
                   "--transfer-delete-delay", "5s"]
    cluster = scale_out_cluster(workdir, workers=args.imageserver_workers,
                                imageserver_nodes=1, groups=2, master_args=master_args,
                                read_window=args.read_window, replication=args.replication)
    _start(cluster.servers, started)
    concurrent_load([("client", "node1")], count=fill, size=args.size, concurrency=10, ops="put",
                    label="fill", phase_timeout=args.phase_timeout)
    _start(cluster.servers, started, group=2)  # a group joins the running cluster
    deadline = time.monotonic() + 120
    while cluster.admin("status")["writable_groups"] < 2:
        if time.monotonic() > deadline:
            raise RuntimeError("group 2 never became writable")
        time.sleep(0.5)
    return cluster


def _finished(done, began):
    """@return: a finished transfer's row with its time and rates: from
    C{began} (or its creation) to its last switch."""
    seconds = time.time() - began
    if done["state"] == "deleting":  # its last save: the last chunk switched
        seconds = done["updated"] - done["created"]
    return dict(done, seconds=round(seconds, 1),
                chunks_s=round(done["chunks_done"] / seconds, 2),
                MiB_s=round(done["bytes_done"] / (1 << 20) / seconds, 2),
                loadavg=round(os.getloadavg()[0], 2))


def _copied_during(samples, transfer_id, phase):
    """@return: what the transfer did during a client phase C{phase} (a
    L{concurrent_load} row): chunk bytes copied, their MiB/s, and its state
    at the phase's end."""
    start = min(row["started_at"] for row in phase["clients"])
    end = max(row["ended_at"] for row in phase["clients"])
    copied = copied_between(samples, start, end)
    at_end = transfer_at(samples, transfer_id, end)
    return {"seconds": round(end - start, 1), "copied_MiB": round(copied / (1 << 20), 1),
            "copied_MiB_s": round(copied / (1 << 20) / max(end - start, 1e-9), 2),
            "state_at_end": at_end and at_end["state"]}


def during_transfer(args, workdir_for):
    """
    The rebalance and drain scenarios: the client's put/get without a
    transfer, then again while a rebalance onto group 2 (or a drain of
    group 1) runs at the chunkmaster's rate limit; what the transfer copied
    meanwhile; then the transfer's own throughput.

    @return: the result row.
    """
    rate = args.transfer_rate[0]
    fill = args.fill or args.counts[0]
    need = (fill + 2 * args.counts[0]) * args.size * 3 * 2
    row = {"scenario": args.scenario, "transfer_rate": rate,
           "limit_chunk_MiB_s": round(_rate_limit(rate) / 3 / (1 << 20), 2),
           "transfer_parallelism": args.transfer_parallelism, "fill_files": fill,
           "files": args.counts[0], "concurrency": args.concurrency[0], "size": args.size,
           "shaped": not (args.no_shape or args.loopback), "loopback": args.loopback}
    with workdir_for(need) as workdir:
        started = []
        try:
            cluster = _two_groups(args, workdir, started, rate, fill)
            clients = dict(count=args.counts[0], concurrency=args.concurrency[0], size=args.size,
                           phase_timeout=args.phase_timeout)
            with watching(cluster) as samples:
                row["without"] = concurrent_load([("client", "node1")], label="without",
                                                 **clients)
                began = time.time()
                if args.scenario == "rebalance":
                    transfer = _started(cluster.admin("rebalance", "--spread", "0"))
                else:
                    transfer = _started(cluster.admin("drain", "group", "1"))
                row["during"] = concurrent_load([("client", "node1")], label="during",
                                                **clients)
                done = _wait_transfer(cluster, transfer["transfer_id"], args.phase_timeout)
                row["transfer"] = _finished(done, began)
                for op in ("put", "get"):
                    row["transfer"][f"during_{op}"] = _copied_during(
                        samples(), transfer["transfer_id"], row["during"][op])
        finally:
            for server in reversed(started):
                server.stop()
    print(json_line(row), flush=True)
    print()
    moved = row["transfer"]
    print(f"{args.scenario} at --transfer-rate {rate} (chunks at most "
          f"{row['limit_chunk_MiB_s'] or 'unlimited'} MiB/s): {moved['chunks_done']} chunks, "
          f"{moved['bytes_done'] / (1 << 20):.0f} MiB moved in {moved['seconds']} s, "
          f"{moved['MiB_s']} MiB/s of chunks")
    print("| clients | upload MiB/s | download MiB/s | transfer MiB/s of chunks during "
          "upload / download | load average |")
    print("|---|---|---|---|---|")
    for name in ("without", "during"):
        put, get = row[name]["put"], row[name]["get"]
        copied = "-"
        if name == "during":
            copied = (f"{moved['during_put']['copied_MiB_s']} / "
                      f"{moved['during_get']['copied_MiB_s']}")
        print(f"| {name} a {args.scenario} | {put['aggregate_MiB_s']} | "
              f"{get['aggregate_MiB_s']} | {copied} | "
              f"{put['clients'][0]['loadavg']} / {get['clients'][0]['loadavg']} |")
    print(f"the {args.scenario} at the end of the clients' download: "
          f"{moved['during_get']['state_at_end']}")
    return row


def transfer_throughput(args, workdir_for):
    """
    The transfer scenario: for each of C{--transfer-rate}, a fresh cluster,
    group 1 filled, group 2 started, group 1 drained with no client: the
    drain's chunks/s and MiB/s against its limit.

    @return: the result rows.
    """
    fill = args.fill or args.counts[0]
    rows = []
    for rate in args.transfer_rate:
        with workdir_for(fill * args.size * 3 * 2) as workdir:
            started = []
            try:
                cluster = _two_groups(args, workdir, started, rate, fill)
                began = time.time()
                transfer = _started(cluster.admin("drain", "group", "1"))
                done = _wait_transfer(cluster, transfer["transfer_id"], args.phase_timeout)
            finally:
                for server in reversed(started):
                    server.stop()
        limit = _rate_limit(rate) / 3 / (1 << 20)
        finished = _finished(done, began)
        row = dict(finished, scenario="transfer", transfer_rate=rate,
                   limit_chunk_MiB_s=round(limit, 2),
                   of_limit=round(finished["MiB_s"] / limit, 3) if limit else None,
                   transfer_parallelism=args.transfer_parallelism, fill_files=fill,
                   size=args.size, shaped=not (args.no_shape or args.loopback),
                   loopback=args.loopback, replication=args.replication)
        print(json_line(row), flush=True)
        rows.append(row)
    print()
    print("| --transfer-rate | limit, MiB/s of chunks | chunks | MiB | seconds | chunks/s | "
          "MiB/s of chunks | written MiB/s (x3) | load average |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['transfer_rate']} | {row['limit_chunk_MiB_s'] or 'none'} | "
              f"{row['chunks_done']} | {row['bytes_done'] / (1 << 20):.0f} | {row['seconds']} | "
              f"{row['chunks_s']} | {row['MiB_s']} | {3 * row['MiB_s']:.2f} | {row['loadavg']} |")
    return rows


def run_scale_out(args):
    """Build the scale-out testbed (unless C{--loopback}), run
    C{args.scenario}, tear it down.  @return: the exit code."""

    @contextlib.contextmanager
    def workdir_for(need):
        with tempfile.TemporaryDirectory(prefix="speedy-testbed-") as workdir:
            if shutil.disk_usage(workdir).free < need * 1.1:
                raise RuntimeError(f"needs {need >> 30} GiB of disk")
            yield workdir

    if not args.loopback:
        build(None if args.no_shape else args.rate, args.queue_latency, hosts=ALL_HOSTS)
    if args.scenario == "scale-out":
        rows = scale_out(args, workdir_for)
        return 1 if any(row[op]["errors"] for row in rows for op in ("put", "get")) else 0
    if args.scenario == "transfer":
        transfer_throughput(args, workdir_for)
        return 0
    row = during_transfer(args, workdir_for)
    errors = sum(row[name][op]["errors"] for name in ("without", "during")
                 for op in ("put", "get"))
    return 1 if errors else 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run(args):
    """Build the testbed, run the table, tear it all down.  @return: the exit code."""
    rows = []
    build(None if args.no_shape else args.rate, args.queue_latency)
    if args.iperf:
        print(json_line({"iperf_mbit_s": iperf(), "rate": None if args.no_shape else args.rate}),
              flush=True)
    for count in args.counts:
        for concurrency in args.concurrency:
            with tempfile.TemporaryDirectory(prefix="speedy-testbed-") as workdir:
                need = count * args.size * (1 if args.server == "nginx" else 3)
                if shutil.disk_usage(workdir).free < need * 1.1:
                    print(f"testbed: skipping {count} files at {concurrency}: needs "
                          f"{need >> 30} GiB of disk", file=sys.stderr)
                    continue
                if args.server == "nginx":
                    servers = [nginx(workdir, HTTP_PORT, host=HOSTS["node1"], netns=netns("node1"),
                                     store_puts=True)]
                else:
                    servers = speedy_cluster(workdir, args.imageserver_workers, args.read_window,
                                             args.cut_through, args.replication)
                started = []
                try:
                    for server in servers:
                        started.append(server.start(timeout=120))
                    put, get = load(f"http://{HOSTS['node1']}:{HTTP_PORT}", count=count, size=args.size,
                                    concurrency=concurrency, label=f"testbed-{args.server}",
                                    phase_timeout=args.phase_timeout)
                finally:
                    for server in reversed(started):
                        server.stop()
            for phase in (put, get):
                if args.server == "speedy":
                    phase = {**phase, "read_window": args.read_window,
                             "cut_through": args.cut_through, "replication": args.replication}
                print(json_line(phase), flush=True)
            rows.append(original_row(put, get, args.size))
    print()
    print_original_table(rows)
    return 1 if any(row["errors"] for row in rows) else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("speedy", "nginx"), default="speedy")
    parser.add_argument("--counts", default="100,500,1000",
                        type=lambda s: [int(c) for c in s.split(",")])
    parser.add_argument("--concurrency", default="10,50,100",
                        type=lambda s: [int(c) for c in s.split(",")])
    parser.add_argument("--size", type=parse_size, default="16MiB")
    parser.add_argument("--imageserver-workers", type=int, default=DEFAULT_IMAGESERVER_WORKERS,
                        help="imageserver processes sharing the HTTP port")
    parser.add_argument("--read-window", type=parse_size, default=READ_WINDOW,
                        help="the imageservers' --read-window: the receive buffer of their "
                        "chunkserver sockets (0: the kernel sizes it)")
    parser.add_argument("--cut-through", type=int, default=None,
                        help="the imageservers' --cut-through: chunks sent on while they "
                        "arrive, at once (default: theirs; 0: every chunk once whole)")
    parser.add_argument("--replication", choices=("fanout", "chain"), default=None,
                        help="the imageservers' --replication (default: theirs)")
    parser.add_argument("--rate", default="1gbit", help="tc rate of every link")
    parser.add_argument("--queue-latency", default=QUEUE_LATENCY,
                        help="depth of each link's queue, as time at the link rate (tc tbf latency)")
    parser.add_argument("--no-shape", action="store_true", help="leave the links unshaped (for comparison)")
    parser.add_argument("--iperf", action="store_true", help="measure the raw TCP rate with iperf3 first")
    parser.add_argument("--phase-timeout", type=float, default=1800.0)
    parser.add_argument("--cleanup", action="store_true", help="remove a testbed left behind, and exit")
    parser.add_argument("--scenario",
                        choices=("table", "scale-out", "rebalance", "drain", "transfer"),
                        default="table", help="table: the original's table (one node, one "
                        "group); the others: see the module docstring (first of --counts and "
                        "--concurrency only)")
    parser.add_argument("--transfer-rate", default=["32MiB"], type=lambda s: s.split(","),
                        help="the chunkmaster's --transfer-rate (rebalance, drain: the first; "
                        "transfer: a fresh cluster for each of a comma-separated list; 0: none)")
    parser.add_argument("--transfer-parallelism", type=int, default=2,
                        help="the chunkmaster's --transfer-parallelism (rebalance, transfer)")
    parser.add_argument("--fill", type=int, default=None,
                        help="files put into group 1 before the transfer (default: --counts)")
    parser.add_argument("--loopback", action="store_true",
                        help="scale-out, rebalance, drain, transfer: every host on an address "
                        "of this machine's loopback, unshaped, no namespaces (no root needed)")
    args = parser.parse_args(argv)
    if args.loopback:
        if args.scenario == "table" or args.cleanup:
            parser.error("--loopback runs the scale-out, rebalance, drain and transfer "
                         "scenarios only")
        use_loopback()
    elif os.geteuid() != 0:
        print("testbed.py needs root: it creates network namespaces and tc qdiscs", file=sys.stderr)
        return 2
    elif args.cleanup:
        for name in cleanup():
            print(f"removed {name}")
        return 0
    elif our_namespaces():
        print(f"testbed: namespaces {PREFIX}* exist already (another run, or a crash): "
              "run with --cleanup first", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupt)
    try:
        if args.scenario != "table":
            return run_scale_out(args)
        return run(args)
    except KeyboardInterrupt as e:
        print(f"testbed: interrupted ({e}); removing the testbed", file=sys.stderr)
        return 130
    finally:
        if not args.loopback:
            cleanup()


if __name__ == "__main__":
    sys.exit(main())
