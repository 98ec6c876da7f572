"""
Fuzzing the chunkserver protocol: random mixes of valid frames, frames with
random headers and plain garbage, cut anywhere and delivered in random
pieces.  The server must answer or close, never raise, and never store a
chunk it did not receive whole.
"""

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from speedy.chunkserver.protocol import ChunkServerFactory
from speedy.test.test_chunkserver_protocol import get_request, parse_frames, put_request
from speedy.testing import MemoryChunkStore
from speedy.wire.frames import (
    COMPACT_REQUEST, FILE_ID, FLAG_RESPONSE, OP_COMPACT, OP_DELETE, OP_LIST,
    OP_PING, OP_PUT, OP_STAT, OP_STATUS, Header)

file_ids = st.integers(0, 4)
request_ids = st.integers(0, 2**32 - 1)

valid_puts = st.builds(
    lambda rid, fid, data: ("put", fid, data, put_request(rid, fid, data)),
    request_ids, file_ids, st.binary(max_size=300))
valid_requests = st.one_of(
    st.builds(lambda rid, fid, off, n: get_request(rid, fid, off, n),
              request_ids, file_ids, st.integers(0, 400), st.integers(0, 400)),
    st.builds(lambda rid, fid: get_request(rid, fid), request_ids, file_ids),
    st.builds(lambda rid, op, fid: Header(op, rid, 8).pack() + FILE_ID.pack(fid),
              request_ids, st.sampled_from([OP_STAT, OP_DELETE]), file_ids),
    st.builds(lambda rid, op: Header(op, rid, 0).pack(),
              request_ids, st.sampled_from([OP_PING, OP_STATUS, OP_LIST])),
    st.builds(lambda rid, v: Header(OP_COMPACT, rid, 4).pack() + COMPACT_REQUEST.pack(v),
              request_ids, st.integers(0, 2**32 - 1)),
)
def _random_frame(op, flags, rid, body):
    """
    A frame with any opcode, flags and body.  One that happens to be a
    well-formed PUT (opcode PUT, no flags, a file id and some bytes) may
    store its bytes, so it is classified as a put for the oracle.
    """
    raw = Header(op, rid, len(body), flags).pack() + body
    if op == OP_PUT and flags == 0 and len(body) >= FILE_ID.size:
        (file_id,) = FILE_ID.unpack(body[:FILE_ID.size])
        return ("put", file_id, body[FILE_ID.size:], raw)
    return ("other", None, None, raw)


random_headers = st.builds(
    _random_frame, st.integers(0, 255), st.integers(0, 7), request_ids, st.binary(max_size=40))
garbage = st.binary(min_size=1, max_size=40)

pieces = st.one_of(
    valid_puts,
    valid_requests.map(lambda raw: ("other", None, None, raw)),
    random_headers,
    garbage.map(lambda raw: ("other", None, None, raw)),
)


class FuzzTests(SynchronousTestCase):

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(pieces, max_size=12), st.integers(1, 64), st.data())
    def test_random_input(self, frames, piece_size, data):
        stream = b"".join(raw for _, _, _, raw in frames)
        cut = data.draw(st.integers(0, len(stream)), label="cut")
        stream = stream[:cut]

        store = MemoryChunkStore(capacity=2000)
        factory = ChunkServerFactory(Clock(), store, max_in_flight=4)
        server = factory.buildProtocol(None)
        transport = StringTransport()
        server.makeConnection(transport)
        for i in range(0, len(stream), piece_size):
            server.dataReceived(stream[i:i + piece_size])
            while transport.producer is not None:
                transport.producer.resumeProducing()
        server.connectionLost(Failure(ConnectionError("fuzz over")))

        self.assertEqual(store.open_writes, 0, "a write was left open")
        self.assertEqual(store.pinned, 0, "a read was left pinned")

        # Whatever is stored was a complete PUT that was fully delivered.
        delivered, position = [], 0
        for kind, file_id, chunk, raw in frames:
            position += len(raw)
            if kind == "put" and position <= cut:
                delivered.append((file_id, chunk))
        for file_id in store.file_ids():
            self.assertIn((file_id, store.contents(file_id)), delivered)

        # The answers are whole frames, unless the server cut a bad stream.
        answers, rest = parse_frames(transport.value())
        if not transport.disconnected:
            self.assertEqual(rest, b"")
        for header, body in answers:
            self.assertTrue(header.flags & FLAG_RESPONSE)
