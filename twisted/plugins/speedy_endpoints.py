"""
The C{reuseport:} server endpoint string (L{speedy.endpoints}): a TCP port
several processes listen on at once, e.g. the imageservers of one registry.
"""

from speedy.endpoints import ReusePortParser

reusePortEndpointParser = ReusePortParser()
