"""Fixtures for webhook tests: the app on the test's database, and a Stripe stand-in.

`stripe` posts signed deliveries through Flask's test client exactly as Stripe would: the
raw JSON bytes, a real HMAC signature over them, the Stripe-Signature header. The app is in
its default queued mode, so after each delivery the sender runs the app's own drain until
the queue is empty (where a web worker's drain thread would do it moments later): a test
then sees the applied result, through the same path as production.
"""

import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from stripe_events import ENDIVE_API, Delivery, EventFactory
from stripe_standin import StripeStandIn
from werkzeug.test import TestResponse

from webhook.web.app import create_app
from webhook.web.asgi import AsgiEdge

SECRET = "whsec_test_5e3d9a0c7b"


def build_app(db_url: str, **overrides: str) -> Flask:
    # No drain thread: the tests run the app's drain themselves, at the moment they choose.
    config = {
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "DATABASE_URL": db_url,
        "DB_POOL_MAX_SIZE": "8",
        "WEB_DRAIN": "off",
    }
    config.update(overrides)
    return create_app(config)


@pytest.fixture
def app(db_url: str) -> Iterator[Flask]:
    application = build_app(db_url)
    yield application
    application.extensions["webhook"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(params=["wsgi", "asgi"])
def serve(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Both ways a test's app is served: `serve(app)` is Flask's test client (the WSGI
    path) in one run of the test, and in the other a client of the ASGI edge that
    gunicorn runs in production (tests/asgi_client.py)."""
    from asgi_client import AsgiClient

    opened: list[AsgiClient] = []

    def client_for(app: Flask) -> Any:
        if request.param == "wsgi":
            return app.test_client()
        client = AsgiClient(AsgiEdge(app))
        opened.append(client)
        return client

    yield client_for
    for client in opened:
        client.close()


class StripeSender:
    """Delivers events to the app the way Stripe does."""

    def __init__(self, client: FlaskClient, secret: str = SECRET, *, drain: bool = True) -> None:
        self.client = client
        self.secret = secret
        self.drain = drain

    def send(
        self, delivery: Delivery, *, secret: str | None = None, timestamp: int | None = None
    ) -> TestResponse:
        headers = delivery.headers(secret or self.secret, timestamp=timestamp)
        response = self.client.post("/webhook", data=delivery.body, headers=headers)
        if self.drain:
            self.client.application.extensions["webhook"].drain.until_empty()
        return response

    def send_all(self, deliveries: Iterable[Delivery]) -> list[TestResponse]:
        responses = [self.send(d) for d in deliveries]
        assert [r.status_code for r in responses] == [200] * len(responses), [
            r.get_json() for r in responses
        ]
        return responses


@pytest.fixture
def stripe(client: FlaskClient) -> StripeSender:
    return StripeSender(client)


@pytest.fixture
def factory() -> EventFactory:
    return EventFactory(ENDIVE_API)


@pytest.fixture
def user(make_user: Any) -> uuid.UUID:
    """A signed-up user (auth.users row, hence a customer row) to sell plans to."""
    return make_user()


def customer_state(conn: psycopg.Connection, customer: uuid.UUID) -> dict[str, Any]:
    """The customer's row, as the application sees it."""
    row = conn.execute(
        "select plan_id, stripe_customer_id, plan_resources, remaining_resources"
        " from public.customer where uuid = %s",
        (customer,),
    ).fetchone()
    assert row is not None
    return dict(
        zip(
            ("plan_id", "stripe_customer_id", "plan_resources", "remaining_resources"),
            row,
            strict=True,
        )
    )


def event_status(conn: psycopg.Connection, event_id: str) -> tuple[str, str | None]:
    row = conn.execute(
        "select status, error from webhook_private.events where id = %s", (event_id,)
    ).fetchone()
    assert row is not None, f"{event_id} is not in the inbox"
    return row[0], row[1]


def audit_rows(conn: psycopg.Connection, customer: uuid.UUID) -> list[tuple[Any, ...]]:
    return conn.execute(
        "select action, old_value, new_value from public.audit_logs where customer_uuid = %s order by id",
        (customer,),
    ).fetchall()


def outcome_rows(conn: psycopg.Connection) -> dict[str, Any]:
    """Every row the processor is responsible for, without timestamps or surrogate ids.

    Two deliveries of the same events, in whatever order, must produce equal snapshots.
    """
    return {
        "customers": conn.execute(
            "select uuid, plan_id, stripe_customer_id, plan_resources, remaining_resources"
            " from public.customer order by uuid"
        ).fetchall(),
        "subscriptions": conn.execute(
            "select id, stripe_customer_id, status, price_ids, product_ids, current_period_end,"
            " cancel_at_period_end, cancel_at, ended_at, metadata, order_key, event_id"
            " from webhook_private.subscriptions order by id"
        ).fetchall(),
        "links": conn.execute(
            "select stripe_customer_id, customer_uuid from webhook_private.customer_links"
            " where customer_uuid is not null order by 1"
        ).fetchall(),
        "inbox": conn.execute("select id, type from webhook_private.events order by id").fetchall(),
    }


@pytest.fixture
def standin() -> Iterator[StripeStandIn]:
    """A Stripe API stand-in on 127.0.0.1 (tests/stripe_standin.py), closed afterwards."""
    server = StripeStandIn()
    yield server
    server.close()
