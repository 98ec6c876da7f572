# -*- test-case-name: speedy.test.test_webbody -*-
"""Small request bodies for Speedy's own HTTP clients."""

from twisted.internet.defer import succeed
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer


@implementer(IBodyProducer)
class BytesBody:
    """
    A body of a few bytes, written at once.  Pass it as
    C{HTTPClient(agent, data_to_body_producer=BytesBody)}: treq's default
    producer schedules on the global reactor's cooperator, which a client
    built on an injected reactor must not touch.
    """

    def __init__(self, data):
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass
