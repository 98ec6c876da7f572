# -*- test-case-name: bench._test_loadgen -*-
"""
The load generator: closed-loop HTTP load at a fixed concurrency, built not to
be the bottleneck.

Concurrency N is N lanes; each lane is a thread with its own keep-alive
C{http.client} connection, and the lanes are spread over P worker processes
(default: one per core, at most N) so that Python's GIL is not the limit.
Payloads are fresh random bytes every run (L{_dataset.Dataset}), generated
and hashed before the start signal whenever they fit the preload budget, so
the measured window holds only network work.  Bodies are sent from a
C{memoryview} (no copy) and pulled bodies are read into a reused buffer and
sha256-verified as they arrive; a wrong digest, a short body or a wrong
status counts as an error, never as throughput.

Operations (C{--ops}):

    registry API                       file API (imageserver)
    push      POST + PUT (monolithic)  put   PUT /v1/files/<path>
              or POST/PATCH.../PUT     get   GET /v1/files/<path>, verified
    pull      GET blob, verified
    head      HEAD blob, length checked
    manifest  GET manifest, verified

    python bench/loadgen.py http://127.0.0.1:5000 --ops push,pull,head,manifest \\
        --count 100 --size 16MiB --concurrency 10,50 --jsonl out.jsonl --plot out/

prints one JSON object per phase and a markdown table at the end.  Every
phase is bounded: at most C{--count} (or C{--requests}) requests and at most
C{--phase-timeout} seconds.
"""

import argparse
import collections
import hashlib
import http.client
import json
import multiprocessing
import os
import queue
import ssl
import sys
import threading
import time
from urllib.parse import urljoin, urlsplit

from _dataset import Dataset, Item, sha256_digest
from _stats import MiB, human_size, json_line, markdown_table, summarize
from _wrk import available as wrk_available
from _wrk import wrk_phase
from plot import plot_rows

from speedy.units import parse_size

READ_BUFFER = 1 * MiB
ERROR_BODY_LIMIT = 64 * 1024

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"

#: Columns of the markdown table, shared by every harness.
TABLE_COLUMNS = [
    ("target", "target"), ("op", "op"), ("conc", "concurrency"), ("object", "object"),
    ("ok", "ok"), ("errors", "errors"), ("MiB/s", "MiB_s"), ("req/s", "req_s"),
    ("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"), ("loadgen cores", "loadgen_cores"),
    ("load avg", "loadavg"),
]


def _port(url):
    """@return: the port of a split URL, or its scheme's."""
    return url.port or (443 if url.scheme == "https" else 80)


class RequestFailed(Exception):
    """One request did not do what the operation needs; C{args[0]} names why."""


class Connection:
    """
    One keep-alive HTTP/1.1 connection to C{host:port}, reopened after any
    failure.  Not thread-safe: each lane owns one.  With C{tls}, HTTPS
    checked against the system's CAs, or the PEM file C{$SSL_CERT_FILE}
    names (the throwaway CA of C{speedy-cluster up --tls}).  C{headers} go
    with every request (credentials, say).
    """

    def __init__(self, host, port, timeout, tls=False, headers=None):
        self._address = (host, port)
        self._timeout = timeout
        self._tls = tls
        self._headers = dict(headers or {})
        self._http = None

    def close(self):
        if self._http is not None:
            self._http.close()
            self._http = None

    def exchange(self, method, path, body=None, headers=None, hasher=None):
        """
        Send one request and read the whole answer.

        @param body: bytes or memoryview, sent without copying.
        @param hasher: a hashlib object fed the answer's body as it arrives;
            without one, bodies over 64 KiB are an error.
        @return: (status, headers message, body bytes read, body or None).
            The body is returned only when no hasher was given.
        @raise RequestFailed: on a socket error, a malformed or truncated answer.
        """
        if self._http is None:
            if self._tls:
                self._http = http.client.HTTPSConnection(
                    *self._address, timeout=self._timeout, context=ssl.create_default_context())
            else:
                self._http = http.client.HTTPConnection(*self._address, timeout=self._timeout)
        try:
            self._http.request(method, path, body=body, headers={**self._headers, **(headers or {})})
            response = self._http.getresponse()
            received = 0
            kept = bytearray()
            buffer = memoryview(bytearray(READ_BUFFER if hasher else ERROR_BODY_LIMIT))
            while True:
                n = response.readinto(buffer)  # 0 at once for HEAD, which is then done
                if not n:
                    break
                received += n
                if hasher is not None:
                    hasher.update(buffer[:n])
                elif received > ERROR_BODY_LIMIT:
                    raise RequestFailed("unexpectedly large body")
                else:
                    kept += buffer[:n]
            if response.length:  # http.client ends a short body quietly; we do not
                raise RequestFailed("truncated body")
            if response.will_close:
                self.close()
            return response.status, response.headers, received, (None if hasher else bytes(kept))
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise RequestFailed(type(e).__name__) from e
        except RequestFailed:
            self.close()
            raise


def _expect(status, wanted, what):
    if status not in wanted:
        raise RequestFailed(f"{what}: HTTP {status}")


def _location(base_path, headers, what):
    """@return: the path (and query) of an upload's C{Location}, on the same server."""
    location = headers.get("Location")
    if not location:
        raise RequestFailed(f"{what}: no Location")
    parts = urlsplit(urljoin(base_path, location))
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _with_query(path, query):
    return path + ("&" if "?" in path else "?") + query


class Operations:
    """
    The operations a lane can run.  Each method takes a L{Connection}, an
    L{Item} and (for uploads) the payload, and returns the number of payload
    bytes it moved, or raises L{RequestFailed}.
    """

    def __init__(self, repository, upload="monolithic", patch_size=16 * MiB):
        self.repository = repository
        self.upload = upload
        self.patch_size = patch_size

    def push(self, conn, item, payload):
        start = f"/v2/{self.repository}/blobs/uploads/"
        status, headers, _, _ = conn.exchange("POST", start, headers={"Content-Length": "0"})
        _expect(status, (202,), "POST upload")
        location = _location(start, headers, "POST upload")
        octets = {"Content-Type": "application/octet-stream"}
        if self.upload == "monolithic":
            final_body = payload
        else:
            view = memoryview(payload)
            for offset in range(0, len(view), self.patch_size):
                piece = view[offset:offset + self.patch_size]
                status, headers, _, _ = conn.exchange("PATCH", location, body=piece, headers=dict(
                    octets, **{"Content-Range": f"{offset}-{offset + len(piece) - 1}"}))
                _expect(status, (202,), "PATCH")
                location = _location(location, headers, "PATCH")
            final_body = b""
        status, headers, _, _ = conn.exchange(
            "PUT", _with_query(location, "digest=" + item.digest), body=final_body, headers=octets)
        _expect(status, (201,), "PUT upload")
        stored = headers.get("Docker-Content-Digest")
        if stored is not None and stored != item.digest:
            raise RequestFailed("digest mismatch")
        return item.size

    def pull(self, conn, item, payload=None):
        return self._verified_get(conn, f"/v2/{self.repository}/blobs/{item.digest}", item, {})

    def head(self, conn, item, payload=None):
        status, headers, _, _ = conn.exchange("HEAD", f"/v2/{self.repository}/blobs/{item.digest}")
        _expect(status, (200,), "HEAD")
        if headers.get("Content-Length") != str(item.size):
            raise RequestFailed("HEAD: wrong Content-Length")
        return 0

    def manifest(self, conn, item, payload=None):
        return self._verified_get(conn, f"/v2/{self.repository}/manifests/{item.name}", item,
                                  {"Accept": OCI_MANIFEST})

    def put(self, conn, item, payload):
        status, _, _, _ = conn.exchange("PUT", f"/v1/files/{item.name}", body=payload,
                                        headers={"Content-Type": "application/octet-stream"})
        _expect(status, (200, 201, 204), "PUT file")
        return item.size

    def get(self, conn, item, payload=None):
        return self._verified_get(conn, f"/v1/files/{item.name}", item, {})

    def _verified_get(self, conn, path, item, headers):
        hasher = hashlib.sha256()
        status, _, received, _ = conn.exchange("GET", path, headers=headers, hasher=hasher)
        _expect(status, (200,), "GET")
        if received != item.size:
            raise RequestFailed("wrong length")
        if "sha256:" + hasher.hexdigest() != item.digest:
            raise RequestFailed("digest mismatch")
        return received


UPLOADS = {"push", "put"}
OPS = ("push", "pull", "head", "manifest", "put", "get")


def _upload_item(op, dataset, index, payload, run_prefix):
    digest = sha256_digest(payload)
    name = digest if op == "push" else f"{run_prefix}/{index:06d}"
    return Item(index=index, name=name, size=len(payload), digest=digest)


def _worker(spec, jobs, ready, go, results):
    """
    One worker process: prepare, report ready, wait for the start signal,
    run C{spec["lanes"]} lanes over C{jobs}, put a result dict on C{results}.
    """
    op = spec["op"]
    dataset = spec["dataset"]
    url = urlsplit(spec["url"])
    operations = Operations(spec["repository"], spec["upload"], spec["patch_size"])
    run = getattr(operations, op)
    deadline_budget = spec["phase_timeout"]

    prepared = collections.deque()
    for job in jobs:
        if op in UPLOADS and spec["preload"]:
            payload = dataset.payload(job)
            prepared.append((_upload_item(op, dataset, job, payload, spec["run_prefix"]), payload))
        else:
            prepared.append((job, None))

    samples = []
    uploaded = []
    lock = threading.Lock()
    start_lanes = threading.Event()

    def lane():
        conn = Connection(url.hostname, _port(url), spec["request_timeout"],
                          tls=url.scheme == "https", headers=spec["headers"])
        start_lanes.wait()
        deadline = time.monotonic() + deadline_budget
        try:
            while True:
                try:
                    job, payload = prepared.popleft()
                except IndexError:
                    return
                if time.monotonic() > deadline:
                    with lock:
                        samples.append((0.0, 0, "not run: phase timeout", time.monotonic()))
                    continue
                if op in UPLOADS and payload is None:
                    payload = dataset.payload(job)
                    job = _upload_item(op, dataset, job, payload, spec["run_prefix"])
                began = time.monotonic()
                try:
                    moved = run(conn, job, payload)
                    error = None
                except RequestFailed as e:
                    moved, error = 0, str(e)
                ended = time.monotonic()
                with lock:
                    samples.append((ended - began, moved, error, ended))
                    if op in UPLOADS and error is None:
                        uploaded.append(job)
        finally:
            conn.close()

    threads = [threading.Thread(target=lane, daemon=True) for _ in range(spec["lanes"])]
    for t in threads:
        t.start()
    ready.put(os.getpid())
    if not go.wait(spec["phase_timeout"]):
        return
    cpu_before = time.process_time()
    start_lanes.set()
    for t in threads:
        t.join()
    results.put({"samples": samples, "cpu": time.process_time() - cpu_before, "uploaded": uploaded})


def run_phase(url, op, jobs, concurrency, *, dataset=None, repository="bench/load",
              run_prefix="bench", upload="monolithic", patch_size=16 * MiB, processes=None,
              preload_budget=4 << 30, request_timeout=120.0, phase_timeout=600.0, headers=None):
    """
    Run one closed-loop phase of C{op} over C{jobs} at C{concurrency}.

    @param jobs: for uploads, indices into C{dataset}; otherwise L{Item}s
        (a pull of the items an upload returned, or one manifest item
        repeated C{--requests} times).
    @return: (summary dict from L{_stats.summarize} plus C{op},
        C{concurrency}, C{processes}; list of the L{Item}s uploaded).
    @raise RuntimeError: a worker process did not start or did not finish.
    """
    if op not in OPS:
        raise ValueError(f"unknown operation {op!r}")
    jobs = list(jobs)
    processes = max(1, min(processes or os.cpu_count() or 1, concurrency, max(1, len(jobs))))
    preload = dataset is not None and dataset.size * len(jobs) <= preload_budget
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    workers = []
    for p in range(processes):
        lanes = concurrency // processes + (1 if p < concurrency % processes else 0)
        spec = dict(op=op, url=url, dataset=dataset, repository=repository, run_prefix=run_prefix,
                    upload=upload, patch_size=patch_size, lanes=lanes, preload=preload,
                    request_timeout=request_timeout, phase_timeout=phase_timeout, headers=headers)
        worker = context.Process(target=_worker, args=(spec, jobs[p::processes], ready, go, results),
                                 daemon=True)
        worker.start()
        workers.append(worker)
    try:
        for _ in workers:
            ready.get(timeout=phase_timeout)
        started, started_at = time.monotonic(), time.time()
        go.set()
        outcomes = [results.get(timeout=phase_timeout + request_timeout) for _ in workers]
    except queue.Empty:
        raise RuntimeError(f"{op}: a load generator worker did not start or finish in time")
    finally:
        for worker in workers:
            worker.join(5)
            if worker.is_alive():
                worker.kill()
    samples = [s for outcome in outcomes for s in outcome["samples"]]
    ended = max((s[3] for s in samples), default=started)
    summary = summarize([s[:3] for s in samples], wall=ended - started,
                        cpu_seconds=sum(o["cpu"] for o in outcomes))
    summary.update(op=op, concurrency=concurrency, processes=processes, preloaded=preload,
                   started_at=round(started_at, 3), ended_at=round(started_at + ended - started, 3))
    uploaded = sorted((item for o in outcomes for item in o["uploaded"]), key=lambda i: i.index)
    return summary, uploaded


def push_manifest(url, repository, layers, tag="bench", timeout=60.0, headers=None):
    """
    Push a small config blob and an OCI image manifest over C{layers}
    (already pushed L{Item}s) tagged C{tag}, as the GET manifest workload's
    subject.

    @return: (the manifest as an L{Item} (name = tag, digest of its bytes),
        the manifest's bytes).
    @raise RequestFailed: the registry refused the config or the manifest.
    """
    parts = urlsplit(url)
    conn = Connection(parts.hostname, _port(parts), timeout, tls=parts.scheme == "https",
                      headers=headers)
    operations = Operations(repository)
    try:
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        config_item = Item(index=-1, name="config", size=len(config), digest=sha256_digest(config))
        operations.push(conn, config_item, config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_item.digest, "size": config_item.size},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer.digest, "size": layer.size}
                       for layer in layers],
        }, indent=3).encode()
        status, _, _, body = conn.exchange(
            "PUT", f"/v2/{repository}/manifests/{tag}", body=manifest,
            headers={"Content-Type": OCI_MANIFEST})
        _expect(status, (201,), f"PUT manifest ({body[:200]!r})")
        return Item(index=0, name=tag, size=len(manifest), digest=sha256_digest(manifest)), manifest
    finally:
        conn.close()


def tag(summary, label, api, size):
    """
    @return: C{summary}, updated with what was measured (target, api, object
        size) and the machine's 1-minute load average at the end of it: on a
        shared machine, a high one says the figures are low for that reason.
    """
    summary.update(target=label, api=api, size=size, object=human_size(size),
                   loadavg=round(os.getloadavg()[0], 1))
    return summary


def measure_server(server, phase):
    """
    Run C{phase} (a callable returning a summary dict) and, given C{server}
    (a L{_procstat.ProcessTree}), add the CPU seconds the server used
    meanwhile as C{server_cpu_s} and C{server_cores}.

    @return: the summary.
    """
    if server is None:
        return phase()
    server.sample()
    before = server.cpu_seconds()
    summary = phase()
    server.sample()
    used = server.cpu_seconds() - before
    summary.update(server_cpu_s=round(used, 3),
                   server_cores=round(used / max(summary["wall_s"], 1e-9), 2))
    return summary


def registry_suite(url, *, label, count, size, concurrency, ops, requests, upload="monolithic",
                   patch_size=16 * MiB, processes=None, dataset=None, phase_timeout=600.0,
                   server=None, small_engine="python", small_seconds=5.0, headers=None):
    """
    The registry workload at one concurrency: push C{count} fresh blobs of
    C{size}, then (each if in C{ops}) pull them all, HEAD them in turn and
    GET a manifest over them.  Pass the same C{dataset} to two registries to
    give both identical workloads.

    @param small_engine: C{"python"} runs C{requests} HEAD and GET manifest
        requests with the lanes; C{"wrk"} runs GET manifest with wrk for
        C{small_seconds} (L{_wrk.wrk_phase}: far cheaper per request).
        HEAD always uses the lanes: wrk's parser expects a body after a
        HEAD answer's Content-Length and hangs.
    @param server: the server's L{_procstat.ProcessTree}, to measure its CPU.
    @param headers: sent with every request (credentials, say).
    @return: a list of phase summaries, each tagged with C{target=label},
        C{size} and C{api="registry"}.
    """
    dataset = dataset or Dataset(count=count, size=size)
    repository = f"bench/r{dataset.run_id}c{concurrency}"
    common = dict(repository=repository, processes=processes, phase_timeout=phase_timeout,
                  headers=headers)
    rows = []

    def record(op_size, phase):
        rows.append(tag(measure_server(server, phase), label, "registry", op_size))

    def small(op, paths, jobs, **check):
        if small_engine == "wrk" and op != "head":  # wrk waits for a HEAD answer's body forever
            check["headers"] = {**(headers or {}), **check.get("headers", {})}
            summary = wrk_phase(url, paths, concurrency, seconds=small_seconds, **check)
            summary.update(op=op, concurrency=concurrency, processes=1)
            return summary
        return run_phase(url, op, jobs, concurrency, **common)[0]

    pushed = []

    def push():
        summary, blobs = run_phase(url, "push", range(count), concurrency, dataset=dataset,
                                   upload=upload, patch_size=patch_size, **common)
        pushed.extend(blobs)
        return summary

    record(size, push)
    if "pull" in ops:
        record(size, lambda: run_phase(url, "pull", pushed, concurrency, **common)[0])
    if "head" in ops and pushed:
        record(0, lambda: small(
            "head", [f"/v2/{repository}/blobs/{b.digest}" for b in pushed],
            [pushed[i % len(pushed)] for i in range(requests)],
            method="HEAD", expect_length=size))
    if "manifest" in ops and pushed:
        manifest, body = push_manifest(url, repository, pushed[:10], headers=headers)
        record(manifest.size, lambda: small(
            "manifest", [f"/v2/{repository}/manifests/{manifest.name}"], [manifest] * requests,
            headers={"Accept": OCI_MANIFEST}, expect_body=body.decode()))
    return rows


def files_suite(url, *, label, count, size, concurrency, ops, processes=None, dataset=None,
                phase_timeout=600.0, server=None):
    """
    The imageserver file API workload at one concurrency: PUT C{count} fresh
    files of C{size}, then GET them all back, verified.

    @param server: the server's L{_procstat.ProcessTree}, to measure its CPU.
    @return: a list of phase summaries tagged C{target=label}, C{size},
        C{api="files"}.
    """
    dataset = dataset or Dataset(count=count, size=size)
    common = dict(run_prefix=f"bench/{dataset.run_id}c{concurrency}", processes=processes,
                  phase_timeout=phase_timeout)
    stored = []

    def put():
        summary, files = run_phase(url, "put", range(count), concurrency, dataset=dataset, **common)
        stored.extend(files)
        return summary

    rows = [tag(measure_server(server, put), label, "files", size)]
    if "get" in ops:
        rows.append(tag(measure_server(server, lambda: run_phase(
            url, "get", stored, concurrency, **common)[0]), label, "files", size))
    return rows


def add_small_engine_options(parser, requests):
    """Add the options that choose how HEAD and GET manifest are measured."""
    parser.add_argument("--small-engine", choices=("auto", "wrk", "python"), default="auto",
                        help="HEAD/GET manifest load: wrk (if installed, with auto) or the Python lanes")
    parser.add_argument("--small-seconds", type=float, default=5.0, help="seconds of each wrk phase")
    parser.add_argument("--requests", type=int, default=requests,
                        help="HEAD and GET manifest requests per level (Python lanes)")


def small_engine(choice):
    """@return: the engine C{choice} ("auto", "wrk", "python") stands for here."""
    if choice == "auto":
        return "wrk" if wrk_available() else "python"
    return choice


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="base URL, e.g. http://127.0.0.1:5000 (loopback or a testbed namespace)")
    parser.add_argument("--api", choices=("registry", "files"), default="registry")
    parser.add_argument("--ops", default=None,
                        help="comma-separated: push,pull,head,manifest (registry) or put,get (files)")
    parser.add_argument("--count", type=int, default=100, help="objects pushed per concurrency")
    parser.add_argument("--size", type=parse_size, default="16MiB")
    parser.add_argument("--concurrency", default="10,50", help="comma-separated levels")
    add_small_engine_options(parser, requests=5000)
    parser.add_argument("--upload", choices=("monolithic", "chunked"), default="monolithic")
    parser.add_argument("--patch-size", type=parse_size, default="4MiB")
    parser.add_argument("--processes", type=int, default=None, help="worker processes (default: cores)")
    parser.add_argument("--phase-timeout", type=float, default=600.0)
    parser.add_argument("--label", default="target")
    parser.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                        help="send this header with every request (e.g. credentials); repeatable")
    parser.add_argument("--jsonl", help="append the JSON lines to this file too")
    parser.add_argument("--plot", metavar="DIR", help="write throughput and p99 PNGs here")
    args = parser.parse_args(argv)

    headers = dict(_header(h, parser) for h in args.header)
    ops = (args.ops or ("push,pull,head,manifest" if args.api == "registry" else "put,get")).split(",")
    rows = []
    for concurrency in [int(c) for c in args.concurrency.split(",")]:
        if args.api == "registry":
            phase_rows = registry_suite(
                args.url, label=args.label, count=args.count, size=args.size,
                concurrency=concurrency, ops=ops, requests=args.requests, upload=args.upload,
                patch_size=args.patch_size, processes=args.processes, phase_timeout=args.phase_timeout,
                small_engine=small_engine(args.small_engine), small_seconds=args.small_seconds,
                headers=headers)
        else:
            phase_rows = files_suite(
                args.url, label=args.label, count=args.count, size=args.size,
                concurrency=concurrency, ops=ops, processes=args.processes,
                phase_timeout=args.phase_timeout)
        for row in phase_rows:
            print(json_line(row), flush=True)
        rows.extend(phase_rows)
    return report(rows, TABLE_COLUMNS, args.jsonl, args.plot)


def _header(text, parser):
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        parser.error(f"--header must be 'NAME: VALUE', not {text!r}")
    return name.strip(), value.strip()


def report(rows, columns, jsonl=None, plot_dir=None):
    """
    Append C{rows} to the JSON-lines file C{jsonl}, print them as a markdown
    table of C{columns}, and plot them into C{plot_dir}, each when given.

    @return: the exit status: 1 if any row counted errors, else 0.
    """
    if jsonl:
        with open(jsonl, "a") as f:
            f.writelines(json_line(row) + "\n" for row in rows)
    print()
    print(markdown_table(rows, columns))
    if plot_dir:
        for path in plot_rows(rows, plot_dir):
            print(f"wrote {path}")
    return 1 if any(row["errors"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
