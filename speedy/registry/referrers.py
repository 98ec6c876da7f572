# -*- test-case-name: speedy.test.test_registry_api -*-
"""
The referrers API's answer: an OCI image index listing the manifests whose
C{subject} is a given digest.
"""

import json

from speedy.registry.manifests import OCI_INDEX


def referrers_index(records):
    """
    @param records: the referring L{ManifestRecord}s.
    @return: the UTF-8 JSON image index describing them (C{artifactType}
        and C{annotations} copied from each), empty when there are none.
    """
    manifests = []
    for record in sorted(records, key=lambda r: r.digest):
        descriptor = {
            "mediaType": record.media_type,
            "digest": record.digest,
            "size": len(record.content),
        }
        if record.artifact_type is not None:
            descriptor["artifactType"] = record.artifact_type
        if record.annotations:
            descriptor["annotations"] = record.annotations
        manifests.append(descriptor)
    return json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests},
        separators=(",", ":")).encode("utf-8")
