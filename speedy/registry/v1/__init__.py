"""
Docker Registry V1, as docker-registry 0.9 served it to Docker 1.x and as
the original Speedy's driver stored it: images (JSON, layer, checksum,
ancestry), repositories (tags, the image index) and search, beside the V2
registry on every imageserver.  The API is L{speedy.registry.v1.api}; the
endpoints and what is not supported are in C{docs/v1-api.md}.
"""
