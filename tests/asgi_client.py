"""An in-process client for the ASGI edge, shaped like Flask's test client.

Flask's test client calls the WSGI app the way a WSGI server would; this calls the ASGI
edge (webhook/web/asgi.py) the way gunicorn's asyncio worker does: an HTTP scope, the body
as `http.request` messages (in several when asked, as a chunked upload arrives), and the
`http.response.*` messages it sends back. The edge runs on an event loop of its own in a
background thread, as in a worker, so concurrent requests from several test threads meet
in its store. What gunicorn itself does (parsing HTTP off the socket) is covered by the
tests that run the real server (tests/web/test_serving.py, tests/faults/).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Mapping
from typing import Any

from webhook.web.asgi import AsgiEdge

TIMEOUT_SECONDS = 30.0


class AsgiResponse:
    """What the edge answered: the parts of werkzeug's TestResponse the tests read."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], data: bytes) -> None:
        self.status_code = status
        self.headers = _Headers(headers)
        self.data = data

    def get_json(self) -> Any:
        return json.loads(self.data) if self.data else None


class _Headers:
    def __init__(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self._pairs = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in pairs]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def get(self, name: str, default: str | None = None) -> str | None:
        for key, value in self._pairs:
            if key == name.lower():
                return value
        return default


class AsgiClient:
    """Requests to an AsgiEdge; `application` is the edge (its `extensions` hold the service)."""

    def __init__(self, edge: AsgiEdge) -> None:
        self.application = edge
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def open(
        self,
        method: str,
        path: str,
        data: bytes = b"",
        headers: Mapping[str, str] | None = None,
        chunks: int = 1,
    ) -> AsgiResponse:
        """One request; `chunks` > 1 sends the body in that many messages, without a
        Content-Length (as a chunked upload reaches the application)."""
        call = self._request(method.upper(), path, data, dict(headers or {}), chunks)
        return asyncio.run_coroutine_threadsafe(call, self._loop).result(TIMEOUT_SECONDS)

    def post(self, path: str, data: bytes = b"", headers: Mapping[str, str] | None = None):
        return self.open("POST", path, data, headers)

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> AsgiResponse:
        return self.open("GET", path, headers=headers)

    def put(self, path: str) -> AsgiResponse:
        return self.open("PUT", path)

    def delete(self, path: str) -> AsgiResponse:
        return self.open("DELETE", path)

    def patch(self, path: str) -> AsgiResponse:
        return self.open("PATCH", path)

    def close(self) -> None:
        """Stop the loop and the edge's threads (the database is the test's to close)."""
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(TIMEOUT_SECONDS)
        self._loop.close()
        self.application.close()

    async def _request(
        self, method: str, path: str, body: bytes, headers: dict[str, str], chunks: int
    ) -> AsgiResponse:
        raw_headers = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
        ]
        if chunks == 1:
            raw_headers.append((b"content-length", str(len(body)).encode()))
        else:
            raw_headers.append((b"transfer-encoding", b"chunked"))
        # As gunicorn's asyncio worker hands it over: an absolute-form target stays whole.
        path_only, _, query = path.partition("?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path_only,
            "raw_path": path_only.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": raw_headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
        }
        size = max(1, -(-len(body) // chunks))
        parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
        incoming: list[dict[str, Any]] = [
            {"type": "http.request", "body": part, "more_body": n < len(parts) - 1}
            for n, part in enumerate(parts)
        ]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if incoming:
                return incoming.pop(0)
            await asyncio.Event().wait()  # nothing more to read: wait as a server would
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.application(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return AsgiResponse(start["status"], start.get("headers", []), data)
