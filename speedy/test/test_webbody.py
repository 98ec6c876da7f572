from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IBodyProducer
from zope.interface.verify import verifyObject

from speedy.web.body import BytesBody


class BytesBodyTests(SynchronousTestCase):
    def test_writes_everything_at_once(self):
        """The whole body goes out in one write, with no cooperator, and the
        announced length is right."""
        body = BytesBody(b'{"count": 3}')
        verifyObject(IBodyProducer, body)
        self.assertEqual(body.length, 12)
        consumer = StringTransport()
        self.assertIsNone(self.successResultOf(body.startProducing(consumer)))
        self.assertEqual(consumer.value(), b'{"count": 3}')
