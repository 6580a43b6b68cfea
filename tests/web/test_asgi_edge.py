"""What only the ASGI edge does: bodies that arrive in pieces, clients that leave, the
lifespan that starts and stops the drain, Flask's routes behind it, and the gunicorn hook
that puts it in front of the Flask app. The HTTP contract both paths share is tested on
both in test_webhook_http.py.
"""

import asyncio
import gc
from types import SimpleNamespace
from typing import Any

import pytest
from asgi_client import AsgiClient
from stripe_events import Delivery, sign
from webhook_support import SECRET, build_app

from webhook.web import asgi, delivery, gunicorn_config
from webhook.web.app import DISCARD_LIMIT_BYTES
from webhook.web.asgi import AsgiEdge
from webhook.web.wsgi_bridge import wsgi_environ


@pytest.fixture
def edge(app) -> AsgiEdge:
    return AsgiEdge(app)


@pytest.fixture
def client(edge):
    client = AsgiClient(edge)
    yield client
    client.close()


def stored_ids(conn) -> list[str]:
    return [row[0] for row in conn.execute("select id from webhook_private.events order by id")]


def signed(delivery: Delivery) -> dict[str, str]:
    return {"Stripe-Signature": sign(delivery.body, SECRET)}


def test_a_body_sent_in_pieces_without_a_length_is_stored(conn, client, factory) -> None:
    delivery = factory.other()
    response = client.open("POST", "/webhook", delivery.body, signed(delivery), chunks=5)
    assert response.status_code == 200
    assert response.get_json()["status"] == "received"
    assert stored_ids(conn) == [delivery.id]
    assert conn.execute("select payload::text from webhook_private.events").fetchone() == (
        delivery.body.decode(),
    )  # stored as it was signed, byte for byte


def test_a_body_in_pieces_over_one_mebibyte_gets_413(conn, client, factory) -> None:
    event = factory.other().event
    event["data"]["object"]["padding"] = "x" * (1024 * 1024)
    big = Delivery.from_event(event)
    response = client.open("POST", "/webhook", big.body, signed(big), chunks=40)
    assert response.status_code == 413
    assert "larger" in response.get_json()["error"]
    assert stored_ids(conn) == []


def test_a_declared_length_past_the_discard_limit_is_refused_unread(edge, conn) -> None:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = request_scope(
        "POST", "/webhook", [(b"content-length", b"%d" % (DISCARD_LIMIT_BYTES + 1))]
    )
    asyncio.run(edge(scope, receive, send))
    assert sent[0]["status"] == 413
    assert stored_ids(conn) == []


def delivered_in_part(edge, delivery: Delivery, receive) -> list[dict[str, Any]]:
    """What the edge sends for a signed POST /webhook whose body comes from `receive`."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"stripe-signature", sign(delivery.body, SECRET).encode())]
    asyncio.run(edge(request_scope("POST", "/webhook", headers), receive, send))
    return sent


BODY_MISSING = b'{"error":"the request body did not arrive"}'


def test_a_body_that_never_arrives_whole_gets_400_and_nothing_is_stored(
    edge, conn, factory
) -> None:
    """The client left, or stopped sending for gunicorn's timeout (both reach the app as
    http.disconnect): a JSON 400 (gunicorn drops it if nobody is left to read it)."""
    delivery = factory.other()
    messages = [
        {"type": "http.request", "body": delivery.body[:100], "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    sent = delivered_in_part(edge, delivery, receive)
    assert (sent[0]["status"], sent[1]["body"]) == (400, BODY_MISSING)
    assert stored_ids(conn) == []


def test_a_body_that_trickles_in_past_its_deadline_is_refused(
    edge, conn, factory, monkeypatch
) -> None:
    """A byte now and then kept gunicorn's silence timeout from firing, for ever."""
    monkeypatch.setattr(asgi, "BODY_SECONDS", 0.3)
    delivery = factory.other()
    position = 0

    async def receive() -> dict[str, Any]:
        nonlocal position
        await asyncio.sleep(0.05)
        position += 1
        return {"type": "http.request", "body": delivery.body[position - 1 : position],
                "more_body": True}  # fmt: skip

    sent = delivered_in_part(edge, delivery, receive)
    assert (sent[0]["status"], sent[1]["body"]) == (400, BODY_MISSING)
    assert 4 <= position <= 12
    assert stored_ids(conn) == []


def test_an_absolute_form_target_is_served_as_its_path(conn, client, factory) -> None:
    """`POST http://host/webhook HTTP/1.1` is valid HTTP/1.1; gunicorn's asyncio worker
    passes the whole target on as the path."""
    delivery = factory.other()
    response = client.post("http://hooks.example.test/webhook", delivery.body, signed(delivery))
    assert response.status_code == 200
    assert stored_ids(conn) == [delivery.id]
    assert client.get("http://hooks.example.test/healthz").get_json() == {"status": "ok"}


def test_other_routes_answer_as_flask_does_whatever_body_they_carry(client) -> None:
    big = b"x" * (2 * 1024 * 1024)
    assert client.open("GET", "/healthz", big).status_code == 200
    assert client.open("POST", "/metrics", big).status_code == 405
    assert client.open("POST", "/nowhere", big, chunks=8).status_code == 404


def test_flask_gets_a_read_body_as_a_plain_one() -> None:
    scope = request_scope(
        "GET", "/caf\u00e9", [(b"transfer-encoding", b"chunked"), (b"x-a", b"1"), (b"x-a", b"2")]
    )
    environ = wsgi_environ({**scope, "query_string": b"q=%20"}, b"abc", 3)
    assert environ["CONTENT_LENGTH"] == "3" and environ["wsgi.input"].read() == b"abc"
    assert "HTTP_TRANSFER_ENCODING" not in environ
    assert environ["wsgi.input_terminated"] is True
    assert environ["HTTP_X_A"] == "1,2"
    assert environ["PATH_INFO"] == "/caf\u00e9".encode().decode("latin-1")
    assert environ["QUERY_STRING"] == "q=%20"


def test_an_unexpected_error_gets_500_without_a_traceback(client, factory, monkeypatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(delivery, "read", broken)
    response = client.post("/webhook", factory.other().body, {"Stripe-Signature": "x"})
    assert (response.status_code, response.get_json()) == (500, {"error": "internal error"})


def test_flask_routes_answer_behind_the_edge(client) -> None:
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert b"webhook_inbox_events" in metrics.data
    missing = client.get("/caf\u00e9?x=1")
    assert (missing.status_code, missing.get_json()) == (404, {"error": "not found"})


def test_a_websocket_is_closed(edge) -> None:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(edge({"type": "websocket", "path": "/webhook", "headers": []}, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1000}]


@pytest.mark.parametrize("web_drain", ["on", "off"])
def test_the_lifespan_starts_the_drain_and_stops_it(db_url, web_drain) -> None:
    app = build_app(db_url, WEB_DRAIN=web_drain)
    edge = AsgiEdge(app)
    service = app.extensions["webhook"]
    running: list[bool] = []
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        if len(messages) == 1:  # between startup and shutdown
            running.append(service.drain.running)
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    try:
        asyncio.run(edge({"type": "lifespan"}, receive, send))
    finally:
        service.close()
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert running == [web_drain == "on"]
    assert not service.drain.running


def test_the_gunicorn_hook_puts_the_edge_in_front_of_the_flask_app(app) -> None:
    asyncio_worker = SimpleNamespace(asgi=app)
    threaded_worker = SimpleNamespace(wsgi=app)
    try:
        gunicorn_config.post_worker_init(asyncio_worker)
        gunicorn_config.post_worker_init(threaded_worker)
    finally:
        gc.unfreeze()  # the hook freezes what the worker loaded; this is the test process
    assert isinstance(asyncio_worker.asgi, AsgiEdge)
    assert asyncio_worker.asgi.flask is app
    assert threaded_worker.wsgi is app  # gthread serves the Flask app itself
    asyncio_worker.asgi.close()


def test_the_edge_is_also_an_app_factory_for_other_asgi_servers(db_url) -> None:
    edge = asgi.create_app({"STRIPE_WEBHOOK_SECRET": SECRET, "DATABASE_URL": db_url,
                            "WEB_DRAIN": "off", "WEB_THREADS": "3"})  # fmt: skip
    client = AsgiClient(edge)
    try:
        assert client.get("/healthz").get_json() == {"status": "ok"}
        assert edge.service.settings.web_threads == 3
    finally:
        client.close()
        edge.service.close()


def request_scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": headers,
        "http_version": "1.1",
        "scheme": "http",
    }
