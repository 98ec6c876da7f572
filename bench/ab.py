"""
A/B of small requests: local Speedy clusters that differ in one setting,
measured alternately with the race's HEAD blob and GET manifest phases.

Each variant is a C{tools/speedy-cluster up} of its own, all started at
once and left idle while another is measured.  Every round pushes a fresh
set of blobs to each, then runs HEAD blob and GET manifest against each in
turn, the order reversed every other round so that neither side always
goes first.  The figures are medians over the rounds, and every variant's
ratio to the first.

Variants:

  - C{open}: no credentials (C{--auth none}), the baseline.
  - C{basic}: C{--htpasswd}: every request carries HTTP Basic credentials
    of a bcrypt htpasswd entry (verified once, then cached).
  - C{token}: C{--auth token}: every request carries a bearer token from
    the cluster's embedded token service, for the round's repository.
  - C{metrics-off}: C{--request-metrics off}: the imageservers do not count
    and time each request (against C{open}, where they do).
  - C{tls}: C{--tls}: the registry listens with TLS (a throwaway CA, which
    the load generator trusts through C{$SSL_CERT_FILE}).
  - C{chain}, C{fanout}: C{--replication chain} or C{fanout}: how the
    imageservers send each chunk to its three replicas.

  python bench/ab.py --variants open,basic,token --rounds 6
  python bench/ab.py --variants open,metrics-off --rounds 6
  python bench/ab.py --variants open,tls --ops push,pull --count 50 --size 16MiB
  python bench/ab.py --variants fanout,chain --ops push,pull --count 50 --size 16MiB
"""

import argparse
import base64
import json
import os
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import bcrypt

from _dataset import Dataset
from _servers import free_port
from _stats import human_size, json_line, markdown_table, median
from loadgen import TABLE_COLUMNS, add_small_engine_options, registry_suite, small_engine
from race import speedy_cluster

from speedy.units import parse_size

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER, PASSWORD = "bench", "bench-password"

#: name -> (speedy-cluster up arguments, with {users} for the htpasswd file;
#: how requests authenticate: None, "basic" or "token")
VARIANTS = {
    "open": ((), None),
    "basic": (("--htpasswd", "{users}"), "basic"),
    "token": (("--auth", "token", "--htpasswd", "{users}"), "token"),
    "metrics-off": (("--request-metrics", "off"), None),
    "tls": (("--tls",), None),
    "chain": (("--replication", "chain"), None),
    "fanout": (("--replication", "fanout"), None),
}

#: (label, op, summary key) of every figure compared.
FIGURES = [
    ("push MiB/s", "push", "MiB_s"), ("push p99 ms", "push", "p99_ms"),
    ("pull MiB/s", "pull", "MiB_s"), ("pull p99 ms", "pull", "p99_ms"),
    ("HEAD blob req/s", "head", "req_s"), ("HEAD blob p99 ms", "head", "p99_ms"),
    ("GET manifest req/s", "manifest", "req_s"), ("GET manifest p99 ms", "manifest", "p99_ms"),
]


def write_htpasswd(path):
    """Write an htpasswd file of one bcrypt user, as C{htpasswd -B} would."""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    with open(path, "w") as f:
        f.write(f"{USER}:{hashed}\n")


def basic_header():
    return "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def bearer_header(url, repository):
    """
    Log in the way a Docker client does: the registry's 401 names the token
    service, which answers the user's Basic credentials with a token for
    pull and push on C{repository}.
    """
    try:
        urllib.request.urlopen(url + "/v2/", timeout=10)
        raise RuntimeError("the registry took an anonymous request: it has no token auth")
    except urllib.error.HTTPError as e:
        challenge = e.headers.get("WWW-Authenticate", "")
    if not challenge.startswith("Bearer "):
        raise RuntimeError(f"no bearer challenge: {challenge!r}")
    params = dict(part.split("=", 1) for part in challenge[len("Bearer "):].split(","))
    params = {k.strip(): v.strip().strip('"') for k, v in params.items()}
    query = urllib.parse.urlencode({"service": params.get("service", ""),
                                    "scope": f"repository:{repository}:pull,push"})
    request = urllib.request.Request(params["realm"] + "?" + query,
                                     headers={"Authorization": basic_header()})
    with urllib.request.urlopen(request, timeout=30) as answer:
        body = json.load(answer)
    return "Bearer " + (body.get("token") or body["access_token"])


def credentials(kind, url, repository):
    """@return: the headers a variant's requests carry."""
    if kind == "basic":
        return {"Authorization": basic_header()}
    if kind == "token":
        return {"Authorization": bearer_header(url, repository)}
    return {}


def compare(rows, names, ops):
    """@return: per figure of C{ops}, each variant's median and its ratio to the first."""
    table = []
    for label, op, key in FIGURES:
        if op not in ops:
            continue
        entry = {"figure": label}
        for name in names:
            entry[name] = median(row.get(key) for row in rows
                                 if row["target"] == name and row["op"] == op)
        base = entry[names[0]]
        for name in names[1:]:
            value = entry[name]
            entry[f"{name}/{names[0]}"] = round(value / base, 3) if base and value else None
        table.append(entry)
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="open,basic,token",
                        help=f"comma-separated, the first the baseline: {', '.join(VARIANTS)}")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--count", type=int, default=20, help="blobs pushed per round")
    parser.add_argument("--size", type=parse_size, default="1MiB")
    add_small_engine_options(parser, requests=5000)
    parser.add_argument("--ops", default="head,manifest",
                        help="comma-separated, of push,pull,head,manifest (every round pushes; "
                             "push is reported only when named)")
    parser.add_argument("--imageserver-workers", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results",
                                                      time.strftime("ab-%Y%m%d-%H%M%S")))
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or len(names) < 2:
        parser.error(f"--variants: two or more of {', '.join(VARIANTS)}")
    ops = args.ops.split(",")
    if not ops or set(ops) - {"push", "pull", "head", "manifest"}:
        parser.error("--ops: of push, pull, head, manifest")
    engine = small_engine(args.small_engine)
    os.makedirs(args.out, exist_ok=True)

    rows, clusters = [], {}
    with tempfile.TemporaryDirectory(prefix="speedy-ab-") as workdir:
        users = os.path.join(workdir, "users.htpasswd")
        write_htpasswd(users)
        try:
            for name in names:
                up_args, _ = VARIANTS[name]
                os.makedirs(os.path.join(workdir, name))
                clusters[name] = speedy_cluster(
                    os.path.join(workdir, name), free_port(), args.imageserver_workers,
                    extra=[a.format(users=users) for a in up_args]).start(timeout=120)
                if "--tls" in up_args:
                    clusters[name].tls_url = clusters[name].url.replace("http:", "https:", 1)
                    os.environ["SSL_CERT_FILE"] = os.path.join(
                        workdir, name, "var", "tls", "ca", "ca.crt")
            with open(os.path.join(args.out, "ab.jsonl"), "w") as jsonl:
                for round_number in range(1, args.rounds + 1):
                    dataset = Dataset(count=args.count, size=args.size)
                    repository = f"bench/r{dataset.run_id}c{args.concurrency}"
                    order = names if round_number % 2 else names[::-1]
                    for name in order:
                        server = clusters[name]
                        url = getattr(server, "tls_url", None) or server.url
                        headers = credentials(VARIANTS[name][1], url, repository)
                        for row in registry_suite(
                                url, label=name, count=args.count, size=args.size,
                                concurrency=args.concurrency, ops=ops,
                                requests=args.requests, dataset=dataset, server=server.tree,
                                small_engine=engine, small_seconds=args.small_seconds,
                                headers=headers):
                            row["round"] = round_number
                            print(json_line(row), flush=True)
                            jsonl.write(json_line(row) + "\n")
                            rows.append(row)
        finally:
            for server in clusters.values():
                server.stop()

    measured = [row for row in rows if row["op"] in ops]
    columns = [("figure", "figure")] + [(n, n) for n in names] + [
        (f"{n}/{names[0]}", f"{n}/{names[0]}") for n in names[1:]]
    report = "\n\n".join([
        f"# A/B: {', '.join(names)}; {args.rounds} rounds, concurrency {args.concurrency}, "
        f"{args.count} blobs of {human_size(args.size)}, GET manifest "
        + (f"for {args.small_seconds:g} s (wrk)" if engine == "wrk" else
           f"{args.requests} requests") + f", HEAD {args.requests} requests (Python lanes); "
        f"{args.imageserver_workers} imageserver workers; medians over the rounds",
        markdown_table(compare(measured, names, ops), columns),
        markdown_table(measured, TABLE_COLUMNS + [("round", "round")]),
    ])
    print("\n" + report)
    with open(os.path.join(args.out, "ab.md"), "w") as f:
        f.write(report + "\n")
    return 1 if any(row["errors"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
