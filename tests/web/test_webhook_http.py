"""The HTTP contract of POST /webhook, /healthz and /readyz, through real requests.

Every test runs twice (the `serve` fixture): through Flask's test client (the WSGI path)
and through the ASGI edge that gunicorn runs in production.
"""

import io
import json
import logging
import threading
import time

import psycopg
import pytest
from flask.testing import FlaskClient
from servers import closed_port
from stripe_events import Delivery, EventFactory, sign
from webhook_support import SECRET, StripeSender, build_app, customer_state, event_status
from werkzeug.test import TestResponse

from webhook.core.errors import ConfigError


def stored_events(conn: psycopg.Connection) -> int:
    return conn.execute("select count(*) from webhook_private.events").fetchone()[0]


@pytest.fixture
def client(app, serve):
    return serve(app)


def post(client: FlaskClient, body: bytes, signature: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    response = client.post("/webhook", data=body, headers=headers)
    return response.status_code, response.get_json()


def test_a_handled_event_is_stored_acknowledged_and_then_applied(
    conn, stripe: StripeSender, factory: EventFactory
) -> None:
    delivery = factory.customer("customer.created", customer_id="cus_1")
    stripe.drain = False
    response = stripe.send(delivery)
    assert response.status_code == 200
    assert response.get_json() == {
        "received": True,
        "id": delivery.id,
        "status": "received",
        "duplicate": False,
    }
    assert event_status(conn, delivery.id) == ("received", None)
    stripe.client.application.extensions["webhook"].drain.until_empty()
    assert event_status(conn, delivery.id) == ("ignored", None)
    again = stripe.send(delivery)
    assert again.get_json() == {
        "received": True,
        "id": delivery.id,
        "status": "ignored",
        "duplicate": True,
    }


def test_inline_mode_answers_with_the_outcome(db_url, conn, factory, serve) -> None:
    app = build_app(db_url, WEBHOOK_APPLY="inline")
    try:
        delivery = factory.customer("customer.created", customer_id="cus_1")
        response = StripeSender(serve(app), drain=False).send(delivery)
        assert response.get_json() == {
            "received": True,
            "id": delivery.id,
            "status": "ignored",
            "duplicate": False,
        }
        assert event_status(conn, delivery.id) == ("ignored", None)
    finally:
        app.extensions["webhook"].close()


def test_an_unhandled_type_is_acknowledged_and_marked_ignored(conn, stripe, factory) -> None:
    delivery = factory.other("charge.succeeded")
    response = stripe.send(delivery)
    assert response.status_code == 200
    assert response.get_json()["status"] == "received"
    assert event_status(conn, delivery.id)[0] == "ignored"


def test_a_queued_redelivery_is_applied_as_stored_not_as_its_own_body(
    conn, client, user, factory
) -> None:
    """A failed event delivered again is queued again; the drain applies the stored payload
    (what `events show` and `replay` use), not the body of the request that re-queued it."""
    poison = factory.checkout_completed(
        customer="cus_1", subscription=None,
        client_reference_id="00000000-0000-4000-8000-000000000bad",
    )  # fmt: skip
    stripe = StripeSender(client)
    stripe.send(poison)
    assert event_status(conn, poison.id)[0] == "failed"
    other_body = factory.checkout_completed(
        customer="cus_1", subscription=None, client_reference_id=str(user)
    ).event
    stripe.send(Delivery.from_event({**other_body, "id": poison.id}))
    assert event_status(conn, poison.id)[0] == "failed"  # the stored payload, again
    assert customer_state(conn, user)["stripe_customer_id"] is None


def test_an_outage_is_logged_once_per_reason_and_interval(caplog, monkeypatch) -> None:
    """Every delivery gets 503 while the database is out; the log gets a line per reason
    per OUTAGE_LOG_SECONDS, saying how many were answered so in between."""
    from webhook.core.errors import DatabaseUnavailable
    from webhook.web import delivery

    monkeypatch.setattr(delivery, "OUTAGE_LOG_SECONDS", 0.2)
    monkeypatch.setattr(delivery, "_outage_log", delivery._OutageLog())
    stalled = DatabaseUnavailable("the database has not stored a delivery for 5 s")
    refused = DatabaseUnavailable("connection refused")
    with caplog.at_level(logging.WARNING, logger="webhook.web.delivery"):
        for _ in range(5):  # two reasons taking turns
            assert delivery.database_unavailable(stalled).status == 503
            assert delivery.database_unavailable(refused).status == 503
        time.sleep(0.25)  # the interval is over
        delivery.database_unavailable(refused)
        delivery.database_unavailable(stalled)
    assert [r.getMessage() for r in caplog.records] == [
        "database unavailable: the database has not stored a delivery for 5 s",
        "database unavailable: connection refused",
        "database unavailable: connection refused (4 more with this reason since its last line)",
        "database unavailable: the database has not stored a delivery for 5 s"
        " (4 more with this reason since its last line)",
    ]


def test_a_duplicate_is_acknowledged_and_counted_once(conn, stripe, factory) -> None:
    delivery = factory.other()
    first, second = stripe.send(delivery), stripe.send(delivery)
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.get_json()["duplicate"] is True
    row = conn.execute(
        "select deliveries, attempts from webhook_private.events where id = %s", (delivery.id,)
    ).fetchone()
    assert row == (2, 1)


def test_rotated_secrets_both_verify(db_url: str, conn, factory, serve) -> None:
    app = build_app(db_url, STRIPE_WEBHOOK_SECRET=f"whsec_new_one,{SECRET}")
    try:
        client = serve(app)
        old = StripeSender(client, secret=SECRET).send(factory.other())
        new = StripeSender(client, secret="whsec_new_one").send(factory.other())
        assert (old.status_code, new.status_code) == (200, 200)
        # During a roll Stripe sends one v1 per active secret; any one matching is enough.
        rolled = factory.other()
        headers = {"Stripe-Signature": sign(rolled.body, "whsec_unknown", extra_secrets=[SECRET])}
        assert client.post("/webhook", data=rolled.body, headers=headers).status_code == 200
        assert stored_events(conn) == 3
    finally:
        app.extensions["webhook"].close()


@pytest.mark.parametrize(
    ("make_header", "reason"),
    [
        (lambda body: None, "missing Stripe-Signature"),
        (lambda body: "nonsense", "garbled"),
        (lambda body: f"t={int(time.time())}", "no v1"),
        (lambda body: sign(body, "whsec_wrong"), "no signature matches"),
        (lambda body: sign(body + b" ", SECRET), "no signature matches"),
        (lambda body: sign(body, SECRET, int(time.time()) - 301), "tolerance"),
        (lambda body: sign(body, SECRET, int(time.time()) + 301), "tolerance"),
    ],
    ids=["missing", "garbled", "no-v1", "wrong-secret", "other-body", "too-old", "future"],
)
def test_bad_signatures_get_400_and_write_nothing(
    conn, client, factory, make_header, reason
) -> None:
    delivery = factory.other()
    status, body = post(client, delivery.body, make_header(delivery.body))
    assert status == 400
    assert reason in body["error"]
    assert stored_events(conn) == 0


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"object": "charge", "id": "ch_1"}', "not a Stripe event"),
        (b'{"object": "event", "id": "evt_1", "type": "x", "created": 1}', "data.object"),
        (
            b'{"object": "event", "id": "nope", "type": "x", "created": 1, "data": {"object": {}}}',
            "id",
        ),
        (
            b'{"object": "v2.core.event", "id": "evt_1", "type": "v1.customer.updated"}',
            "thin events",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (
            b'{"object": "event", "id": "evt_1", "type": "x", "created": 1,'
            b' "data": {"object": {"name": "a\\u0000b"}}}',
            "NUL",
        ),
        (
            b'{"object": "event", "id": "evt_1", "type": "x", "created": 1,'
            b' "data": {"object": {"name": "a\\uDC00b"}}}',
            "surrogate",
        ),
    ],
    ids=[
        "not-json",
        "array",
        "not-event",
        "no-object",
        "bad-id",
        "thin",
        "deep",
        "nul",
        "surrogate",
    ],
)
def test_signed_bodies_that_are_not_stripe_events_get_400(conn, client, body, reason) -> None:
    status, answer = post(client, body, sign(body, SECRET))
    assert status == 400
    assert reason in answer["error"]
    assert stored_events(conn) == 0


def test_a_body_over_one_mebibyte_gets_413(conn, client, factory) -> None:
    event = factory.other().event
    event["data"]["object"]["padding"] = "x" * (1024 * 1024)
    big = Delivery.from_event(event)
    status, answer = post(client, big.body, sign(big.body, SECRET))
    assert status == 413
    assert "larger" in answer["error"]
    assert stored_events(conn) == 0


def test_a_body_without_a_length_is_measured_too(conn, app, factory) -> None:
    """A chunked body (no Content-Length) reaches the Flask route, which must neither cut
    it at the limit (the signature would then fail) nor store a longer one. (The ASGI
    edge's side: tests/web/test_asgi_edge.py.)"""
    client = app.test_client()
    event = factory.other().event
    event["data"]["object"]["padding"] = "x" * (1024 * 1024)
    big = Delivery.from_event(event)
    small = factory.other()
    for delivery, status in ((big, 413), (small, 200)):
        response = client.post(
            "/webhook",
            input_stream=io.BytesIO(delivery.body),
            headers={"Stripe-Signature": sign(delivery.body, SECRET)},
            # As gunicorn hands a chunked body over: no length, the stream ends with it.
            environ_overrides={"CONTENT_LENGTH": "", "wsgi.input_terminated": True},
        )
        assert response.status_code == status, response.get_json()
    assert stored_events(conn) == 1


@pytest.mark.parametrize("method", ["get", "put", "delete", "patch"])
def test_other_methods_get_405(client, method: str) -> None:
    response = getattr(client, method)("/webhook")
    assert response.status_code == 405
    assert response.get_json() == {"error": "method not allowed"}
    assert "POST" in response.headers["Allow"]


def test_an_unknown_path_gets_a_json_404(client) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.get_json() == {"error": "not found"}


def test_an_unreachable_database_gets_503_so_stripe_retries(factory, serve) -> None:
    url = f"postgresql://nobody:secret@127.0.0.1:{closed_port()}/nothing"
    app = build_app(url, DB_POOL_TIMEOUT="0.5", DB_POOL_MIN_SIZE="0")
    try:
        client = serve(app)
        response = StripeSender(client, drain=False).send(factory.other())
        assert response.status_code == 503
        assert response.get_json() == {"error": "database unavailable, retry later"}
        assert response.headers["Retry-After"]
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "secret" not in json.dumps(ready.get_json())
    finally:
        app.extensions["webhook"].close()


@pytest.mark.parametrize("apply_mode", ["queued", "inline"])
def test_a_database_without_the_schema_gets_503_so_stripe_retries(
    empty_db_url, factory, serve, apply_mode
) -> None:
    # A new version started before `migrate` ran (no release step): not an internal error.
    app = build_app(empty_db_url, WEBHOOK_APPLY=apply_mode)
    try:
        client = serve(app)
        response = StripeSender(client, drain=False).send(factory.other())
        assert response.status_code == 503, response.get_json()
        assert response.get_json() == {"error": "database unavailable, retry later"}
        assert response.headers["Retry-After"]
        metrics = client.get("/metrics")  # still served, without the inbox's figures
        assert metrics.status_code == 200 and b"webhook_inbox_events{" not in metrics.data
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.get_json()["reason"].startswith("migrations pending: 001_core.sql")
    finally:
        app.extensions["webhook"].close()


def hold_stripe_customer(db_url: str, stripe_customer: str) -> psycopg.Connection:
    """Another worker busy with this Stripe customer, not letting go (close() releases)."""
    holder = psycopg.connect(db_url)
    holder.execute(
        "select pg_advisory_xact_lock(hashtextextended(%s, 0))",
        (f"stripe-customer:{stripe_customer}",),
    )
    return holder


def test_inline_a_lock_wait_timeout_gets_503_and_the_retry_applies_once(
    db_url, conn, plans, user, factory, serve
) -> None:
    app = build_app(db_url, DB_LOCK_TIMEOUT_MS="200", WEBHOOK_APPLY="inline")
    stripe = StripeSender(serve(app), drain=False)
    try:
        checkout = factory.checkout_completed(
            customer="cus_1", subscription=None, client_reference_id=str(user)
        )
        holder = hold_stripe_customer(db_url, "cus_1")
        blocked = stripe.send(checkout)
        holder.close()
        assert blocked.status_code == 503
        assert stored_events(conn) == 0
        retried = stripe.send(checkout)
        assert retried.status_code == 200
        assert retried.get_json()["status"] == "processed"
        assert customer_state(conn, user)["stripe_customer_id"] == "cus_1"
    finally:
        app.extensions["webhook"].close()


def stalled_then_retried(db_url, conn, app, client, factory, user) -> TestResponse:
    """A checkout sent while another session holds the inbox's table lock, as a migration
    rewriting it would: it must get 503 within 0.3 to 3 s (the app's limit is 300 ms) with
    nothing stored; the retry once the lock is gone must get 200, which is returned.
    Should the request wait for the lock after all, the server ends the locking session
    after 3 s, so the test fails on the time rather than hanging."""
    stripe = StripeSender(client, drain=False)
    checkout = factory.checkout_completed(
        customer="cus_1", subscription=None, client_reference_id=str(user)
    )
    try:
        migration = psycopg.connect(db_url)
        try:
            migration.execute("set idle_in_transaction_session_timeout = '3s'")
            migration.execute("lock table webhook_private.events in access exclusive mode")
            started = time.monotonic()
            blocked = stripe.send(checkout)
            waited = time.monotonic() - started
        finally:
            migration.close()
        assert blocked.status_code == 503
        assert 0.3 <= waited < 3
        assert stored_events(conn) == 0
        retried = stripe.send(checkout)
        assert retried.status_code == 200
        return retried
    finally:
        app.extensions["webhook"].close()


def test_inline_a_migration_holding_the_inbox_gets_503_in_time_and_the_retry_applies_once(
    db_url, conn, plans, user, factory, serve
) -> None:
    """The insert takes the inbox's lock while it is planned: the lock timeout has to be set
    before it, or a migration holding the table would stall the request for as long."""
    app = build_app(db_url, DB_LOCK_TIMEOUT_MS="300", WEBHOOK_APPLY="inline")
    retried = stalled_then_retried(db_url, conn, app, serve(app), factory, user)
    assert retried.get_json()["status"] == "processed"
    assert customer_state(conn, user)["stripe_customer_id"] == "cus_1"


def test_queued_on_a_wsgi_server_a_stalled_inbox_gets_503_in_time(
    db_url, conn, plans, user, factory
) -> None:
    """Flask's own path (the gthread worker, other WSGI servers): the insert is cancelled
    after WEB_STORE_TIMEOUT_MS, nothing is stored late, and Stripe's retry is accepted.
    (The ASGI edge answers on a timer instead: tests/faults/test_fault_database_stall.py.)"""
    app = build_app(db_url, WEB_STORE_TIMEOUT_MS="300")
    retried = stalled_then_retried(db_url, conn, app, app.test_client(), factory, user)
    assert retried.get_json()["status"] == "received"


def test_queued_a_held_lock_never_reaches_the_request_and_the_drain_applies_once(
    db_url, conn, plans, user, factory, serve
) -> None:
    app = build_app(db_url, DB_LOCK_TIMEOUT_MS="200")
    service = app.extensions["webhook"]
    stripe = StripeSender(serve(app), drain=False)
    try:
        checkout = factory.checkout_completed(
            customer="cus_1", subscription=None, client_reference_id=str(user)
        )
        holder = hold_stripe_customer(db_url, "cus_1")
        accepted = stripe.send(checkout)
        assert accepted.status_code == 200
        assert accepted.get_json()["status"] == "received"
        service.drain.cycle()  # the event's Stripe customer is busy: it stays queued
        assert event_status(conn, checkout.id) == ("received", None)
        holder.close()
        assert service.drain.until_empty() == 1
        assert event_status(conn, checkout.id) == ("processed", None)
        assert customer_state(conn, user)["stripe_customer_id"] == "cus_1"
        attempts = conn.execute("select count(*) from webhook_private.event_attempts").fetchone()
        assert attempts == (1,)
    finally:
        service.close()


def test_healthz_answers_without_the_database(client) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.get_json()) == (200, {"status": "ok"})


def test_readyz_is_ready_when_every_migration_is_applied(client) -> None:
    response = client.get("/readyz")
    assert (response.status_code, response.get_json()) == (
        200,
        {"status": "ready", "queue_lag_seconds": 0.0},
    )


def test_readyz_is_unavailable_while_a_migration_is_pending(conn, client) -> None:
    conn.execute("delete from webhook_private.schema_migrations where version = '002'")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {
        "status": "unavailable",
        "reason": "migrations pending: 002_processor.sql",
    }


def test_readyz_without_its_database_names_neither_the_database_nor_its_password(
    caplog,
) -> None:
    # An unencoded # in the password: libpq reads it as part of the password, urllib as
    # the start of a fragment (which once left the password in the message).
    application = build_app(f"postgresql://operator:s3cr#et@127.0.0.1:{closed_port()}/webhook")
    try:
        with caplog.at_level(logging.WARNING):
            response = application.test_client().get("/readyz")
    finally:
        application.extensions["webhook"].close()
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "reason": "database unavailable"}
    readiness = [r.getMessage() for r in caplog.records if r.getMessage().startswith("readiness")]
    assert len(readiness) == 1 and "password=***" in readiness[0], readiness
    assert "s3cr" not in caplog.text


def test_the_app_refuses_a_database_url_libpq_would_misread() -> None:
    with pytest.raises(ConfigError, match="percent-encoded") as refused:
        build_app("postgresql://operator:s3cr/et@127.0.0.1:5432/webhook")
    assert "s3cr" not in str(refused.value)


def test_the_app_refuses_to_start_without_a_secret(db_url, monkeypatch) -> None:
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET", raising=False)
    with pytest.raises(ConfigError, match="STRIPE_WEBHOOK_SECRET"):
        build_app(db_url, STRIPE_WEBHOOK_SECRET="")


def test_concurrent_duplicates_are_applied_once(conn, app, plans, user, factory, serve) -> None:
    delivery = factory.checkout_completed(
        customer="cus_1", subscription=None, client_reference_id=str(user)
    )
    results: list[int] = []
    client = serve(app)

    def deliver() -> None:
        results.append(StripeSender(client).send(delivery).status_code)

    threads = [threading.Thread(target=deliver) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 10
    row = conn.execute(
        "select deliveries, attempts, status from webhook_private.events where id = %s",
        (delivery.id,),
    ).fetchone()
    assert row == (10, 1, "processed")


def test_escaped_characters_outside_the_basic_plane_are_stored(conn, client, factory) -> None:
    """A valid surrogate pair (here an emoji, as json.dumps escapes it) reads back as text."""
    event = factory.other().event
    event["data"]["object"]["description"] = "thanks \U0001f600 and caf\u00e9"
    delivery = Delivery.from_event(event)
    assert b"\\ud83d\\ude00" in delivery.body
    status, _ = post(client, delivery.body, sign(delivery.body, SECRET))
    assert status == 200
    stored = conn.execute(
        "select payload -> 'data' -> 'object' ->> 'description' from webhook_private.events"
    ).fetchone()
    assert stored == ("thanks \U0001f600 and caf\u00e9",)


@pytest.mark.parametrize(("setting", "prepared"), [("on", True), ("off", False)])
def test_db_prepared_statements_decides_what_the_pool_prepares(
    conn, db_url, plans, make_user, factory, setting, prepared, serve
) -> None:
    """Off, no statement is ever prepared: what a pooler in transaction mode needs."""
    app = build_app(db_url, DB_PREPARED_STATEMENTS=setting, DB_POOL_MAX_SIZE="1")
    try:
        sender = StripeSender(serve(app))
        user = make_user()
        sender.send_all(
            [
                factory.checkout_completed(
                    customer="cus_1", subscription="sub_1", client_reference_id=str(user)
                ),
                factory.subscription("customer.subscription.created", sub_id="sub_1",
                                     customer="cus_1", status="active", price_ids=["price_pro"]),
                *(factory.other() for _ in range(8)),
            ]
        )  # fmt: skip
        database = app.extensions["webhook"].database
        count = database.run(
            lambda c: c.execute("select count(*) from pg_prepared_statements").fetchone()[0]
        )
        assert (count > 0) is prepared
        assert customer_state(conn, user)["plan_id"] == plans["Pro"]
    finally:
        app.extensions["webhook"].close()


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_body_with_a_non_finite_number_is_refused_and_nothing_of_it_is_logged(
    conn, client, factory: EventFactory, caplog, constant
) -> None:
    """Python's json reads NaN; JSON and PostgreSQL's json type do not. Before, the store
    refused it with a 500 and the log quoted the payload (an e-mail address with it)."""
    event = factory.customer("customer.updated", customer_id="cus_1").event
    event["data"]["object"]["email"] = "nan.case@example.com"
    text = json.dumps(event).replace('"balance": 0', f'"balance": {constant}')
    assert constant in text
    body = text.encode()
    with caplog.at_level(logging.DEBUG):
        status, answer = post(client, body, sign(body, SECRET))
    assert (status, answer["error"]) == (400, "body is not valid JSON")
    assert stored_events(conn) == 0
    assert "example.com" not in caplog.text


def test_a_read_only_database_is_an_outage_for_deliveries_and_readiness(
    conn, db_url, serve, factory: EventFactory, caplog
) -> None:
    """Supabase's read-only mode (a full disk) or a standby after a failover: 503 so Stripe
    sends the events again, and /readyz says why; before, 500 and a traceback each."""
    database = conn.info.dbname
    conn.execute(f'alter database "{database}" set default_transaction_read_only = on')
    application = build_app(db_url)
    try:
        client = serve(application)
        delivery = factory.customer("customer.created", customer_id="cus_1")
        with caplog.at_level(logging.WARNING):
            status, answer = post(client, delivery.body, sign(delivery.body, SECRET))
            ready = client.get("/readyz")
        conn.execute(f'alter database "{database}" reset default_transaction_read_only')
        # Writes are back. Each answer that found the database read-only replaced the
        # pool's sessions (a session keeps the read-only default it started with); those
        # opened before the reset go at the next such answer, so one more try at most.
        probes = [client.get("/readyz").status_code for _ in range(2)]
        assert 200 in probes, probes
        answers = [post(client, delivery.body, sign(delivery.body, SECRET))[0] for _ in range(2)]
        assert 200 in answers, answers
    finally:
        application.extensions["webhook"].close()
        conn.execute(f'alter database "{database}" reset default_transaction_read_only')
    assert status == 503, answer
    assert (ready.status_code, ready.get_json()) == (
        503,
        {"status": "unavailable", "reason": "database is read-only"},
    )
    # The outage line is throttled per process (one run of the two may write none).
    assert "Traceback" not in caplog.text
    assert stored_events(conn) == 1  # the redelivery's
