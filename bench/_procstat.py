# -*- test-case-name: bench._test_loadgen -*-
"""
CPU time and peak memory of a server's processes, read from /proc.

A L{ProcessTree} follows a root process and every descendant it has seen;
each L{ProcessTree.sample} adds processes that appeared and updates the
figures of those still alive, so sample at least at the end of every phase.
"""

import os

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


def _peak_rss(pid):
    """@return: the VmHWM (peak resident set) of C{pid} in bytes, or None if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return 0


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

    def sample(self):
        """Record the current CPU time and peak RSS of every process of the tree."""
        for pid in descendants(self.root):
            stat = _stat(pid)
            rss = _peak_rss(pid)
            if stat is not None and rss is not None:
                self._cpu[pid] = stat[1]
                self._rss[pid] = max(rss, self._rss.get(pid, 0))

    def cpu_seconds(self):
        """@return: CPU seconds (user + system, reaped children included) used so far, summed."""
        return sum(self._cpu.values())

    def process_count(self):
        """@return: how many processes of the tree have been seen."""
        return len(self._rss)

    def peak_rss(self):
        """@return: the sum over the processes seen of each one's peak resident set, in bytes."""
        return sum(self._rss.values())
