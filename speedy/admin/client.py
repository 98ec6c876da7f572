# -*- test-case-name: speedy.test.test_admin -*-
"""
The admin API's client: JSON requests to one chunkmaster with the admin
token, and its errors turned into L{AdminError}s an operator can read.
"""

import json

import treq

from speedy.admin.target import Target


class AdminError(Exception):
    """
    The chunkmaster refused or failed a call, or could not be reached.

    @ivar status: the HTTP status, or None when no answer came.
    @ivar code: the error code of the JSON body (C{NOT_FOUND}, ...), or None.
    """

    def __init__(self, message, status=None, code=None):
        super().__init__(message)
        self.status = status
        self.code = code


class AdminClient:
    """
    Calls on one chunkmaster's API.

    @ivar target: the L{Target} (master URL and admin token).
    """

    def __init__(self, http, target: Target, timeout=30.0):
        """
        @param http: a L{treq.client.HTTPClient} (or L{treq.testing.StubTreq}).
        @param timeout: seconds each call may take.
        """
        self._http = http
        self.target = target
        self._timeout = timeout

    async def call(self, method, path, body=None):
        """
        @param path: the path under the master URL, e.g. C{/v1/admin/cluster}.
        @param body: a JSON-ready value to send, or None.
        @return: the decoded JSON answer, or None for an empty one.
        @raise AdminError: the call failed; its message says why.
        """
        headers = {b"authorization": [b"Bearer " + self.target.token.encode("utf-8")]}
        data = None
        if body is not None:
            headers[b"content-type"] = [b"application/json"]
            data = json.dumps(body).encode("utf-8")
        url = self.target.master.rstrip("/") + path
        try:
            response = await self._http.request(method, url, headers=headers, data=data,
                                                timeout=self._timeout)
            raw = await treq.content(response)
        except Exception as e:
            raise AdminError(f"{method} {url}: no answer ({e.__class__.__name__}: {e})")
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = None
            if response.code < 400:
                raise AdminError(f"{method} {url}: answered {response.code} with a body that "
                                 "is not JSON", response.code)
        if response.code >= 400:
            error = answer.get("error", {}) if isinstance(answer, dict) else {}
            code = error.get("code") if isinstance(error, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            raise AdminError(f"{method} {path}: {response.code} {code or ''}: "
                             f"{message or raw[:200].decode('utf-8', 'replace')}".replace(" : ", ": "),
                             response.code, code)
        return answer

    def get(self, path):
        return self.call("GET", path)

    async def probe(self, url, timeout):
        """
        GET C{url}, anywhere (a member's C{/healthz} or C{/readyz}),
        without the admin token: it is for the chunkmaster only.

        @return: C{(status, decoded JSON answer or None)}.
        @raise AdminError: no answer came within C{timeout} seconds.
        """
        try:
            response = await self._http.request("GET", url, timeout=timeout)
            raw = await treq.content(response)
        except Exception as e:
            raise AdminError(f"no answer ({e.__class__.__name__}: {e})".replace(": )", ")"))
        try:
            return response.code, json.loads(raw)
        except ValueError:
            return response.code, None

    def post(self, path, body=None):
        return self.call("POST", path, {} if body is None else body)

    def put(self, path, body):
        return self.call("PUT", path, body)

    def delete(self, path):
        return self.call("DELETE", path)
