"""
Property test: random sequences of puts, deletes, compactions, checkpoints,
clean restarts and crashes leave L{speedy.chunkserver.store.ChunkStore}
holding exactly what a dict would.
"""

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from speedy.chunkserver.store import ChunkStore
from speedy.errors import ChunkExists, ChunkNotFound
from speedy.test.test_store import MiB, FaultyDisk, inline

file_ids = st.integers(0, 40)
operations = st.one_of(
    st.tuples(st.just("put"), file_ids,
              st.sampled_from([0, 1, 100, 4096, 70_000, 300_000]),
              st.integers(0, 3)),
    st.tuples(st.just("delete"), file_ids),
    st.tuples(st.just("compact")),
    st.tuples(st.just("checkpoint")),
    st.tuples(st.just("restart")),
    st.tuples(st.just("crash")),
)


class ModelTests(SynchronousTestCase):
    def open_store(self, path, disk):
        return ChunkStore.open(Clock(), path, volume_size=MiB, reserve=0,
                               compact_threshold=0.3, run_in_thread=inline,
                               disk=disk)

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(operations, max_size=40))
    def test_matches_a_dict(self, steps):
        path = os.path.abspath(self.mktemp())
        disk = FaultyDisk()
        try:
            self.run_steps(path, disk, steps)
        finally:
            disk.crash()

    def run_steps(self, path, disk, steps):
        store = self.open_store(path, disk)
        model = {}
        for step in steps:
            kind = step[0]
            if kind == "put":
                _, file_id, size, fill = step
                data = bytes([fill, file_id]) * (size // 2) + bytes(size % 2)
                write = store.put(file_id, len(data))
                write.write(data)
                d = write.finish()
                if file_id in model and model[file_id] != data:
                    self.failureResultOf(d, ChunkExists)
                else:
                    self.successResultOf(d)
                    model[file_id] = data
            elif kind == "delete":
                d = store.delete(step[1])
                if step[1] in model:
                    self.successResultOf(d)
                    del model[step[1]]
                else:
                    self.failureResultOf(d, ChunkNotFound)
            elif kind == "compact":
                self.successResultOf(store.compact())
            elif kind == "checkpoint":
                self.successResultOf(store.checkpoint())
            elif kind == "restart":
                self.successResultOf(store.close())
                store = self.open_store(path, disk)
            elif kind == "crash":
                disk.crash()
                store = self.open_store(path, disk)
            self.assertEqual(list(store.file_ids()), sorted(model))
        for file_id, data in model.items():
            chunk = self.successResultOf(store.get(file_id))
            self.assertEqual(chunk.read(0, chunk.length), data)
            chunk.release()
            self.assertEqual(store.stat(file_id).size, len(data))
        counters = store.status()["counters"]
        self.assertEqual(
            (counters["damaged_records"], counters["torn_records"],
             counters["checksum_errors"]), (0, 0, 0))
        live = sum(v["live"] for v in store.status()["volumes"])
        self.assertEqual(live, sum((40 + len(d) + 7) & ~7 for d in model.values()))
