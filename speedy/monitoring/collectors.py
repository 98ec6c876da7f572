# -*- test-case-name: speedy.test.test_monitoring -*-
"""
Prometheus collectors over the figures each role already keeps.  They read
when scraped and keep nothing, so they add no work to a request.

Names follow the Prometheus conventions: C{speedy_<role>_...}, C{_total}
on counters (added by the library), C{_bytes} and C{_seconds} units, and
labels of bounded cardinality (a state, a volume id, a group id: never a
digest or a repository).
"""

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from speedy.records import DOWN, DRAINING, INIT, RO, RW

#: chunk store counters (L{speedy.chunkserver.store.COUNTERS} and the
#: scrubber's) -> (metric name, help).  The others are exposed under their
#: own name.
_STORE_COUNTERS = {
    "reads": ("speedy_chunkserver_chunk_reads", "Chunks read."),
    "writes": ("speedy_chunkserver_chunk_writes", "Chunks written."),
    "deletes": ("speedy_chunkserver_chunk_deletes", "Chunks deleted."),
    "bytes_read": ("speedy_chunkserver_read_bytes", "Chunk bytes read."),
    "bytes_written": ("speedy_chunkserver_written_bytes", "Chunk bytes written."),
    "checksum_errors": ("speedy_chunkserver_checksum_errors",
                        "Chunks whose bytes did not match their checksum when read."),
    "damaged_records": ("speedy_chunkserver_damaged_records", "Records found damaged."),
    "torn_records": ("speedy_chunkserver_torn_records", "Torn records found at recovery."),
    "damaged_volumes": ("speedy_chunkserver_damaged_volumes", "Volumes found damaged."),
    "corrupt_checkpoints": ("speedy_chunkserver_corrupt_checkpoints",
                            "Index checkpoints found corrupt."),
    "nospace_errors": ("speedy_chunkserver_nospace_errors", "Writes refused for lack of space."),
    "sync_errors": ("speedy_chunkserver_sync_errors", "fdatasync calls that failed."),
    "compactions": ("speedy_chunkserver_compactions", "Volume compactions run."),
    "bytes_compacted_away": ("speedy_chunkserver_compaction_reclaimed_bytes",
                             "Bytes compactions reclaimed."),
    "cache_hits": ("speedy_chunkserver_cache_hits", "Reads answered from the chunk cache."),
    "cache_misses": ("speedy_chunkserver_cache_misses", "Reads the chunk cache could not answer."),
    "verified": ("speedy_chunkserver_verified_chunks", "Writes read back and verified."),
    "bytes_verified": ("speedy_chunkserver_verified_bytes", "Bytes read back and verified."),
    "sync_rounds": ("speedy_chunkserver_sync_rounds", "Group-commit rounds of fdatasync."),
    "scrub_chunks": ("speedy_chunkserver_scrub_chunks", "Chunks the scrubber checked."),
    "scrub_bytes": ("speedy_chunkserver_scrub_bytes", "Bytes the scrubber checked."),
    "scrub_damaged": ("speedy_chunkserver_scrub_damaged", "Chunks the scrubber found damaged."),
    "scrub_passes": ("speedy_chunkserver_scrub_passes", "Scrub passes completed."),
}

#: wire counters of L{speedy.chunkserver.protocol.ChunkServerFactory} that
#: are gauges; the others are counters.
_WIRE_GAUGES = {"open_connections"}


class ChunkserverCollector:
    """
    A chunkserver's store and wire figures.

    @param store: returns the open chunk store, or None while it is not.
    @param wire_counters: the wire protocol factory's C{counters} dict.
    """

    def __init__(self, store, wire_counters):
        self._store = store
        self._wire = wire_counters

    def collect(self):
        wire = []
        for name, value in sorted(self._wire.items()):
            if name in _WIRE_GAUGES:
                family = GaugeMetricFamily(f"speedy_chunkserver_wire_{name}",
                                           f"Wire protocol {name.replace('_', ' ')}.")
            else:
                family = CounterMetricFamily(f"speedy_chunkserver_wire_{name}",
                                             f"Wire protocol {name.replace('_', ' ')}.")
            family.add_metric([], value)
            wire.append(family)
        yield from wire
        store = self._store()
        up = GaugeMetricFamily("speedy_chunkserver_store_open",
                               "1 when the chunk store is open and serving.")
        up.add_metric([], 0 if store is None else 1)
        yield up
        if store is None:
            return
        status = store.status()
        for raw, value in sorted(status["counters"].items()):
            name, documentation = _STORE_COUNTERS.get(
                raw, (f"speedy_chunkserver_{raw}", f"Chunk store {raw.replace('_', ' ')}."))
            family = CounterMetricFamily(name, documentation)
            family.add_metric([], value)
            yield family
        for name, documentation, value in [
                ("capacity_bytes", "Size of the disk holding the store.", status["capacity"]),
                ("used_bytes", "Bytes the volumes hold, live and garbage.", status["used"]),
                ("free_bytes", "Bytes chunks can still take (0 when read-only).",
                 status["free"]),
                ("read_only", "1 when the store refuses writes.", int(status["read_only"])),
                ("chunks", "Live chunks.", status["chunks"]),
                ("index_bytes", "Memory the needle index takes.", status.get("index_bytes", 0)),
                ("volumes", "Volume files.", len(status["volumes"])),
                ("cache_bytes", "Bytes the chunk cache holds.", status["cache"]["bytes"]),
                ("cache_size_bytes", "The chunk cache's budget.", status["cache"]["size"])]:
            family = GaugeMetricFamily("speedy_chunkserver_" + name, documentation)
            family.add_metric([], value)
            yield family
        live = GaugeMetricFamily("speedy_chunkserver_volume_live_bytes",
                                 "Live bytes of each volume.", labels=["volume"])
        garbage = GaugeMetricFamily("speedy_chunkserver_volume_garbage_bytes",
                                    "Garbage bytes of each volume (reclaimed by compaction).",
                                    labels=["volume"])
        ratio = GaugeMetricFamily("speedy_chunkserver_volume_garbage_ratio",
                                  "Garbage over used bytes of each volume.", labels=["volume"])
        fill = GaugeMetricFamily("speedy_chunkserver_volume_fill_ratio",
                                 "Used over size of each volume.", labels=["volume"])
        for volume in status["volumes"]:
            label = [str(volume["volume_id"])]
            live.add_metric(label, volume["live"])
            garbage.add_metric(label, volume["garbage"])
            ratio.add_metric(label, volume["garbage"] / volume["used"] if volume["used"] else 0.0)
            fill.add_metric(label, volume["used"] / volume["size"] if volume["size"] else 0.0)
        yield from (live, garbage, ratio, fill)
        commit = getattr(store, "group_commit", None)
        if commit is not None:
            yield commit.sync_seconds.family(
                "speedy_chunkserver_fdatasync_seconds",
                "Time of each group-commit round's fdatasync calls.")
            yield commit.batch_sizes.family(
                "speedy_chunkserver_group_commit_batch_size",
                "Writes (and flushes) each group-commit round made durable.")


class ChunkmasterCollector:
    """
    The chunkmaster's view of the cluster and its repairs.

    @param cluster: the L{speedy.chunkmaster.cluster.Cluster}.
    @param repairs: the L{speedy.chunkmaster.repair.RepairService}, or None.
    """

    STATES = (INIT, RW, RO, DOWN, DRAINING)

    def __init__(self, cluster, repairs=None):
        self._cluster = cluster
        self._repairs = repairs

    def collect(self):
        cluster = self._cluster
        servers = cluster.servers()
        by_state = dict.fromkeys(self.STATES, 0)
        for server in servers:
            by_state[server.state] = by_state.get(server.state, 0) + 1
        states = GaugeMetricFamily("speedy_chunkmaster_servers", "Chunkservers by state.",
                                   labels=["state"])
        for state, count in sorted(by_state.items()):
            states.add_metric([state], count)
        yield states
        lost = GaugeMetricFamily("speedy_chunkmaster_servers_lost",
                                 "Chunkservers DOWN for longer than --lost-after.")
        lost.add_metric([], sum(1 for s in servers if cluster.is_lost(s.server_id)))
        yield lost
        view = cluster.view()
        groups = GaugeMetricFamily("speedy_chunkmaster_groups", "Replica groups.")
        groups.add_metric([], len(view["groups"]))
        writable = GaugeMetricFamily("speedy_chunkmaster_groups_writable",
                                     "Replica groups that take writes.")
        writable.add_metric([], sum(1 for g in view["groups"] if g["writable"]))
        version = GaugeMetricFamily("speedy_chunkmaster_view_version",
                                    "Version of the cluster view.")
        version.add_metric([], cluster.version)
        heartbeats = CounterMetricFamily("speedy_chunkmaster_heartbeats",
                                         "Heartbeats received from chunkservers.")
        heartbeats.add_metric([], getattr(cluster, "heartbeats", 0))
        yield from (groups, writable, version, heartbeats)
        capacity = GaugeMetricFamily("speedy_chunkmaster_capacity_bytes",
                                     "Disk capacity the chunkservers report, all together.")
        capacity.add_metric([], sum(s.capacity or 0 for s in servers))
        used = GaugeMetricFamily("speedy_chunkmaster_used_bytes",
                                 "Bytes the chunkservers' volumes hold, all together.")
        used.add_metric([], sum(s.used or 0 for s in servers))
        free = GaugeMetricFamily("speedy_chunkmaster_free_bytes",
                                 "Bytes the chunkservers can still take, all together.")
        free.add_metric([], sum(s.free or 0 for s in servers))
        yield from (capacity, used, free)
        if self._repairs is None:
            return
        status = self._repairs.status()
        for name, value in sorted(status["counters"].items()):
            family = CounterMetricFamily(
                "speedy_chunkmaster_repair_" + ("copied_bytes" if name == "bytes" else name),
                f"Repairs: {name.replace('_', ' ')}.")
            family.add_metric([], value)
            yield family
        for name, documentation, value in [
                ("repair_queued", "Bad replicas waiting for repair (at the last look).",
                 status["queued"] or 0),
                ("repairing", "Replicas being repaired now.", status["repairing"]),
                ("rebuilds", "Servers being rebuilt.", len(status["rebuilds"]))]:
            family = GaugeMetricFamily("speedy_chunkmaster_" + name, documentation)
            family.add_metric([], value)
            yield family


#: replication counters of the imageserver -> help.
_IMAGESERVER_COUNTERS = {
    "chunks_written": "Chunks stored on every replica of their group.",
    "chunks_cut_through": "Chunks sent on to their replicas while they arrived.",
    "chain_puts": "Chunks sent along a chain of their group's members (--replication chain).",
    "chunk_write_retries": "Chunk writes retried on another group.",
    "chunk_writes_failed": "Chunk writes that failed on every try.",
    "groups_avoided": "Groups a chunk write avoided after a failure.",
    "garbage_recorded": "Chunks recorded as garbage.",
    "read_failovers": "Chunk reads that failed over to another replica.",
    "bad_replicas": "Replicas found bad (checksum mismatch, missing) and reported.",
    "reads_failed": "Chunk reads that failed on every replica.",
    "reads_spliced": "Chunk reads spliced to the client without copying.",
    "reads_copied": "Chunk reads copied through Python.",
}


class ImageserverCollector:
    """
    An imageserver's replication counters, file ids at hand and cluster view.

    @param storage: the L{speedy.imageserver.replication.ReplicatedStorage}.
    @param file_ids: its L{speedy.imageserver.fileids.FileIdRange}, or None.
    @param timings: its chunk client's L{speedy.wire.timings.RequestTimings},
        or None: request durations and errors per chunkserver.
    """

    def __init__(self, storage, file_ids=None, timings=None):
        self._storage = storage
        self._file_ids = file_ids
        self._timings = timings

    def collect(self):
        counters = self._storage.counters
        for name in sorted(set(_IMAGESERVER_COUNTERS) | set(counters)):
            family = CounterMetricFamily(
                "speedy_imageserver_" + name,
                _IMAGESERVER_COUNTERS.get(name, f"Replication: {name.replace('_', ' ')}."))
            family.add_metric([], counters.get(name, 0))
            yield family
        if self._file_ids is not None:
            left = GaugeMetricFamily("speedy_imageserver_file_ids_available",
                                     "File ids held from the chunkmaster and not yet used.")
            left.add_metric([], self._file_ids.available)
            yield left
        view = self._storage.view.current
        known = GaugeMetricFamily("speedy_imageserver_view_version",
                                  "Version of the cluster view at hand (0: none yet).")
        known.add_metric([], 0 if view is None else view.version)
        writable = GaugeMetricFamily("speedy_imageserver_groups_writable",
                                     "Writable replica groups in the cluster view at hand.")
        writable.add_metric([], 0 if view is None else len(view.writable()))
        yield from (known, writable)
        if self._timings is not None:
            yield from _chunk_request_families(self._timings)


def _chunk_request_families(timings):
    """
    The families of a L{speedy.wire.timings.RequestTimings}: labelled by
    chunkserver address (the cluster's members: bounded), operation and,
    for errors, the error's class.
    """
    durations = HistogramMetricFamily(
        "speedy_imageserver_chunk_request_duration_seconds",
        "Time chunkservers took to answer this imageserver's requests (queueing, "
        "connecting and the transfer included), by chunkserver and operation.",
        labels=["server", "operation"])
    for (address, operation), buckets in sorted(timings.durations.items()):
        durations.add_metric([address, operation], buckets.cumulative(), buckets.sum)
    failed = CounterMetricFamily(
        "speedy_imageserver_chunk_request_errors",
        "Requests to chunkservers that failed, by chunkserver, operation and error.",
        labels=["server", "operation", "error"])
    for (address, operation, error), count in sorted(timings.errors.items()):
        failed.add_metric([address, operation, error], count)
    yield durations
    yield failed


#: the garbage collector's totals -> (metric name, help).
_GC_TOTALS = {
    "runs": ("speedy_chunkmaster_gc_runs", "Garbage collection rounds finished."),
    "chunks_deleted": ("speedy_chunkmaster_gc_deleted_chunks",
                       "Garbage chunks deleted from every member of their group."),
    "bytes_deleted": ("speedy_chunkmaster_gc_deleted_bytes",
                      "Bytes of the garbage chunks deleted (one replica's worth)."),
    "blobs_deleted": ("speedy_chunkmaster_gc_deleted_blobs",
                      "Blobs no manifest referenced, deleted by the mark and sweep."),
    "manifests_deleted": ("speedy_chunkmaster_gc_deleted_manifests",
                          "Manifests deleted by the mark and sweep's policies."),
}


class CollectorMetrics:
    """
    The garbage collector's progress: its totals since start, the round in
    progress (chunks due and done) and the last round's duration.

    @param collector: the L{speedy.chunkmaster.collector.ChunkCollector}.
    """

    def __init__(self, collector):
        self._collector = collector

    def collect(self):
        collector = self._collector
        for key, (name, documentation) in _GC_TOTALS.items():
            family = CounterMetricFamily(name, documentation)
            family.add_metric([], collector.totals.get(key, 0))
            yield family
        current, last = collector.current, collector.last
        running = GaugeMetricFamily("speedy_chunkmaster_gc_running",
                                    "1 while a garbage collection round runs.")
        running.add_metric([], 0 if current is None else 1)
        due = GaugeMetricFamily("speedy_chunkmaster_gc_round_due_chunks",
                                "Chunks past their grace the running round works through.")
        due.add_metric([], 0 if current is None else current.chunks_due)
        done = GaugeMetricFamily("speedy_chunkmaster_gc_round_deleted_chunks",
                                 "Chunks the running round deleted so far.")
        done.add_metric([], 0 if current is None else current.chunks_deleted)
        yield from (running, due, done)
        if last is not None and last.duration is not None:
            duration = GaugeMetricFamily("speedy_chunkmaster_gc_last_duration_seconds",
                                         "Duration of the last finished round.")
            duration.add_metric([], last.duration)
            waiting = GaugeMetricFamily(
                "speedy_chunkmaster_gc_waiting_chunks",
                "Garbage chunks still inside their grace at the last round.")
            waiting.add_metric([], last.chunks_waiting)
            kept = GaugeMetricFamily(
                "speedy_chunkmaster_gc_kept_chunks",
                "Due chunks some member did not delete at the last round (retried).")
            kept.add_metric([], last.chunks_kept)
            yield from (duration, waiting, kept)


class TransferMetrics:
    """
    The transfer service's progress: chunks and bytes moved, old copies
    deleted and moves failed (a rate over C{moved_bytes} is the transfer
    rate; C{speedy-admin transfers} shows each transfer's own and its ETA).

    @param transfers: the L{speedy.chunkmaster.transfer.TransferService}.
    """

    _COUNTERS = {
        "moved": ("speedy_chunkmaster_transfer_moved_chunks", "Chunks moved to another group."),
        "bytes": ("speedy_chunkmaster_transfer_moved_bytes", "Bytes moved to another group."),
        "deleted": ("speedy_chunkmaster_transfer_deleted_chunks",
                    "Old copies of moved chunks deleted."),
        "failed": ("speedy_chunkmaster_transfer_failed_moves", "Chunk moves that failed."),
    }

    def __init__(self, transfers):
        self._transfers = transfers

    def collect(self):
        counters = self._transfers.counters
        for key, (name, documentation) in self._COUNTERS.items():
            family = CounterMetricFamily(name, documentation)
            family.add_metric([], counters.get(key, 0))
            yield family
