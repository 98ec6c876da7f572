# -*- test-case-name: speedy.test.test_imageserver_replication -*-
"""
Which replica group takes the next chunk, and which replica of a group
reads of a chunk go to first.
"""

from hashlib import blake2b

from speedy import errors


def choose_group(view, size, pending, rng, exclude=()):
    """
    Pick the group for a chunk of C{size} bytes: among the groups that can
    take it (every member RW with room, see L{GroupView.can_take}) and are
    not in C{exclude}, keep the C{n // 10 + 3} with the most free space,
    then those among them with the fewest writes in flight from here
    (C{pending[group_id]}), and pick one of those at random.

    @param view: a L{ClusterView}, or None when none was ever fetched.
    @param rng: a C{random.Random}.
    @return: the chosen L{GroupView}.
    @raise NoWritableGroup: no group qualifies.
    """
    if view is None:
        raise errors.NoWritableGroup("no cluster view yet: the chunkmaster was never reached")
    candidates = [g for g in view.writable(size) if g.group_id not in exclude]
    if not candidates:
        raise errors.NoWritableGroup(
            f"no writable group has {size} bytes free"
            + (f" (excluding groups {sorted(exclude)})" if exclude else ""))
    candidates.sort(key=lambda g: g.free, reverse=True)
    best = candidates[: len(candidates) // 10 + 3]
    least = min(pending.get(g.group_id, 0) for g in best)
    return rng.choice([g for g in best if pending.get(g.group_id, 0) == least])


def preferred_replica(servers, file_id):
    """
    The replica that keeps chunk C{file_id} in its memory cache and serves
    its reads first, chosen by rendezvous hashing: the server whose hash of
    C{(file_id, server_id)} is highest.  Every imageserver picks the same
    one with no coordination, chunks spread evenly over a group's members,
    and a member leaving moves only the chunks it was preferred for.

    @param servers: the group's L{ServerView}s.
    @return: one of C{servers}, or None when there are none.
    """
    return max(servers, key=lambda s: _score(file_id, s.server_id), default=None)


def _score(file_id, server_id):
    return blake2b(b"%d/%s" % (file_id, str(server_id).encode()), digest_size=8).digest()
