"""
The imageserver: the stateless HTTP front end.  Its storage path cuts
streams into chunks and writes each to every member of one replica group
(L{replication}), reads them back with failover and read-ahead
(L{reader}), choosing groups (L{placement}) from the chunkmaster's view
(L{clusterview}, L{master}) with prefetched file ids (L{fileids}); it
serves the file and chunk APIs (L{fileapi}, L{chunkapi}, L{root}) and, at
C{/v2}, the registry; L{tap} is its twistd plugin.
"""
