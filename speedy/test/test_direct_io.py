"""
Direct-I/O chunk writes and verify-reads of L{speedy.chunkserver.store}:
the IChunkStore contract with direct I/O on and off, records of every size
around the block and threshold boundaries read back through every path
(sendfile, C{pread}, a clean restart, a crash's journal replay, a full
scan), the rule that no block is written both through the page cache and
directly, failures on the direct descriptor, and the fallback to buffered
writes.  Real files in trial's temporary directory (ext4 here); a file
system that refuses C{O_DIRECT} is faked by L{FaultyDisk}.
"""

import errno
import os

from twisted.internet.defer import fail
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from speedy.chunkserver.store import (
    DIRECT_IO_BLOCK, DIRECT_IO_THRESHOLD, STAGED_READ_LIMIT, STAGING_POOL_SIZE, ChunkStore)
from speedy.chunkserver.tap import Options, open_chunk_store
from speedy.chunkserver.volume import DATA_START, HEADER_SIZE
from speedy.crc import crc32c
from speedy.errors import Busy, ChecksumMismatch, NoSpace
from speedy.test import test_store
from speedy.test.util import with_secrets
from speedy.test.test_store import (
    FaultyDisk, ManualThreads, MiB, StoreTestMixin, corrupt)

T = DIRECT_IO_THRESHOLD
BLOCK = DIRECT_IO_BLOCK


def _supports_direct_io(directory):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "probe")
    with open(path, "wb"):
        pass
    try:
        FaultyDisk().close(FaultyDisk().open_direct(path))
    except OSError:
        return False
    finally:
        os.unlink(path)
    return True


class DirectTestMixin(StoreTestMixin):
    """Stores whose volumes take a 16 MiB chunk; skips where the temporary
    directory's file system refuses O_DIRECT."""

    def setUp(self):
        super().setUp()
        if not _supports_direct_io(self.path):
            raise SkipTest("the temporary directory refuses O_DIRECT")

    #: Defaults of the stores L{open_store} opens (None: the store's own).
    volume_size = 40 * MiB
    max_chunk_size = 20 * MiB
    direct_io_threshold = None

    def open_store(self, **kwargs):
        for name in ("volume_size", "max_chunk_size", "direct_io_threshold"):
            if getattr(self, name) is not None:
                kwargs.setdefault(name, getattr(self, name))
        return super().open_store(**kwargs)

    def put_pieces(self, store, file_id, data, sizes=(1, 7, 65536 + 5), threads=None,
                   keep=False, in_place=False):
        """Store C{data} in pieces of C{sizes}, cycling; with C{threads}
        (L{ManualThreads}), run its jobs before finishing; C{keep} as
        L{ChunkStore.put} takes it; with C{in_place}, put each piece into
        the write's C{write_space} where it offers one, as a socket read
        into it would.  @return: ChunkInfo."""
        write = store.put(file_id, len(data), keep=keep)
        view, n = memoryview(data), 0
        while view:
            size = sizes[n % len(sizes)]
            space = write.write_space() if in_place else None
            if space is None:
                write.write(view[:size])
            else:
                size = min(size, len(space))
                space[:size] = view[:size]
                write.wrote(size)
            view, n = view[size:], n + 1
        finished = write.finish()
        if threads is not None:
            threads.run_all()
        return self.successResultOf(finished)

    def sendfile(self, store, file_id):
        """@return: the chunk's bytes as the sendfile path sends them (with
        staged reads off, so that a large GET takes that path too)."""
        limit, store.staged_read_limit = store.staged_read_limit, 0
        try:
            chunk = self.successResultOf(store.get(file_id))
        finally:
            store.staged_read_limit = limit
        out = os.open(self.mktemp(), os.O_RDWR | os.O_CREAT)
        try:
            sent = 0
            while sent < chunk.length:
                sent += os.sendfile(out, chunk.fileno(), chunk.file_offset() + sent,
                                    chunk.length - sent)
            return os.pread(out, chunk.length + 1, 0)
        finally:
            os.close(out)
            chunk.release()

    def assert_no_shared_block(self):
        """No block was written both directly and through the page cache,
        and every direct write was block-aligned."""
        direct, buffered = set(), set()
        for is_direct, offset, length in self.disk.writes:
            if is_direct:
                self.assertEqual((offset % BLOCK, length % BLOCK), (0, 0))
            if length:
                blocks = range(offset // BLOCK, (offset + length - 1) // BLOCK + 1)
                (direct if is_direct else buffered).update(blocks)
        self.assertEqual(direct & buffered, set())

    def direct_bytes(self):
        return sum(length for direct, _, length in self.disk.writes if direct)


class DirectContractTests(DirectTestMixin, test_store.ContractTests):
    """The IChunkStore contract with every record that has a whole
    interior block written directly."""

    volume_size = None
    max_chunk_size = None
    direct_io_threshold = 0

    def make_store(self):
        return self.open_store(max_chunk_size=self.max_chunk)

    def test_pieces_of_mutable_buffers_are_stored_as_given(self):
        """A piece given as a mutable buffer and changed before its thread
        job ran is stored as it was when given; a slice of C{bytes} (what a
        socket read returns) is not copied, nor needs to be."""
        threads = ManualThreads()
        store = self.open_store(max_chunk_size=self.max_chunk, run_in_thread=threads)
        data = os.urandom(self.max_chunk - 5)
        third = len(data) // 3
        write = store.put(1, len(data))
        pieces = [bytearray(data[:third + 7]), memoryview(data)[third + 7:2 * third],
                  bytearray(data[2 * third:])]
        for piece in pieces:
            write.write(piece)
        for piece in pieces:
            if isinstance(piece, bytearray):
                piece[:] = bytes(len(piece))  # scribbled on before any write ran
        finished = write.finish()
        threads.run_all()
        self.assertEqual(self.successResultOf(finished).size, len(data))
        store.close()
        threads.run_all()
        self.store = self.open_store(max_chunk_size=self.max_chunk)
        self.assertEqual(self.read_chunk(1), data)

    def test_writes_went_direct(self):
        data = os.urandom(self.max_chunk)
        self.put(self.store, 1, data, pieces=7)
        self.assertGreaterEqual(self.direct_bytes(), self.max_chunk - 2 * BLOCK)
        self.assertEqual(self.read_chunk(1), data)
        self.assert_no_shared_block()


class BufferedContractTests(test_store.ContractTests):
    """The IChunkStore contract with direct I/O off."""

    def make_store(self):
        return self.open_store(max_chunk_size=self.max_chunk, direct_io="off",
                               direct_io_threshold=0)

    def test_nothing_direct(self):
        self.put(self.store, 1, os.urandom(self.max_chunk))
        self.assertEqual(self.disk.direct_opens, 0)
        self.assertFalse(any(direct for direct, _, _ in self.disk.writes))


SIZES = [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK - HEADER_SIZE,
         T - 1, T, T + 1, 16 * MiB + 3]


class BoundaryTests(DirectTestMixin, SynchronousTestCase):
    """Records of sizes around every boundary read back identical."""

    def check_all(self, store, chunks):
        for file_id, data in chunks.items():
            self.assertEqual(self.read(store, file_id), data, file_id)
            self.assertEqual(self.sendfile(store, file_id), data, file_id)
            self.assertEqual(self.staged(store, file_id), data, file_id)
        self.assertEqual(store._staging.lent, 0)

    def staged(self, store, file_id):
        """@return: the chunk's bytes as a staged GET holds them (a
        record under the threshold is not staged: read())."""
        chunk = self.successResultOf(store.get(file_id))
        try:
            views = chunk.staged()
            self.assertEqual(views is not None, chunk.length >= T)
            return chunk.read(0, chunk.length) if views is None else b"".join(views)
        finally:
            chunk.release()

    def test_sizes_and_pieces(self):
        """Every size, in odd pieces, through get (pread and sendfile), a
        clean restart, a crash (journal replay) and a full scan."""
        store = self.open_store(volume_size=80 * MiB)
        chunks = {}
        patterns = [(1, 7, 65536 + 5), (65536 + 5, 1), (7,), (BLOCK,), (MiB + 1, 3)]
        for n, size in enumerate(SIZES):
            data = os.urandom(size)
            for k, pattern in enumerate(patterns):
                if size > 64 * 1024 and pattern == (7,):
                    continue  # too many calls for nothing new
                file_id = 100 * n + k
                self.put_pieces(store, file_id, data, pattern)
                chunks[file_id] = data
        self.assertGreater(self.direct_bytes(), 4 * 16 * MiB)
        self.assert_no_shared_block()
        self.check_all(store, chunks)
        store = self.reopen(store, volume_size=80 * MiB)
        self.check_all(store, chunks)
        self.put_pieces(store, 9999, os.urandom(T + 1))
        store = self.crash(volume_size=80 * MiB)
        self.assertEqual(store.status()["counters"]["damaged_records"], 0)
        self.check_all(store, chunks)
        self.successResultOf(store.close())
        os.unlink(os.path.join(self.path, "index.ckpt"))
        store = self.open_store(volume_size=80 * MiB)
        self.assertEqual(store.status()["counters"]["damaged_records"], 0)
        self.check_all(store, chunks)
        self.assertEqual(len(list(store.file_ids())), len(chunks) + 1)

    def test_sizes_and_pieces_read_in_place(self):
        """
        Pieces read into the write's own staging buffer (C{write_space},
        C{wrote}), between pieces that are not, make the same records as
        pieces written: every size, with and without the memory cache.
        Only the bytes of the direct region are offered a place.
        """
        store = self.open_store(volume_size=80 * MiB)
        chunks = {}
        for n, size in enumerate(SIZES):
            data = os.urandom(size)
            for k, (pattern, keep) in enumerate([((MiB + 1, 3), False), ((65536 + 5, 1), True)]):
                file_id = 100 * n + k
                info = self.put_pieces(store, file_id, data, pattern, keep=keep, in_place=True)
                self.assertEqual((info.size, info.crc32c), (size, crc32c(data)))
                chunks[file_id] = data
        self.assertGreater(self.direct_bytes(), 2 * 16 * MiB)
        self.assert_no_shared_block()
        for file_id, data in chunks.items():  # kept ones from the memory cache
            self.assertEqual(self.read(store, file_id), data, file_id)
        store = self.reopen(store, volume_size=80 * MiB)  # and all from the disk
        self.check_all(store, chunks)

    def test_no_space_outside_the_direct_region(self):
        """A write offers no place for the bytes beside the record's header
        (nor at all below the direct threshold, nor once finished)."""
        store = self.open_store()
        small = store.put(1, T - 1)
        self.assertIsNone(small.write_space())
        small.abort()
        write = store.put(2, T + 3 * BLOCK)
        self.assertIsNone(write.write_space())  # the first bytes share the header's block
        write.write(b"x" * BLOCK)  # now into the direct region
        space = write.write_space()
        self.assertGreater(len(space), 0)
        write.abort()
        self.assertIsNone(write.write_space())
        self.assertEqual(store._staging.lent, 0)

    def test_below_threshold_is_buffered(self):
        store = self.open_store()
        self.put_pieces(store, 1, os.urandom(T - 1))
        self.assertEqual(self.direct_bytes(), 0)
        self.put_pieces(store, 2, os.urandom(T))
        self.assertGreaterEqual(self.direct_bytes(), T - 2 * BLOCK)

    def test_interleaved_puts_into_one_volume(self):
        """Two puts streaming into one volume at once, pieces interleaved:
        each reads back whole, and no block is written both ways."""
        store = self.open_store()
        a, b = os.urandom(3 * T + 5), os.urandom(2 * T + 4093)
        first, second = store.put(1, len(a)), store.put(2, len(b))
        self.assertEqual([v["volume_id"] for v in store.status()["volumes"]], [1])
        step = 65536 + 5
        for position in range(0, max(len(a), len(b)), step):
            first.write(a[position:position + step])
            second.write(b[position:position + 4099])
            second.write(b[position + 4099:position + step])
        self.successResultOf(second.finish())
        self.successResultOf(first.finish())
        self.assertEqual(self.read(store, 1), a)
        self.assertEqual(self.read(store, 2), b)
        self.assert_no_shared_block()
        store = self.crash()
        self.assertEqual((self.read(store, 1), self.read(store, 2)), (a, b))

    def test_torn_record_after_direct_blocks(self):
        """Killed after the direct blocks went out but before the header
        was finalised: recovery steps over the record, as ever."""
        store = self.open_store()
        before, after = os.urandom(T + 3), os.urandom(T + 5)
        self.put_pieces(store, 1, before)
        torn = store.put(2, 2 * T)
        torn.write(os.urandom(2 * T))
        self.assertGreater(self.direct_bytes(), T)
        self.put_pieces(store, 3, after)
        store = self.crash()
        self.assertEqual(sorted(store.file_ids()), [1, 3])
        self.assertEqual((self.read(store, 1), self.read(store, 3)), (before, after))
        counters = store.status()["counters"]
        self.assertEqual((counters["damaged_records"], counters["torn_records"]), (0, 0))

    def test_compaction_then_direct_puts(self):
        """A compacted volume (written buffered) takes direct puts again,
        after its copied tail; everything reads back."""
        store = self.open_store()
        chunks = {n: os.urandom(T + 1000 * n) for n in range(1, 6)}
        for file_id, data in chunks.items():
            self.put_pieces(store, file_id, data)
        for file_id in (2, 4):
            self.successResultOf(store.delete(file_id))
            del chunks[file_id]
        self.assertGreater(self.successResultOf(store.compact(1)), 2 * T)
        self.disk.writes = []
        chunks[6] = os.urandom(2 * T + 7)
        self.put_pieces(store, 6, chunks[6])
        self.assertGreater(self.direct_bytes(), T)
        self.assert_no_shared_block()
        for file_id, data in chunks.items():
            self.assertEqual(self.read(store, file_id), data)
        store = self.reopen(store)
        for file_id, data in chunks.items():
            self.assertEqual(self.sendfile(store, file_id), data)


class DirectFailureTests(DirectTestMixin, SynchronousTestCase):
    """Failures of direct I/O cost the one request that hit them."""

    def assert_reservations_released(self, store):
        for volume in store._volumes.values():
            self.assertEqual(volume.reservations, set())

    def check_direct_write_failure(self, code, threads=None):
        store = self.open_store(run_in_thread=threads) if threads else self.open_store()
        kept = os.urandom(T + 1)
        self.put_pieces(store, 1, kept, threads=threads)
        self.disk.fail("pwrite_direct", code)
        write = store.put(2, 3 * MiB)
        data = os.urandom(3 * MiB)
        if threads is None:
            self.assertRaises(NoSpace, write.write, data)
        else:
            write.write(data)
            finished = write.finish()
            threads.run_all()
            self.failureResultOf(finished, NoSpace)
        self.failureResultOf(write.finish(), NoSpace)
        self.assertEqual(write.buffered, 0)
        self.assert_reservations_released(store)
        self.disk.heal("pwrite_direct")
        self.assertEqual(store.status()["counters"]["nospace_errors"], 1)
        self.flushLoggedErrors()
        after = os.urandom(2 * T)
        self.put_pieces(store, 3, after, threads=threads)
        compacted = store.compact(1)
        if threads:
            threads.run_all()
        self.assertGreater(self.successResultOf(compacted), 3 * MiB)
        if threads is None:
            self.assertEqual((self.read(store, 1), self.read(store, 3)), (kept, after))
        self.assertLessEqual(len(store._staging._idle), STAGING_POOL_SIZE)
        store = self.crash()
        self.assertEqual((self.read(store, 1), self.read(store, 3)), (kept, after))
        self.assertEqual(sorted(store.file_ids()), [1, 3])

    def test_enospc_on_direct_write(self):
        self.check_direct_write_failure(errno.ENOSPC)

    def test_eio_on_direct_write(self):
        self.check_direct_write_failure(errno.EIO)

    def test_direct_write_fails_after_finish(self):
        self.check_direct_write_failure(errno.EIO, ManualThreads())

    def test_refusing_file_system(self):
        """A file system refusing O_DIRECT (EINVAL): buffered writes, one
        probe for the whole store."""
        self.disk.fail("open_direct", errno.EINVAL)
        store = self.open_store()
        chunks = {n: os.urandom(T + n) for n in range(3)}
        for file_id, data in chunks.items():
            self.put_pieces(store, file_id, data)
        for file_id, data in chunks.items():
            self.assertEqual(self.read(store, file_id), data)
        self.assertEqual(self.disk.direct_opens, 1)
        self.assertFalse(store.direct_io)
        self.assertEqual(self.direct_bytes(), 0)

    def test_other_open_error_retries(self):
        """Another error opening the direct descriptor (EMFILE) costs only
        that put its direct writes."""
        self.disk.fail("open_direct", errno.EMFILE)
        store = self.open_store()
        self.put_pieces(store, 1, os.urandom(T))
        self.assertEqual(self.direct_bytes(), 0)
        self.disk.heal("open_direct")
        data = os.urandom(T)
        self.put_pieces(store, 2, data)
        self.assertGreater(self.direct_bytes(), 0)
        self.assertEqual(self.read(store, 2), data)

    def test_direct_io_off(self):
        store = self.open_store(direct_io="off")
        data = os.urandom(2 * T)
        self.put_pieces(store, 1, data)
        self.assertEqual((self.disk.direct_opens, self.direct_bytes()), (0, 0))
        threads = ManualThreads()
        store = self.reopen(store, direct_io="off", run_in_thread=threads)
        d = store.get(1)
        self.assertEqual([f.__name__ for f, _, _ in threads.calls], ["read_record"])
        threads.run_all()
        chunk = self.successResultOf(d)
        self.assertEqual(chunk.read(0, chunk.length), data)
        chunk.release()

    def test_bad_setting(self):
        self.assertRaises(ValueError, self.open_store, direct_io="on")

    def test_store_closing_mid_write(self):
        """The store closes while a direct job is in flight: the write ends
        cleanly and its buffers go back to the pool."""
        threads = ManualThreads()
        store = self.open_store(run_in_thread=threads)
        write = store.put(1, 4 * MiB)
        write.write(os.urandom(2 * MiB + 5))
        self.assertTrue(threads.calls)
        closed = store.close()
        threads.run_all()
        self.successResultOf(closed)
        self.assertRaises(Busy, write.write, b"x")
        self.failureResultOf(write.finish())
        threads.run_all()
        self.assertEqual(len(store._staging._idle), 2)


class StagingTests(DirectTestMixin, SynchronousTestCase):
    """Staging buffers: counted as buffered, drained, reused, bounded."""

    def test_staged_bytes_are_buffered(self):
        threads = ManualThreads()
        store = self.open_store(run_in_thread=threads)
        write = store.put(1, 4 * MiB)
        # The first record's data starts just after its header, at DATA_START.
        head = BLOCK - (DATA_START + HEADER_SIZE) % BLOCK
        data = os.urandom(4 * MiB)
        write.write(data[:head])  # the buffered head: one job
        write.write(data[head:head + 3 * BLOCK + 100])
        # Three whole blocks wait in the staging buffer; the partial one
        # cannot be written yet and is not counted.
        self.assertEqual(write.buffered, head + 3 * BLOCK)
        drained = write.drained(0)
        threads.run_next()
        self.assertNoResult(drained)
        self.assertEqual(write.buffered, 3 * BLOCK)
        threads.run_next()  # the three blocks, sent early for the waiter
        self.successResultOf(drained)
        self.assertEqual(write.buffered, 0)
        write.write(data[head + 3 * BLOCK + 100:])
        finished = write.finish()
        threads.run_all()
        self.successResultOf(finished)
        d = store.get(1)
        self.assertEqual([f.__name__ for f, _, _ in threads.calls], ["read_record_direct"])
        threads.run_all()
        chunk = self.successResultOf(d)
        self.assertEqual(chunk.read(0, chunk.length), data)
        chunk.release()
        self.assert_no_shared_block()

    def test_buffers_reused_and_bounded(self):
        # Without staged GETs the pool keeps STAGING_POOL_SIZE idle buffers
        # (and their cap's worth more with them).
        store = self.open_store(staged_read_limit=0)
        writes = [store.put(n, 3 * MiB) for n in range(STAGING_POOL_SIZE + 4)]
        for write in writes:
            write.write(b"x" * (MiB // 2))
        for write in writes:
            write.write(b"x" * (3 * MiB - MiB // 2))
            self.successResultOf(write.finish())
        pool = store._staging
        self.assertEqual(len(pool._idle), STAGING_POOL_SIZE)
        idle = set(map(id, pool._idle))
        self.put_pieces(store, 1000, os.urandom(3 * MiB))
        self.assertEqual(set(map(id, pool._idle)), idle)


class DirectVerifyTests(DirectTestMixin, SynchronousTestCase):
    """GETs of large records verify with direct reads."""

    def test_damage_found(self):
        store = self.open_store()
        for file_id in (1, 2, 3):
            self.put_pieces(store, file_id, os.urandom(16 * MiB + 3))
        path, offset = self.chunk_position(store, 1)
        corrupt(path, offset + 8 * MiB, b"X")
        self.failureResultOf(store.get(1), ChecksumMismatch)
        path, offset = self.chunk_position(store, 2)  # both in the first volume
        corrupt(path, offset - HEADER_SIZE + 8, b"\x09")
        self.failureResultOf(store.get(2), ChecksumMismatch)
        self.assertEqual(len(self.read(store, 3)), 16 * MiB + 3)
        self.assertEqual(list(store.damaged), [1, 2])

    def test_read_error(self):
        store = self.open_store()
        self.put_pieces(store, 1, os.urandom(T))
        idle = len(store._staging._idle)
        self.disk.fail("pread_direct", errno.EIO)
        self.failureResultOf(store.get(1), ChecksumMismatch)
        self.assertEqual(len(store._staging._idle), idle)
        self.disk.heal("pread_direct")
        self.assertEqual(len(self.read(store, 1)), T)


class OptionTests(SynchronousTestCase):
    def setUp(self):
        with_secrets(self)

    def test_direct_io_option(self):
        base = ["--data-dir", "d", "--group-id", "1"]
        options = Options()
        options.parseOptions(base)
        self.assertEqual(options["direct-io"], "auto")
        options = Options()
        options.parseOptions(base + ["--direct-io", "off"])
        self.assertEqual(options["direct-io"], "off")
        self.assertRaises(usage.UsageError, Options().parseOptions,
                          base + ["--direct-io", "on"])

    def test_staged_read_limit_option(self):
        """--staged-read-limit takes a size, 64 MiB by default, and reaches
        the store the daemon opens."""
        base = ["--data-dir", "d", "--group-id", "1"]
        options = Options()
        options.parseOptions(base)
        self.assertEqual(options["staged-read-limit"], STAGED_READ_LIMIT)
        options = Options()
        options.parseOptions(base + ["--staged-read-limit", "192MiB"])
        self.assertEqual(options["staged-read-limit"], 192 << 20)
        self.assertRaises(usage.UsageError, Options().parseOptions,
                          base + ["--staged-read-limit", "lots"])
        opened = []
        self.patch(ChunkStore, "open", lambda *a, **kw: opened.append(kw) or fail(OSError("no")))
        self.failureResultOf(open_chunk_store(None, options), OSError)
        self.assertEqual(opened[0]["staged_read_limit"], 192 << 20)
