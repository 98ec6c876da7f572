import json
from io import BytesIO

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from speedy import errors
from speedy.web.json import read_json, status_for, write_error, write_json


def request_with(body, method=b"POST"):
    request = DummyRequest([b""])
    request.method = method
    request.content = BytesIO(body)
    return request


class JSONTests(SynchronousTestCase):
    def test_write_json_sets_status_type_and_length(self):
        request = request_with(b"")
        payload = write_json(request, 201, {"b": 1, "a": [1, 2]})
        self.assertEqual(request.responseCode, 201)
        self.assertEqual(json.loads(payload), {"a": [1, 2], "b": 1})
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-length"), [str(len(payload)).encode()])

    def test_head_gets_headers_but_no_body(self):
        request = request_with(b"", method=b"HEAD")
        self.assertEqual(write_json(request, 200, {"ok": True}), b"")
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-length"), [b"11"])

    def test_error_body(self):
        request = request_with(b"")
        payload = write_error(request, 404, "NOT_FOUND", "no such thing")
        self.assertEqual(request.responseCode, 404)
        self.assertEqual(json.loads(payload), {"error": {"code": "NOT_FOUND", "message": "no such thing"}})

    def test_read_json_refuses_malformed_bodies(self):
        for body in [b"{", b"[1,2]", b"\xff\xfe", b'"str"']:
            self.assertRaises(errors.BadRequest, read_json, request_with(body))
        self.assertRaises(errors.TooLarge, read_json, request_with(b'{"a":"' + b"x" * 100 + b'"}'), max_bytes=50)
        self.assertEqual(read_json(request_with(b'{"a": 1}')), {"a": 1})

    def test_status_for_errors(self):
        self.assertEqual(status_for(errors.ChunkNotFound()), (404, "CHUNK_NOT_FOUND"))
        self.assertEqual(status_for(errors.NoWritableGroup()), (503, "NO_WRITABLE_GROUP"))
        self.assertEqual(status_for(errors.BadRequest()), (400, "BAD_REQUEST"))
        self.assertEqual(status_for(ValueError()), (500, "INTERNAL"))

    def test_error_code_attribute_names_a_subclass(self):
        class FileNotFound(errors.ChunkNotFound):
            error_code = "FILE_NOT_FOUND"

        self.assertEqual(status_for(FileNotFound()), (404, "FILE_NOT_FOUND"))
