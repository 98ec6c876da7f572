"""
The chunk cache: L{speedy.chunkserver.cache.ChunkCache} on its own (views,
LRU by bytes, the budget, leases outliving eviction and drops), and in
L{speedy.chunkserver.store.ChunkStore}: a PUT asked to keep its chunk is
answered from memory on GET (no disk read, the right bytes for every range
across its head, buffers and tail), nothing else is cached, deletes drop,
and every staging buffer goes back to the pool exactly once however a
kept write ends.  Then the C{KEEP} flag through the wire protocol, and the
C{--cache-size} option.
"""

import errno
import os

from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from speedy.chunkserver.cache import CachedChunk, ChunkCache
from speedy.chunkserver.protocol import ChunkServerFactory
from speedy.chunkserver.store import (
    CACHE_SIZE, STAGING_POOL_SIZE, STAGING_SIZE, ChunkStore)
from speedy.chunkserver.tap import Options, open_chunk_store
from speedy.chunkserver.volume import HEADER_SIZE
from speedy.errors import BadRequest, Busy, ChunkNotFound, NoSpace
from speedy.test.test_chunkserver_protocol import get_request, parse_frames
from speedy.test.test_direct_io import BLOCK, T, DirectTestMixin
from speedy.test.test_store import ManualThreads, MiB
from speedy.test.util import with_secrets
from speedy.wire.frames import (
    FILE_ID, FLAG_KEEP, FLAG_RESPONSE, GET_RESPONSE, OP_PUT, frame)
from speedy.wire.producers import PIECE


class Buffers:
    """Fake staging buffers, and the C{give} that takes them back."""

    def __init__(self, size=16):
        self.size = size
        self.given = []

    def make(self, fill):
        buffer = bytearray(self.size)
        buffer[:len(fill)] = fill
        return buffer

    def give(self, buffer):
        self.given.append(buffer)


def entry(buffers, data, head=3, tail=2):
    """
    @return: a L{CachedChunk} of C{data}: C{head} bytes copied, then the
        middle in buffers of C{buffers.size} (the last one partly filled),
        then C{tail} bytes copied.
    """
    middle = data[head:len(data) - tail]
    owned = [buffers.make(middle[at:at + buffers.size])
             for at in range(0, len(middle), buffers.size)]
    segments = [data[:head]]
    for n, buffer in enumerate(owned):
        segments.append(memoryview(buffer)[:len(middle) - n * buffers.size])
    segments.append(data[len(data) - tail:])
    return CachedChunk(segments, owned)


def joined(lease, start, length):
    views = lease.views(HEADER_SIZE + start, length)
    assert all(len(view) for view in views), views
    return b"".join(views)


class ChunkCacheTests(SynchronousTestCase):

    def setUp(self):
        self.buffers = Buffers()

    def test_views_every_range(self):
        """Every range of a cached chunk (head, buffers and tail, and across
        their edges) comes out right, in non-empty views, positions counted
        from the record's first header byte."""
        data = bytes(range(50))
        cache = ChunkCache(1000, self.buffers.give)
        cache.add(7, entry(self.buffers, data))
        lease = cache.lease(7)
        for start in range(len(data) + 1):
            for end in range(start, len(data) + 1):
                self.assertEqual(joined(lease, start, end - start), data[start:end])
        self.assertEqual(lease.views(HEADER_SIZE + 50, 0), [])
        self.assertRaises(ValueError, lease.views, HEADER_SIZE + 45, 6)
        lease.release()

    def test_memory(self):
        """An entry holds its buffers whole plus its copied head and tail;
        the bytes inside its buffers are not counted twice."""
        chunk = entry(self.buffers, bytes(40), head=3, tail=2)
        # 35 middle bytes: three 16-byte buffers.
        self.assertEqual((chunk.size, chunk.memory), (40, 3 * 16 + 5))

    def test_lru_by_bytes(self):
        """Beyond the budget the least recently used entries go, their
        buffers back; a lease makes an entry the most recently used."""
        one = entry(self.buffers, bytes(40))  # 53 bytes each
        cache = ChunkCache(3 * 53, self.buffers.give)
        for file_id in (1, 2, 3):
            self.assertTrue(cache.add(file_id, entry(self.buffers, bytes(40))))
        self.assertEqual((cache.count, cache.bytes), (3, 3 * 53))
        cache.lease(1).release()  # 2 is now the oldest
        cache.add(4, one)
        self.assertEqual((2 in cache, 1 in cache, 3 in cache, 4 in cache),
                         (False, True, True, True))
        self.assertEqual((cache.count, cache.bytes), (3, 3 * 53))
        self.assertEqual(len(self.buffers.given), 3)
        self.assertIsNone(cache.lease(2))
        self.assertEqual(cache.peak, 3 * 53)
        self.assertEqual(cache.buffer_bytes, 9 * 16)

    def test_too_large(self):
        """An entry larger than the budget is not cached; its buffers go
        back at once, and the others stay."""
        cache = ChunkCache(60, self.buffers.give)
        cache.add(1, entry(self.buffers, bytes(40)))
        self.assertFalse(cache.add(2, entry(self.buffers, bytes(100))))
        self.assertEqual((cache.count, 1 in cache, 2 in cache), (1, True, False))
        self.assertEqual(len(self.buffers.given), 6)
        self.assertEqual(cache.buffer_bytes, 3 * 16)

    def test_replacing_an_entry(self):
        cache = ChunkCache(1000, self.buffers.give)
        cache.add(1, entry(self.buffers, b"a" * 40))
        cache.add(1, entry(self.buffers, b"b" * 40))
        self.assertEqual((cache.count, cache.bytes), (1, 53))
        self.assertEqual(len(self.buffers.given), 3)
        lease = cache.lease(1)
        self.assertEqual(joined(lease, 0, 40), b"b" * 40)
        lease.release()

    def test_lease_outlives_eviction(self):
        """An entry evicted while leased keeps its bytes for the lease; its
        buffers go back when the last lease is released, once."""
        cache = ChunkCache(53, self.buffers.give)
        data = os.urandom(40)
        cache.add(1, entry(self.buffers, data))
        first, second = cache.lease(1), cache.lease(1)
        cache.add(2, entry(self.buffers, bytes(40)))
        self.assertEqual((1 in cache, cache.bytes), (False, 53))
        self.assertEqual(cache.buffer_bytes, 6 * 16)
        self.assertEqual(self.buffers.given, [])
        self.assertEqual(joined(first, 0, 40), data)
        first.release()
        first.release()
        self.assertEqual(self.buffers.given, [])
        self.assertEqual(joined(second, 5, 30), data[5:35])
        second.release()
        self.assertEqual(len(self.buffers.given), 3)
        self.assertEqual(cache.buffer_bytes, 3 * 16)
        self.assertRaises(ValueError, second.views, HEADER_SIZE, 1)

    def test_lease_outlives_drop_and_clear(self):
        cache = ChunkCache(1000, self.buffers.give)
        data = os.urandom(40)
        cache.add(1, entry(self.buffers, data))
        cache.add(2, entry(self.buffers, data))
        lease = cache.lease(1)
        cache.drop(1)
        cache.drop(1)
        cache.drop(99)
        self.assertEqual((cache.count, cache.bytes, self.buffers.given), (1, 53, []))
        cache.clear()
        self.assertEqual((cache.count, cache.bytes, len(self.buffers.given)), (0, 0, 3))
        self.assertEqual(joined(lease, 0, 40), data)
        lease.release()
        self.assertEqual(len(self.buffers.given), 6)
        self.assertEqual(len({id(b) for b in self.buffers.given}), 6)
        self.assertEqual(cache.buffer_bytes, 0)


class CacheStoreMixin(DirectTestMixin):
    """Stores with direct I/O on (skipped where O_DIRECT is refused)."""

    volume_size = 80 * MiB

    def open_store(self, **kwargs):
        store = super().open_store(**kwargs)
        self.lent_at_start = store._staging.lent if store._staging else 0
        return store

    def put_kept(self, store, file_id, data, sizes=(MiB + 1, 3, 5000), keep=True,
                 threads=None):
        """L{put_pieces}, kept by default, in pieces of other sizes."""
        return self.put_pieces(store, file_id, data, sizes, threads, keep)

    def count_reads(self):
        """Count every read of the disk from now on.  @return: the list of
        their sizes."""
        reads = []
        disk = self.disk
        pread, pread_into, pread_cached = disk.pread, disk.pread_into, disk.pread_cached
        disk.pread = lambda fd, size, offset: reads.append(size) or pread(fd, size, offset)
        disk.pread_into = lambda fd, buffer, offset: (
            reads.append(len(buffer)) or pread_into(fd, buffer, offset))
        disk.pread_cached = lambda fd, size, offset: (
            reads.append(size) or pread_cached(fd, size, offset))
        return reads

    def assert_all_back(self, store):
        """Every staging buffer taken since the store opened is back."""
        self.assertEqual(store._staging.lent, self.lent_at_start)

    def on_disk(self, store, file_id):
        """@return: the chunk's bytes as the disk holds them (sent with
        sendfile, the cache out of the way)."""
        cache, store._cache = store._cache, None
        try:
            return self.sendfile(store, file_id)
        finally:
            store._cache = cache

    def held_by_cache(self, store):
        return sum(len(e.buffers) for e in store._cache._entries.values())


class CachedPutTests(CacheStoreMixin, SynchronousTestCase):

    def test_kept_put_is_served_from_memory(self):
        """A kept PUT's chunk is sent from memory: the right bytes for every
        range across head, buffer and tail edges, at record offsets in
        several positions of a block, and not one disk read."""
        store = self.open_store()
        chunks = {}
        for n, (size, skew) in enumerate([(T, 0), (3 * MiB + 7, 13), (STAGING_SIZE, 100),
                                          (5 * MiB - 1, 4000), (T + BLOCK + 1, 2)]):
            if skew:
                # A small record first shifts the next one within its block.
                self.put_kept(store, 100 + n, os.urandom(skew), keep=False)
            chunks[n] = os.urandom(size)
            self.put_kept(store, n, chunks[n])
        self.assertEqual(store._cache.count, len(chunks))
        reads = self.count_reads()
        for n, data in chunks.items():
            chunk = self.successResultOf(store.get(n))
            self.assertEqual(b"".join(chunk.staged()), data)
            self.assertRaises(OSError, chunk.fileno)
            chunk.release()
            head = len(store._cache._entries[n]._segments[0])  # the copied head
            self.assertLess(head, BLOCK)
            edges = {0, len(data), head + (len(data) - head) // BLOCK * BLOCK}
            edges.update(range(head, len(data), STAGING_SIZE))
            wanted = set()
            for edge in edges:
                for start in (edge - 1, edge, edge + 1):
                    for end in (edge + 1, edge + 2, edge + STAGING_SIZE, len(data)):
                        if 0 <= start <= end <= len(data):
                            wanted.add((start, end - start))
            for offset, length in sorted(wanted):
                chunk = self.successResultOf(store.get(n, offset, length))
                want = data[offset:offset + length]
                views = chunk.staged()
                self.assertTrue(b"".join(views) == want, (n, offset, length))
                self.assertTrue(all(len(view) for view in views))
                pieces = [chunk.read(p, PIECE) for p in range(0, length, PIECE)]
                self.assertTrue(b"".join(pieces) == want, (n, offset, length))
                chunk.release()
                chunk.release()
        self.assertEqual(reads, [])
        counters = store.status()["counters"]
        self.assertEqual(counters["cache_misses"], 0)
        self.assertGreater(counters["cache_hits"], len(chunks))
        self.assertEqual(self.held_by_cache(store), store._staging.lent - self.lent_at_start)
        # And the disk holds the same bytes.
        for n, data in chunks.items():
            self.assertEqual(self.on_disk(store, n), data)

    def test_not_kept_without_the_flag(self):
        """Without keep the chunk is not cached: a GET reads the disk."""
        store = self.open_store()
        data = os.urandom(3 * MiB)
        self.put_kept(store, 1, data, keep=False)
        self.assertEqual(store._cache.count, 0)
        self.assert_all_back(store)
        reads = self.count_reads()
        self.assertEqual(self.read(store, 1), data)
        self.assertGreater(sum(reads), 3 * MiB)
        counters = store.status()["counters"]
        self.assertEqual((counters["cache_hits"], counters["cache_misses"]), (0, 1))

    def test_small_and_repeated_puts_not_cached(self):
        """A record below the direct-I/O threshold, and a repeated put of
        a stored id, are not cached, and keep no buffer."""
        store = self.open_store()
        self.put_kept(store, 1, os.urandom(T - 1))
        self.assertEqual(store._cache.count, 0)
        data = os.urandom(2 * MiB)
        self.put_kept(store, 2, data, keep=False)
        self.put_kept(store, 2, data)  # an idempotent retry
        self.assertEqual(store._cache.count, 0)
        self.assert_all_back(store)

    def test_cache_off(self):
        """cache_size=0, or direct I/O off: keep is ignored."""
        for file_id, options in enumerate([{"cache_size": 0}, {"direct_io": "off"}]):
            store = self.open_store(**options)
            data = os.urandom(2 * MiB)
            self.put_kept(store, file_id, data)
            self.assertIsNone(store._cache)
            self.assertEqual(self.read(store, file_id), data)
            self.assertEqual(store.status()["cache"], {"size": 0, "bytes": 0, "chunks": 0})
            self.successResultOf(store.close())
            self.disk.crash()

    def test_delete_drops(self):
        """A delete drops the entry and its buffers; a GET leased before
        still sends the old bytes; a new chunk under the id is read from
        the disk."""
        store = self.open_store()
        old = os.urandom(2 * MiB + 5)
        self.put_kept(store, 1, old)
        leased = self.successResultOf(store.get(1))
        self.successResultOf(store.delete(1))
        self.assertEqual(store._cache.count, 0)
        self.failureResultOf(store.get(1), ChunkNotFound)
        self.assertEqual(b"".join(leased.staged()), old)
        leased.release()
        self.assert_all_back(store)
        new = os.urandom(2 * MiB + 5)
        self.put_kept(store, 1, new, keep=False)
        self.assertEqual(self.read(store, 1), new)
        self.assertEqual(store.status()["counters"]["cache_hits"], 1)

    def test_lru_and_status(self):
        """Beyond its budget the cache evicts the least recently read
        chunk; status reports it; evicted buffers are reused by the next
        writes instead of new ones."""
        store = self.open_store(cache_size=8 * MiB, staged_read_limit=0)
        chunks = {n: os.urandom(3 * MiB + 100) for n in range(3)}
        for n, data in chunks.items():
            self.put_kept(store, n, data)
        self.assertEqual(store._cache.count, 2)  # 3 buffers each, and ~100 bytes
        self.assertFalse(0 in store._cache)
        self.read(store, 1)  # 2 is now the oldest
        idle = {id(b) for b in store._staging._idle}  # chunk 0's among them
        self.put_kept(store, 3, os.urandom(3 * MiB + 100))
        self.assertEqual(sorted(store._cache._entries), [1, 3])
        status = store.status()["cache"]
        self.assertEqual(status["size"], 8 * MiB)
        self.assertEqual(status["chunks"], 2)
        self.assertEqual(status["bytes"], store._cache.bytes)
        self.assertGreaterEqual(status["bytes"], 2 * 3 * STAGING_SIZE)
        # The cached chunks' bytes are right, from memory or from the disk.
        reads = self.count_reads()
        self.assertEqual(self.read(store, 1), chunks[1])
        self.assertEqual(reads, [])
        self.assertEqual(self.read(store, 0), chunks[0])
        self.assertEqual(self.read(store, 2), chunks[2])
        # Chunk 3 took idle buffers, not new ones.
        self.assertTrue({id(b) for b in store._cache._entries[3].buffers} <= idle)
        self.assertEqual(store._staging.lent - self.lent_at_start, self.held_by_cache(store))

    def test_pool_keeps_what_the_cache_let_go(self):
        """Buffers the cache drops stay idle in the pool, beyond the pool's
        own allowance but no more than the cache once held: the next
        writes reuse them."""
        store = self.open_store(cache_size=40 * MiB, staged_read_limit=0)
        pool = store._staging
        self.assertEqual(pool._keep, STAGING_POOL_SIZE)
        for n in range(12):
            self.put_kept(store, n, os.urandom(3 * MiB + 100))
        held = {id(b) for e in store._cache._entries.values() for b in e.buffers}
        self.assertEqual(len(held), 36)
        self.assertLessEqual(len(pool._idle), STAGING_POOL_SIZE)
        for n in range(12):
            self.successResultOf(store.delete(n))
        self.assert_all_back(store)
        idle = {id(b) for b in pool._idle}
        self.assertTrue(held <= idle)
        self.assertLessEqual(len(pool._idle), STAGING_POOL_SIZE + 36)
        self.put_kept(store, 100, os.urandom(3 * MiB + 100))
        self.assertTrue({id(b) for b in store._cache._entries[100].buffers} <= idle)

    def test_reserved_cache_memory_is_used_by_kept_puts(self):
        """C{reserve_cache} stocks the pool with the cache's budget in
        buffers, faulted in at once; kept puts take those buffers, and what
        the cache evicts goes back to them: the cache and the idle buffers
        stay within the budget on top of the pool's own allowance."""
        store = self.open_store(cache_size=12 * MiB, staged_read_limit=0)
        pool = store._staging
        before = pool.idle
        stocked = self.successResultOf(store.reserve_cache())
        self.assertEqual(stocked, 12 * MiB // pool.size)
        self.assertEqual(pool.idle, before + stocked)
        reserved = {id(b) for b in pool._idle}
        for n in range(8):  # 8 x 3 MiB through a 12 MiB cache: evictions
            data = os.urandom(3 * MiB + 100)
            self.put_kept(store, n, data)
            held = {id(b) for e in store._cache._entries.values() for b in e.buffers}
            self.assertTrue(held <= reserved, "a kept put touched new memory")
            self.assertLessEqual(len(held) + pool.idle,
                                 STAGING_POOL_SIZE + 12 * MiB // pool.size)
        self.assertEqual(self.read(store, 7), data)
        self.assertEqual(pool.lent - self.lent_at_start, self.held_by_cache(store))

    def test_reserve_without_cache_or_after_close(self):
        """Nothing is reserved without a cache, nor once the store closed."""
        store = self.open_store(cache_size=0)
        self.assertEqual(self.successResultOf(store.reserve_cache()), 0)
        store = self.open_store(cache_size=4 * MiB)
        idle = store._staging.idle
        self.successResultOf(store.close())
        self.assertEqual(self.successResultOf(store.reserve_cache()), 0)
        self.assertEqual(store._staging.idle, idle)

    def test_pool_without_kept_puts(self):
        """A store whose cache never held anything keeps the pool's own
        allowance of idle buffers only."""
        store = self.open_store(staged_read_limit=0)
        writes = [store.put(n, 3 * MiB) for n in range(STAGING_POOL_SIZE + 4)]
        for write in writes:  # each holds a staging buffer
            write.write(b"x" * (MiB // 2))
        for write in writes:
            write.write(b"x" * (3 * MiB - MiB // 2))
            self.successResultOf(write.finish())
        self.assertEqual(len(store._staging._idle), STAGING_POOL_SIZE)

    def test_compaction_keeps_entries_right(self):
        store = self.open_store()
        gone = os.urandom(3 * MiB)
        self.put_kept(store, 1, gone, keep=False)
        data = os.urandom(3 * MiB + 11)
        self.put_kept(store, 2, data)
        self.successResultOf(store.delete(1))
        self.assertGreater(self.successResultOf(store.compact(1)), 3 * MiB)
        reads = self.count_reads()
        self.assertEqual(self.read(store, 2), data)
        self.assertEqual(reads, [])
        self.assertEqual(self.on_disk(store, 2), data)

    def test_close_clears(self):
        store = self.open_store()
        data = os.urandom(2 * MiB)
        self.put_kept(store, 1, data)
        leased = self.successResultOf(store.get(1))
        self.successResultOf(store.close())
        self.assertEqual(store._cache.count, 0)
        self.failureResultOf(store.get(1), Busy)
        self.assertEqual(b"".join(leased.staged()), data)
        leased.release()
        self.assert_all_back(store)

    def test_bad_setting(self):
        self.assertRaises(ValueError, self.open_store, cache_size=-1)
        self.assertEqual(self.open_store().cache_size, CACHE_SIZE)


class FailedKeptWriteTests(CacheStoreMixin, SynchronousTestCase):
    """However a kept write ends without publishing, every buffer it took
    goes back to the pool, once, and nothing is cached."""

    def assert_nothing_kept(self, store):
        self.assertEqual(store._cache.count, 0)
        self.assert_all_back(store)

    def test_abort(self):
        store = self.open_store()
        write = store.put(1, 4 * MiB, keep=True)
        write.write(os.urandom(3 * MiB + 5))
        self.assertGreater(store._staging.lent, self.lent_at_start)
        write.abort()
        write.abort()
        self.assert_nothing_kept(store)

    def test_abort_while_a_job_writes(self):
        """Aborted while a thread writes from the kept buffers: they go
        back once that job is done, not before."""
        threads = ManualThreads()
        store = self.open_store(run_in_thread=threads)
        write = store.put(1, 4 * MiB, keep=True)
        write.write(os.urandom(10))  # a job for the head
        write.write(os.urandom(3 * MiB + 5))  # three full buffers wait
        threads.run_next()  # the head
        self.assertTrue(threads.calls)  # the full buffers, being written
        write.abort()
        self.assertGreaterEqual(store._staging.lent - self.lent_at_start, 3)
        threads.run_all()
        self.assert_nothing_kept(store)

    def test_direct_write_fails(self):
        store = self.open_store()
        self.disk.fail("pwrite_direct", errno.EIO)
        write = store.put(1, 3 * MiB, keep=True)
        self.assertRaises(NoSpace, write.write, os.urandom(3 * MiB))
        self.failureResultOf(write.finish(), NoSpace)
        self.assert_nothing_kept(store)
        self.flushLoggedErrors()

    def test_direct_write_fails_in_a_thread(self):
        threads = ManualThreads()
        store = self.open_store(run_in_thread=threads)
        write = store.put(1, 3 * MiB, keep=True)
        write.write(os.urandom(2 * MiB))
        threads.run_all()  # two buffers written and kept
        self.disk.fail("pwrite_direct", errno.EIO)
        write.write(os.urandom(MiB))
        finished = write.finish()
        threads.run_all()
        self.failureResultOf(finished, NoSpace)
        self.assert_nothing_kept(store)
        self.flushLoggedErrors()

    def test_short_body(self):
        store = self.open_store()
        write = store.put(1, 3 * MiB, keep=True)
        write.write(os.urandom(3 * MiB - 1))
        self.failureResultOf(write.finish(), BadRequest)
        self.assert_nothing_kept(store)

    def test_store_closes_before_finish(self):
        threads = ManualThreads()
        store = self.open_store(run_in_thread=threads)
        write = store.put(1, 2 * MiB, keep=True)
        write.write(os.urandom(2 * MiB))
        finished = write.finish()
        closed = store.close()
        threads.run_all()
        self.failureResultOf(finished, Busy)
        self.successResultOf(closed)
        self.assert_nothing_kept(store)

    def test_lost_race_to_publish(self):
        """Two puts of one id: the second to finish is a retry and keeps
        nothing; the first's entry is served."""
        store = self.open_store()
        data = os.urandom(2 * MiB)
        first, second = (store.put(1, len(data), keep=True) for _ in range(2))
        for write in (first, second):
            write.write(data)
        self.successResultOf(second.finish())
        self.successResultOf(first.finish())
        self.assertEqual(store._cache.count, 1)
        self.assertEqual(self.held_by_cache(store), store._staging.lent - self.lent_at_start)
        reads = self.count_reads()
        self.assertEqual(self.read(store, 1), data)
        self.assertEqual(reads, [])


class KeepFlagOverTheWireTests(CacheStoreMixin, SynchronousTestCase):
    """A PUT flagged KEEP through the protocol reaches a real store's
    cache; its GET is sent without touching the disk."""

    def test_put_keep_then_get(self):
        store = self.open_store()
        factory = ChunkServerFactory(Clock(), store)
        server = factory.buildProtocol(None)
        transport = StringTransport()
        server.makeConnection(transport)
        data = os.urandom(3 * MiB + 17)
        server.dataReceived(frame(OP_PUT, 1, FILE_ID.pack(5) + data, FLAG_KEEP))
        [(header, _)], _ = parse_frames(transport.value())
        self.assertEqual(header.flags, FLAG_RESPONSE)
        transport.clear()
        self.assertTrue(5 in store._cache)
        reads = self.count_reads()
        server.dataReceived(get_request(2, 5))
        while transport.producer is not None:
            transport.producer.resumeProducing()
        [(header, body)], _ = parse_frames(transport.value())
        self.assertEqual(header.flags, FLAG_RESPONSE)
        self.assertTrue(bytes(body[GET_RESPONSE.size:]) == data)
        self.assertEqual(reads, [])
        self.assertEqual(store.status()["counters"]["cache_hits"], 1)
        server.connectionLost(None)


class OptionTests(SynchronousTestCase):
    def setUp(self):
        with_secrets(self)

    def test_cache_size_option(self):
        """--cache-size takes a size, 512 MiB by default, and reaches the
        store the daemon opens."""
        base = ["--data-dir", "d", "--group-id", "1"]
        options = Options()
        options.parseOptions(base)
        self.assertEqual(options["cache-size"], CACHE_SIZE)
        self.assertEqual(CACHE_SIZE, 512 << 20)
        options = Options()
        options.parseOptions(base + ["--cache-size", "1GiB"])
        self.assertEqual(options["cache-size"], 1 << 30)
        self.assertRaises(usage.UsageError, Options().parseOptions,
                          base + ["--cache-size", "lots"])
        opened = []
        self.patch(ChunkStore, "open", lambda *a, **kw: opened.append(kw) or fail(OSError("no")))
        self.failureResultOf(open_chunk_store(None, options), OSError)
        self.assertEqual(opened[0]["cache_size"], 1 << 30)

    def test_daemon_reserves_the_cache(self):
        """The store the daemon opens is asked to reserve its cache once it
        has started; a failure to is logged, and the store serves anyway."""
        options = Options()
        options.parseOptions(["--data-dir", "d", "--group-id", "1"])
        calls = []

        class Store:
            def start(self):
                calls.append("start")

            def reserve_cache(self):
                calls.append("reserve")
                return fail(OSError(12, "Cannot allocate memory"))

        store = Store()
        self.patch(ChunkStore, "open", lambda *a, **kw: store)
        self.assertIs(self.successResultOf(open_chunk_store(None, options)), store)
        self.assertEqual(calls, ["start", "reserve"])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_config_file(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[chunkserver]\ncache_size = 0\n")
        options = Options()
        options.parseOptions(["--config", path, "--data-dir", "d", "--group-id", "1"])
        self.assertEqual(options["cache-size"], 0)
