# -*- test-case-name: speedy.test.test_admin -*-
"""
How C{speedy-admin} shows things: aligned tables and a progress bar on a
terminal, JSON for scripts.
"""

import json
import time

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(count):
    """@return: C{count} bytes as text an operator reads at a glance (C{1.5 GiB})."""
    if count is None:
        return "-"
    value = float(count)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024


def human_duration(seconds):
    """@return: C{seconds} as C{1h02m}, C{3m05s} or C{12s}; C{-} for None."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def table(headers, rows):
    """
    @param headers: the column titles.
    @param rows: sequences of cells, one per column (anything C{str} takes).
    @return: the lines of an aligned table; numbers align right.
    """
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row]
                                           for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_numeric(row[i]) for row in cells[1:]) and len(cells) > 1
               for i in range(len(headers))]
    lines = []
    for row in cells:
        lines.append("  ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric)).rstrip())
    return lines


def _numeric(text):
    return text.replace(".", "", 1).replace("%", "").lstrip("-").isdigit()


def dump_json(value):
    """@return: C{value} as indented, key-sorted JSON text."""
    return json.dumps(value, indent=2, sort_keys=True)


class ProgressBar:
    """
    One line redrawn in place on a terminal (C{[#####.....] 50% 5/10 ...}):
    what long work (fsck, repair, rebuild, gc, transfer) shows while it
    runs.  On anything but a terminal it draws nothing.
    """

    def __init__(self, stream, total, label="", width=30, clock=time.monotonic):
        self._stream = stream
        self.total = total
        self._label = label
        self._width = width
        self._clock = clock
        self._started = clock()
        self._drawn = False
        self.enabled = bool(getattr(stream, "isatty", lambda: False)())

    def update(self, done, detail=""):
        """Show C{done} of the total, with C{detail} after it."""
        if not self.enabled:
            return
        total = max(self.total or 0, 1)
        fraction = min(max(done / total, 0.0), 1.0)
        filled = int(fraction * self._width)
        elapsed = self._clock() - self._started
        eta = (elapsed / fraction - elapsed) if 0 < fraction < 1 else None
        text = (f"\r{self._label}[{'#' * filled}{'.' * (self._width - filled)}] "
                f"{fraction * 100:3.0f}% {done}/{self.total}"
                + (f" eta {human_duration(eta)}" if eta is not None else "")
                + (f" {detail}" if detail else ""))
        self._stream.write(text + "\x1b[K")
        self._stream.flush()
        self._drawn = True

    def finish(self):
        """End the line, if one was drawn."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
