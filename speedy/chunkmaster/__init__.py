"""
The chunkmaster: which chunkservers exist, which replica groups take
writes, and file-id ranges.  It is never on the data path.

  - L{speedy.chunkmaster.states}: the server state machine's table;
  - L{speedy.chunkmaster.cluster}: the cluster model, its versioned view
    and long-poll waiters;
  - L{speedy.chunkmaster.messages}: the JSON bodies it accepts, validated;
  - L{speedy.chunkmaster.api}: the REST API (C{docs/chunkmaster-api.yaml});
  - L{speedy.chunkmaster.service}, L{speedy.chunkmaster.tap}:
    C{twistd speedy-chunkmaster} (its C{--config} file is read by
    L{speedy.config}).

The chunkserver's side of the heartbeat is L{speedy.chunkserver.heartbeat}.
"""
