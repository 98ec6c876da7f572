"""
The kernel settings a benchmark's figures depend on, read and (as root)
set for the length of a run.

TCP's congestion control is one: with C{bbr}, every sending socket paces
itself with high-resolution timers (no C{fq} qdisc on loopback), and on a
virtual machine those timers cost kernel CPU that a loopback race spends
instead of moving bytes.  A race reports which algorithm its sockets ran,
and can run both sides under another one.
"""

import os
from contextlib import contextmanager

PROC_SYS = "/proc/sys"
CONGESTION = "net/ipv4/tcp_congestion_control"
AVAILABLE = "net/ipv4/tcp_available_congestion_control"


def read(name, root=PROC_SYS):
    """
    @param name: a sysctl's path under C{/proc/sys}, e.g.
        C{net/ipv4/tcp_congestion_control}.
    @return: its value, stripped, or None where the kernel has no such file.
    """
    try:
        with open(os.path.join(root, name)) as f:
            return f.read().strip()
    except OSError:
        return None


@contextmanager
def congestion_control(algorithm=None, root=PROC_SYS):
    """
    Run a block with C{algorithm} as the kernel's default TCP congestion
    control (the one every socket created meanwhile gets), then put the
    previous default back, whatever happens.

    @param algorithm: a name the kernel offers, or None to leave it as it is.
    @return: a context manager yielding the algorithm in force.
    @raise ValueError: the kernel does not offer C{algorithm}.
    @raise PermissionError: setting it needs root.
    """
    current = read(CONGESTION, root)
    if algorithm is None or algorithm == current:
        yield current
        return
    available = (read(AVAILABLE, root) or "").split()
    if algorithm not in available:
        raise ValueError(f"the kernel offers no TCP congestion control {algorithm!r} "
                         f"(available: {' '.join(available) or 'none'})")
    _write(CONGESTION, algorithm, root)
    try:
        yield algorithm
    finally:
        _write(CONGESTION, current, root)


def _write(name, value, root):
    try:
        with open(os.path.join(root, name), "w") as f:
            f.write(value + "\n")
    except PermissionError:
        raise PermissionError(f"setting {name.replace('/', '.')} needs root")
