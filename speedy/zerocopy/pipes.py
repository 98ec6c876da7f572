# -*- test-case-name: speedy.test.test_splice -*-
"""
Non-blocking pipes for C{os.splice} (L{Pipe}), as large as the kernel
allows, and the empty ones kept for the next relay (L{PipePool}).
"""

import errno
import fcntl
import os

#: The pipe size asked for with C{F_SETPIPE_SZ}; smaller when the kernel
#: refuses (C{/proc/sys/fs/pipe-max-size}, the per-user pipe quota).
PIPE_SIZE = 1 << 20
#: The smallest pipe size tried before taking the kernel's default.
MIN_PIPE_SIZE = 64 * 1024
#: Empty pipes kept.
MAX_IDLE_PIPES = 16

_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


class Pipe:
    """
    A non-blocking pipe: C{r} and C{w} fds, its C{size} in bytes and the
    bytes it C{held} (counted by its user).
    """

    def __init__(self, size=PIPE_SIZE):
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.held = 0
        try:
            while size >= MIN_PIPE_SIZE:
                try:
                    fcntl.fcntl(self.w, _F_SETPIPE_SZ, size)
                    break
                except OSError as e:
                    if e.errno not in (errno.EPERM, errno.EBUSY, errno.EINVAL):
                        raise
                    size //= 2
            self.size = fcntl.fcntl(self.w, _F_GETPIPE_SZ)
        except BaseException:
            self.close()
            raise

    def close(self):
        for fd in (self.r, self.w):
            if fd >= 0:
                os.close(fd)
        self.r = self.w = -1


class PipePool:
    """Empty pipes kept for the next relay."""

    def __init__(self, size=PIPE_SIZE, max_idle=MAX_IDLE_PIPES):
        self._size = size
        self._max_idle = max_idle
        self._idle = []
        self.created = 0

    def take(self):
        """@return: an empty L{Pipe}."""
        if self._idle:
            return self._idle.pop()
        self.created += 1
        return Pipe(self._size)

    def give_back(self, pipe):
        """Keep C{pipe} if it is empty and there is room, else close it."""
        if pipe.held == 0 and pipe.r >= 0 and len(self._idle) < self._max_idle:
            self._idle.append(pipe)
        else:
            pipe.close()

    @property
    def idle(self):
        return len(self._idle)

    def close(self):
        idle, self._idle = self._idle, []
        for pipe in idle:
            pipe.close()
