# -*- test-case-name: bench._test_loadgen -*-
"""
CPU time and peak memory of a server's processes, read from /proc.

A L{ProcessTree} follows a root process and every descendant it has seen;
each L{ProcessTree.sample} adds processes that appeared and updates the
figures of those still alive, so sample at least at the end of every phase.
Peak RSS comes two ways: the sum over the processes of each one's own peak
(C{VmHWM}, kept by the kernel, so never missed; an upper bound, as the
processes need not peak together), and the largest sum of their current
RSS at any sample (a lower bound: sample often, e.g. with a
L{ProcessTree.sample_every} thread, to come close to the true peak).
"""

import os
import threading

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid):
    """@return: (ppid, utime+stime+cutime+cstime seconds) of C{pid}, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is state (field 3); utime..cstime are fields 14-17.
    return int(fields[1]), sum(int(v) for v in fields[11:15]) / _TICKS


def _rss(pid):
    """@return: (VmHWM, VmRSS) of C{pid} in bytes (its peak and current
    resident set), or None if gone."""
    found = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    found[line[:5]] = int(line.split()[1]) * 1024
    except OSError:
        return None
    return found.get("VmHWM", 0), found.get("VmRSS", 0)


def process_name(pid):
    """@return: a short name of C{pid}: the base name of its twistd
    C{--logfile} less C{.log} (a local cluster's role: C{chunkserver-1}),
    else of its program and first argument, or None if gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode("utf-8", "replace").split("\0")
    except OSError:
        return None
    if "--logfile" in argv[:-1]:
        name = os.path.basename(argv[argv.index("--logfile") + 1])
        return name[:-4] if name.endswith(".log") else name
    return " ".join(os.path.basename(arg) for arg in argv[:2] if arg)


def descendants(root):
    """@return: the set of C{root} and every live process below it."""
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(name))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


class ProcessTree:
    """The processes of one server (a root pid and its descendants)."""

    def __init__(self, root):
        self.root = root
        self._cpu = {}
        self._rss = {}
        self._names = {}
        self._peak_sum = 0
        self._lock = threading.Lock()

    def sample(self):
        """Record the current CPU time, peak RSS and current RSS of every
        process of the tree (from any thread)."""
        current = 0
        for pid in descendants(self.root):
            stat = _stat(pid)
            rss = _rss(pid)
            if stat is not None and rss is not None:
                with self._lock:
                    if pid not in self._names:
                        self._names[pid] = process_name(pid) or str(pid)
                    self._cpu[pid] = stat[1]
                    self._rss[pid] = max(rss[0], self._rss.get(pid, 0))
                current += rss[1]
        with self._lock:
            self._peak_sum = max(self._peak_sum, current)

    def sample_every(self, interval):
        """
        Sample in a daemon thread every C{interval} seconds until the
        returned callable is called.

        @return: a callable that stops the thread (and samples once more).
        """
        done = threading.Event()

        def run():
            while not done.wait(interval):
                self.sample()
        thread = threading.Thread(target=run, name=f"sample {self.root}", daemon=True)
        thread.start()

        def stop():
            done.set()
            thread.join()
            self.sample()
        return stop

    def cpu_seconds(self):
        """@return: CPU seconds (user + system, reaped children included) used so far, summed."""
        return sum(self._cpu.values())

    def process_count(self):
        """@return: how many processes of the tree have been seen."""
        return len(self._rss)

    def peak_rss(self):
        """@return: the sum over the processes seen of each one's peak resident set, in bytes."""
        with self._lock:
            return sum(self._rss.values())

    def peak_rss_sampled(self):
        """@return: the largest sum of the processes' current resident sets
        at any one sample, in bytes."""
        with self._lock:
            return self._peak_sum

    def peak_rss_by_name(self):
        """@return: {name: peak resident set in bytes} of every process seen,
        named by L{process_name} (processes of one name: the largest)."""
        by_name = {}
        with self._lock:
            for pid, rss in self._rss.items():
                name = self._names[pid]
                by_name[name] = max(rss, by_name.get(name, 0))
        return by_name


def cpu_during_child(pid, argv, timeout=60):
    """
    Run the load generator C{argv} (a child that prints the JSON line
    C{{"start": true}} once ready, then one JSON line of its result), and
    measure the CPU of process C{pid} and its descendants meanwhile.

    @return: (the child's result, C{pid}'s CPU percent of one core from its
        start line to its result line).
    """
    import json
    import subprocess
    import time
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    tree = ProcessTree(pid)
    assert json.loads(child.stdout.readline()) == {"start": True}
    tree.sample()
    cpu_start, wall_start = tree.cpu_seconds(), time.monotonic()
    result = json.loads(child.stdout.readline())
    tree.sample()
    cpu = 100 * (tree.cpu_seconds() - cpu_start) / (time.monotonic() - wall_start)
    child.wait(timeout)
    return result, cpu
