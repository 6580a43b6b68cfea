"""The ASGI edge: how gunicorn serves the app in production, on its asyncio worker.

Under load the request path was what limited the service: gunicorn's threaded worker
spent more CPU per delivery on threads and HTTP than the delivery itself needed, and each
thread stored its event with an insert of its own. Here one event loop per worker reads,
verifies and decodes every delivery (delivery.read), the loop's store puts the deliveries
that meet into one insert (loop_store.py), and the answer is sent (delivery.stored): the
same decisions as the WSGI path, with about a third less CPU per delivery in the worker
and fewer commits in PostgreSQL (README, Benchmark).

POST /webhook is answered here. With WEBHOOK_APPLY=inline the event is applied on a
thread of the edge's pool (the handlers block on locks). Everything else (health,
readiness, metrics, 404 and 405) goes to the Flask app on the same pool (wsgi_bridge.py).

gunicorn builds the Flask app with create_app(); its config (gunicorn_config.py) puts this
edge in front of it in each worker, so the Procfile's line is the same for both workers.
`webhook.web.asgi:create_app()` builds the edge directly, for other ASGI servers.
"""

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from flask import Flask

from webhook.core.errors import DatabaseUnavailable
from webhook.core.logs import log_unexpected
from webhook.web import app as flask_app
from webhook.web import delivery, metrics, wsgi_bridge
from webhook.web.loop_store import LoopStore
from webhook.web.service import Service

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

log = logging.getLogger(__name__)


def create_app(config: Mapping[str, str] | None = None) -> "AsgiEdge":
    """The edge in front of a new Flask app (see app.create_app for `config`)."""
    return AsgiEdge(flask_app.create_app(config))


class AsgiEdge:
    """An ASGI application: POST /webhook on the loop, the rest through Flask."""

    def __init__(self, app: Flask) -> None:
        self.flask = app
        # Where gunicorn's hooks and the tests find the service, as on the Flask app.
        self.extensions = app.extensions
        self.service: Service = app.extensions["webhook"]
        settings = self.service.settings
        self.store = LoopStore(
            self.service.database,
            settings.store_group_size,
            timeout_seconds=settings.store_timeout_ms / 1000,
        )
        self._threads = ThreadPoolExecutor(settings.web_threads, thread_name_prefix="web")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:  # websocket: nothing here speaks it
            await send({"type": "websocket.close", "code": 1000})

    def close(self) -> None:
        """Stop the drain (it commits the batch in hand), then the edge's threads once the
        stores and requests under way have finished. The database pool stays open."""
        self.service.drain.stop()
        self.store.close()
        self._threads.shutdown(wait=True)

    # -- HTTP -----------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = _origin_path(scope["path"])
        if path != scope["path"]:
            scope = {**scope, "path": path}
        declared = _content_length(scope["headers"])
        if path != "/webhook" or scope["method"] != "POST":
            await self._to_flask(scope, receive, send, declared)
            return
        if declared is not None and declared > flask_app.DISCARD_LIMIT_BYTES:
            await _send_answer(send, _too_large())  # the server closes the connection
            return
        try:
            body, more = await _read_body(receive, flask_app.MAX_BODY_BYTES)
        except _BodyMissing:
            await _send_answer(send, _body_missing())
            return
        if more:
            await _send_answer(send, _too_large())
            return
        try:
            answer = await self._deliver(body, _header(scope["headers"], b"stripe-signature"))
        except Exception:
            log_unexpected(log, "unexpected error")
            answer = delivery.error(500, "internal error")
        await _send_answer(send, answer)

    async def _to_flask(
        self, scope: Scope, receive: Receive, send: Send, declared: int | None
    ) -> None:
        """Any other request, answered by Flask on a thread. Its routes read no body; one
        that fits the limit is handed over all the same, and a larger one is left to
        Flask's own limit (413 if a route reads it)."""
        body = b""
        if declared is None or declared <= flask_app.MAX_BODY_BYTES:
            try:
                body, more = await _read_body(receive, flask_app.MAX_BODY_BYTES)
            except _BodyMissing:
                await _send_answer(send, _body_missing())
                return
            if more:
                declared = max(declared or 0, flask_app.MAX_BODY_BYTES + 1)
        length = len(body) if declared is None else declared
        await wsgi_bridge.call(self.flask, scope, body, length, send, self._threads)

    async def _deliver(self, body: bytes, signature: str | None) -> delivery.Answer:
        """delivery.handle's steps, with the store on the loop and inline work on a thread."""
        service = self.service
        checked = delivery.read(service, body, signature)
        if isinstance(checked, delivery.Answer):
            return checked
        try:
            if service.settings.apply_mode == "inline":
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(
                    self._threads, delivery.apply_inline, service, checked
                )
            started = time.perf_counter()
            row = await self.store.receive(checked)
            return delivery.stored(service, checked, row, started)
        except DatabaseUnavailable as exc:
            return delivery.database_unavailable(exc)
        finally:
            metrics.POOL_IN_USE.set(service.database.in_use())

    # -- lifespan -------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """Start the worker's drain with the server, and stop it (batch committed) with it."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.service.settings.web_drain:
                    self.service.drain.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.get_running_loop().run_in_executor(None, self.close)
                await send({"type": "lifespan.shutdown.complete"})
                return


def _too_large() -> delivery.Answer:
    return delivery.error(413, f"body larger than {flask_app.MAX_BODY_BYTES} bytes")


def _body_missing() -> delivery.Answer:
    return delivery.error(400, "the request body did not arrive")


# The longest a request's body may take to arrive. gunicorn's timeout only counts silence,
# so a client sending a byte now and then held its connection (and the memory of what it
# sent) for as long as it liked; Stripe sends a whole delivery at once.
BODY_SECONDS = 30.0


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The request body up to `limit` bytes, and whether there was more. More is read on,
    up to DISCARD_LIMIT_BYTES, and thrown away, so that a client still sending receives the
    answer rather than a reset connection.

    Raises _BodyMissing when the client went away, stopped sending for gunicorn's timeout,
    or took longer than BODY_SECONDS in all, before the body was complete.
    """
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_SECONDS):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _BodyMissing
                chunk = message.get("body", b"")
                size += len(chunk)
                if size <= limit:
                    chunks.append(chunk)
                if size > flask_app.DISCARD_LIMIT_BYTES or not message.get("more_body", False):
                    return b"".join(chunks), size > limit
    except TimeoutError:
        raise _BodyMissing from None


class _BodyMissing(Exception):
    """The request's body did not arrive whole: the client left or stopped sending."""


def _origin_path(target: str) -> str:
    """The path of a request target; an absolute-form one (`http://host/webhook`, which
    HTTP/1.1 servers must accept and gunicorn passes on whole) is cut to its path."""
    if target.startswith("/"):
        return target
    return urlsplit(target).path or "/"


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    raw = _header(headers, b"content-length")
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    """A request header's value (repeated ones joined with commas, as in WSGI)."""
    values = [value.decode("latin-1") for key, value in headers if key == name]
    return ",".join(values) if values else None


async def _send_answer(send: Send, answer: delivery.Answer) -> None:
    body = json.dumps(answer.body, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *[(name.lower().encode(), value.encode()) for name, value in answer.headers.items()],
    ]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
