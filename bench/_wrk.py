# -*- test-case-name: bench._test_loadgen -*-
"""
Small requests with C{wrk} (Debian's C{wrk}, written in C): an order of
magnitude more requests per CPU second than Python's C{http.client}, so the
request-rate figures (HEAD blob, GET manifest) measure the server, not us.

A Lua script cycles over the given paths and checks every answer: the
status, and either the exact body (a manifest is compared byte for byte) or
the C{Content-Length} header.  A wrong answer counts as an error, and so
does a phase that got no answer at all.  (Not for HEAD: wrk's parser waits
for the body a HEAD answer's Content-Length announces.)

Latencies are timed by the script, not taken from wrk's histogram.  wrk
"corrects" its histogram for coordinated omission before any report sees
it (C{stats_correct} in wrk.c): every answer that took longer than twice
the mean interval between a connection's requests adds made-up answers at
that latency less one, two, ... intervals.  On a closed loop at 10
connections and 2,500 answers a second (an interval of 4 ms), one answer
stalled for a second adds 250 made-up ones between 4 ms and 1 s, and a
couple of such stalls in a 10 s phase make its p99 half a second (measured
against a server that answered one request in 68,000 after 0.5 s: p99
449 ms, the true one under 0.1 ms).  So each wrk thread drives one
connection, notes the time (C{clock_gettime}, through LuaJIT's ffi) when it
builds a request and when the answer is in, and keeps a histogram of the
correct answers' latencies in microseconds; the phase's C{p50_ms},
C{p99_ms} and C{max_ms} are nearest-rank over those, as the Python lanes'
are.  wrk's own corrected p99 stays in the summary as C{wrk_p99_ms}.
"""

import json
import os
import resource
import shutil
import subprocess
import tempfile
from urllib.parse import urlsplit

from _stats import MiB, histogram_percentile

SCRIPT = """\
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } speedy_timespec;
int clock_gettime(int clk_id, speedy_timespec *tp);
]]
local clock = ffi.new("speedy_timespec")
local function now_us()
  ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000000 + math.floor(tonumber(clock.tv_nsec) / 1000)
end
local paths = {%(paths)s}
local method, want_status, want_length = %(method)s, %(status)d, %(length)s
local want_body = %(body)s
local threads = {}
local next_path = 1
wrk.method = method
%(headers)s
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0; latencies = {}; sent = nil end
function request()
  local path = paths[next_path]
  next_path = next_path %% #paths + 1
  sent = now_us()  -- one connection per thread: its request in flight
  return wrk.format(method, path)
end
function response(status, headers, body)
  local took = sent and now_us() - sent
  sent = nil
  local length = nil
  for name, value in pairs(headers) do
    if string.lower(name) == "content-length" then length = value end
  end
  if status ~= want_status or (want_length and length ~= want_length)
     or (want_body and body ~= want_body) then
    bad = bad + 1
  elseif took then
    latencies[took] = (latencies[took] or 0) + 1
  end
end
function done(summary, latency, requests)
  local wrong = 0
  local merged = {}
  for _, t in ipairs(threads) do
    wrong = wrong + t:get("bad")
    for us, n in pairs(t:get("latencies")) do merged[us] = (merged[us] or 0) + n end
  end
  local pairs_out = {}
  for us, n in pairs(merged) do pairs_out[#pairs_out + 1] = us .. ":" .. n end
  io.write("SPEEDY-LATENCIES " .. table.concat(pairs_out, ",") .. "\\n")
  io.write("SPEEDY-BENCH " .. string.format(
    '{"requests": %%d, "duration_us": %%d, "wrong": %%d, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "timeout": %%d, "p50_us": %%d, "p99_us": %%d, "max_us": %%d}',
    summary.requests, summary.duration, wrong, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, latency:percentile(50),
    latency:percentile(99), latency.max) .. "\\n")
end
"""


def available():
    """@return: whether wrk is installed."""
    return shutil.which("wrk") is not None


def parse_latencies(output):
    """
    @param output: what the script printed: a C{SPEEDY-LATENCIES} line of
        C{microseconds:count} pairs, comma-separated.
    @return: C{{microseconds: count}} of the correct answers' latencies
        (empty when the line is missing or empty).
    """
    histogram = {}
    for line in output.splitlines():
        if line.startswith("SPEEDY-LATENCIES"):
            for pair in line.split(" ", 1)[1].split(",") if " " in line else ():
                if pair:
                    value, count = pair.split(":")
                    histogram[int(value)] = histogram.get(int(value), 0) + int(count)
    return histogram


def _ms(us):
    return None if us is None else us / 1000


def _lua_string(text):
    level = "=" * 4
    return f"[{level}[{text}]{level}]"


def wrk_phase(url, paths, concurrency, *, method="GET", headers=None, expect_length=None,
              expect_body=None, seconds=5.0, timeout_s=10):
    """
    Run C{wrk} for C{seconds} (whole seconds, at least one) at
    C{concurrency} connections over C{paths}.

    @param expect_body: the exact body every answer must have (str), if any.
    @param expect_length: the C{Content-Length} every answer must have, if any.
    @return: a summary dict with the keys of L{_stats.summarize} (the
        latencies of the correct answers, as the script timed them) plus
        C{engine="wrk"}, C{timed} (how many answers the percentiles are
        over: one per correct answer) and C{wrk_p99_ms} (wrk's own p99,
        corrected for coordinated omission: see the module docstring);
        errors are wrong answers and socket errors.
    @raise RuntimeError: wrk failed or printed no result.
    """
    script = SCRIPT % {
        "paths": ", ".join(_lua_string(p) for p in paths),
        "method": _lua_string(method), "status": 200,
        "length": "nil" if expect_length is None else _lua_string(str(expect_length)),
        "body": "nil" if expect_body is None else _lua_string(expect_body),
        "headers": "\n".join(f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}"
                             for k, v in (headers or {}).items()),
    }
    base = urlsplit(url)
    threads = max(1, concurrency)  # one connection each: the script times its requests
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s",
             f"--timeout={timeout_s}s", "-s", lua.name, f"{base.scheme}://{base.netloc}"],
            capture_output=True, text=True, timeout=seconds + timeout_s + 30)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in done.stdout.splitlines() if line.startswith("SPEEDY-BENCH ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(lines[-1].split(" ", 1)[1])
    latencies = parse_latencies(done.stdout)
    wall = result["duration_us"] / 1e6
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    kinds = {kind: result[key] for kind, key in (
        ("wrong answer", "wrong"), ("connect", "connect"), ("read", "read"),
        ("write", "write"), ("timeout", "timeout")) if result[key]}
    if not result["requests"]:
        kinds["no answer"] = 1
    ok = result["requests"] - result["wrong"]
    body_bytes = len(expect_body.encode()) if expect_body else 0
    return {
        "requests": result["requests"] + result["connect"] + result["read"] + result["write"]
        + result["timeout"],
        "ok": ok, "errors": sum(kinds.values()), "error_kinds": kinds,
        "wall_s": round(wall, 4), "MiB_s": round(ok * body_bytes / MiB / wall, 2),
        "req_s": round(ok / wall, 1),
        "p50_ms": _ms(histogram_percentile(latencies, 0.50)),
        "p99_ms": _ms(histogram_percentile(latencies, 0.99)),
        "max_ms": _ms(max(latencies, default=None)), "timed": sum(latencies.values()),
        "wrk_p99_ms": result["p99_us"] / 1000,
        "loadgen_cpu_s": round(cpu, 3), "loadgen_cores": round(cpu / wall, 2), "engine": "wrk",
    }
