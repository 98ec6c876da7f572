# -*- test-case-name: speedy.test.test_store,speedy.test.test_direct_io -*-
"""
The operating-system calls the storage engine makes, gathered in one object so
tests can replace any of them (a disk that fills up, a sync that fails).

Every method may raise L{OSError}; the engine turns that into a clean error
for the one request that hit it.

Direct I/O (C{O_DIRECT}): L{Disk.open_direct} opens a second descriptor of
a volume file that bypasses the page cache.  Its reads and writes must start
at an offset, and use a memory address and a length, that are multiples of
the file system's block (L{Disk.block_size}); the store's staging buffers
(anonymous C{mmap}s, so page-aligned) and its block arithmetic see to that.
"""

import errno
import os

#: Errors by which C{preadv(..., RWF_NOWAIT)} says it cannot promise not to
#: block (a file system without support for it).
_NOWAIT_UNSUPPORTED = (errno.EOPNOTSUPP, errno.EINVAL)


class Disk:
    """
    The real thing: thin wrappers over L{os}.  Subclass and override a method
    to inject a failure.
    """

    def open(self, path, create=False):
        """
        @return: a read-write file descriptor for C{path}; with C{create},
            the file must not exist yet.
        """
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        return os.open(path, flags, 0o644)

    def open_direct(self, path):
        """
        @return: a second, read-write descriptor of the existing file
            C{path} that bypasses the page cache (C{O_DIRECT}).
        @raise OSError: C{EINVAL} (or C{EOPNOTSUPP}) when the file system
            refuses direct I/O (tmpfs), or any error of C{open}.
        """
        direct = getattr(os, "O_DIRECT", None)
        if direct is None:
            raise OSError(errno.EINVAL, "O_DIRECT is not available here")
        return os.open(path, os.O_RDWR | direct | getattr(os, "O_CLOEXEC", 0))

    def block_size(self, path):
        """@return: the block size of the file system holding C{path}."""
        return os.statvfs(path).f_bsize

    def close(self, fd):
        os.close(fd)

    def pread(self, fd, size, offset):
        """@return: up to C{size} bytes at C{offset}."""
        return os.pread(fd, size, offset)

    def pread_into(self, fd, buffer, offset):
        """
        Read into C{buffer} (a writable buffer; page-aligned for a direct
        descriptor) from C{offset}.

        @return: the number of bytes read (fewer only at the end of the file).
        """
        return os.preadv(fd, [buffer], offset)

    def pread_cached(self, fd, size, offset):
        """
        Read without waiting for the disk (C{preadv2} with C{RWF_NOWAIT}),
        so that it is safe on the reactor thread.

        @return: the C{size} bytes at C{offset} if all of them are in the
            page cache, else None (the caller then reads in a thread).
        """
        if not hasattr(os, "RWF_NOWAIT"):
            return None
        buffer = bytearray(size)
        try:
            got = os.preadv(fd, [buffer], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno in _NOWAIT_UNSUPPORTED:
                return None
            raise
        return bytes(buffer) if got == size else None

    def pwrite(self, fd, data, offset):
        """Write all of C{data} at C{offset} (looping over short writes)."""
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written

    def fdatasync(self, fd):
        os.fdatasync(fd)

    def fsync(self, fd):
        os.fsync(fd)

    def fsync_directory(self, path):
        """Make the directory entries under C{path} durable."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def allocate(self, fd, end, start=0):
        """Reserve the disk blocks of bytes C{start} to C{end} of the file
        (C{posix_fallocate}), growing it to C{end} bytes if it is shorter.
        @raise OSError: C{ENOSPC} when the file system has no room."""
        os.posix_fallocate(fd, start, end - start)

    def set_size(self, fd, size):
        """Make the file C{size} bytes long (C{ftruncate}): bytes added are
        a hole, which reads as zeros and takes no disk block."""
        os.ftruncate(fd, size)

    def rename(self, source, destination):
        os.replace(source, destination)

    def unlink(self, path):
        os.unlink(path)

    def listdir(self, path):
        return os.listdir(path)

    def makedirs(self, path):
        os.makedirs(path, exist_ok=True)

    def space(self, path):
        """
        @return: C{(total, available)} bytes of the file system holding
            C{path}, as an unprivileged process may use it.
        """
        st = os.statvfs(path)
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize

    def file_size(self, fd):
        """@return: the size in bytes of the open file C{fd}."""
        return os.fstat(fd).st_size
