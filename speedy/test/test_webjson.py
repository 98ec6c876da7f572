import json
from io import BytesIO

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from speedy import errors
from speedy.web.json import (
    HTTPError, answer_json_error, json_answer, json_error, read_json, status_for)
from speedy.web.rest import MethodNotAllowed, NoRoute, write_answer


def request_with(body, method=b"POST"):
    request = DummyRequest([b""])
    request.method = method
    request.content = BytesIO(body)
    return request


class JSONTests(SynchronousTestCase):
    def test_write_json_sets_status_type_and_length(self):
        request = request_with(b"")
        write_answer(request, json_answer(201, {"b": 1, "a": [1, 2]}))
        payload = b"".join(request.written)
        self.assertEqual(request.responseCode, 201)
        self.assertEqual(json.loads(payload), {"a": [1, 2], "b": 1})
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-length"), [str(len(payload)).encode()])

    def test_head_gets_headers_but_no_body(self):
        request = request_with(b"", method=b"HEAD")
        write_answer(request, json_answer(200, {"ok": True}))
        self.assertEqual(request.written, [])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-length"), [b"11"])

    def test_error_body(self):
        request = request_with(b"")
        write_answer(request, answer_json_error(HTTPError(404, "NOT_FOUND", "no such thing"), request))
        self.assertEqual(request.responseCode, 404)
        self.assertEqual(json.loads(b"".join(request.written)),
                         {"error": {"code": "NOT_FOUND", "message": "no such thing"}})

    def test_error_shape(self):
        """Routing errors, Speedy errors and bugs each get their status and
        code; a bug's message says nothing of its insides."""
        for error, status, code, message in [
                (NoRoute("/x"), 404, "NOT_FOUND", "no such endpoint"),
                (MethodNotAllowed("PUT", ["GET", "HEAD"]), 405, "METHOD_NOT_ALLOWED",
                 "PUT is not allowed here (only GET, HEAD)"),
                (errors.NoWritableGroup("all full"), 503, "NO_WRITABLE_GROUP", "all full"),
                (HTTPError(401, "UNAUTHORIZED", "who?", {b"www-authenticate": b"Bearer"}), 401,
                 "UNAUTHORIZED", "who?"),
                (KeyError("secret detail"), 500, "INTERNAL", "internal error")]:
            answer = answer_json_error(error, request_with(b""))
            self.assertEqual((answer.status, json.loads(answer.body)),
                             (status, {"error": {"code": code, "message": message}}), error)
            self.assertEqual(answer.content_type, b"application/json")
        self.assertEqual(json_error(MethodNotAllowed("PUT", ["GET", "HEAD"])).headers,
                         {b"allow": b"GET, HEAD"})

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
