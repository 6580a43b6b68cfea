"""Shared pieces of the fault suite: event histories, the in-order reference, the invariant.

Every fault test follows one pattern. It builds a known set of signed Stripe events (one
subscription history per user), computes what delivering them once, in Stripe's order,
leaves behind (in a separate fresh database, through the in-process app), then delivers
the same events to a real server while something breaks, redelivers like Stripe until
every event has been answered 200, and finally checks the invariant:

- every sent event is in the inbox exactly once, none left `received`, each applied once
  (one attempt), settled as processed or ignored;
- no event wrote an audit row twice;
- the customer rows (and the subscription mirror and links behind them) equal the
  in-order result.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.client import HTTPConnection
from typing import Any

import psycopg
from stripe_events import API_VERSIONS, Delivery, EventFactory, lifecycle
from webhook_support import SECRET, build_app

HOST = "127.0.0.1"
# Bounds for "does not hang"; never used to assert how fast something is.
REQUEST_TIMEOUT_SECONDS = 20.0
WAIT_SECONDS = 20.0

PLANS = (
    ("Basic", 9.99, '{"api_calls": 1000, "storage_gb": 10}', "price_basic", "prod_basic"),
    ("Pro", 19.99, '{"api_calls": 5000, "storage_gb": 50}', "price_pro", "prod_pro"),
    (
        "Enterprise",
        49.99,
        '{"api_calls": 20000, "storage_gb": 200}',
        "price_enterprise",
        "prod_enterprise",
    ),
)

# How much of the ten-event lifecycle each user gets, in turn: the whole life (ends
# cancelled, after a renewal that reset resources), up to the renewal (Pro, resources
# reset), up to the upgrade (Pro), up to the first payment (Basic).
LIFECYCLE_CUTS = (10, 8, 5, 4)


# -- the events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class History:
    """One user's Stripe history, in Stripe's order."""

    user: uuid.UUID
    customer: str
    subscription: str
    deliveries: list[Delivery]


def histories(count: int, *, seed: int, cuts: Sequence[int] = LIFECYCLE_CUTS) -> list[History]:
    """`count` users, each with their own Stripe customer and subscription history.

    The API shape alternates between users, so both payload shapes meet in every test.
    """
    out = []
    for index in range(count):
        factory = EventFactory(API_VERSIONS[index % len(API_VERSIONS)], seed=seed * 1000 + index)
        user = uuid.UUID(int=random.Random(f"{seed}-{index}").getrandbits(128), version=4)
        customer = factory.new_id("cus_fault", 12)
        subscription = factory.new_id("sub_fault", 12)
        events = lifecycle(factory, user_id=str(user), customer=customer, sub_id=subscription)
        out.append(History(user, customer, subscription, events[: cuts[index % len(cuts)]]))
    return out


def all_deliveries(hs: Iterable[History]) -> list[Delivery]:
    return [d for h in hs for d in h.deliveries]


def shuffled(deliveries: Sequence[Delivery], seed: int, copies: int = 1) -> list[Delivery]:
    out = [d for d in deliveries for _ in range(copies)]
    random.Random(seed).shuffle(out)
    return out


# -- databases ----------------------------------------------------------------------------


def prepare(url: str, hs: Iterable[History]) -> None:
    """The plans and the signed-up users the histories refer to."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        for name, price, resources, price_id, product_id in PLANS:
            conn.execute(
                "insert into public.plans (name, price, resources, stripe_price_id, stripe_product_id)"
                " select %s, %s, %s::jsonb, %s, %s"
                " where not exists (select 1 from public.plans where stripe_price_id = %s)",
                (name, price, resources, price_id, product_id, price_id),
            )
        for h in hs:
            conn.execute(
                "insert into auth.users (id, email) values (%s, %s)",
                (h.user, f"{h.user.hex[:12]}@example.test"),
            )


@dataclass(frozen=True)
class Snapshot:
    """What the processor leaves behind, comparable between two databases."""

    customers: list[tuple[Any, ...]]
    subscriptions: list[tuple[Any, ...]]
    links: list[tuple[Any, ...]]
    statuses: dict[str, str]


def snapshot(conn: psycopg.Connection) -> Snapshot:
    """Plans are compared by name: plan ids are surrogate keys of each database."""
    return Snapshot(
        customers=conn.execute(
            "select c.uuid, p.name, c.stripe_customer_id, c.plan_resources, c.remaining_resources"
            " from public.customer c left join public.plans p on p.id = c.plan_id"
            " order by c.uuid"
        ).fetchall(),
        subscriptions=conn.execute(
            "select id, stripe_customer_id, status, price_ids, current_period_end,"
            " cancel_at_period_end from webhook_private.subscriptions order by id"
        ).fetchall(),
        links=conn.execute(
            "select stripe_customer_id, customer_uuid from webhook_private.customer_links"
            " order by 1"
        ).fetchall(),
        statuses=dict(conn.execute("select id, status from webhook_private.events").fetchall()),
    )


def deliver_in_order(url: str, hs: Sequence[History]) -> Snapshot:
    """Deliver each history once, in Stripe's order, through the in-process app (inline:
    each event applied before the next is sent)."""
    app = build_app(url, WEBHOOK_APPLY="inline")
    try:
        client = app.test_client()
        for h in hs:
            for delivery in h.deliveries:
                response = client.post(
                    "/webhook", data=delivery.body, headers=delivery.headers(SECRET)
                )
                assert response.status_code == 200, (delivery.type, response.get_json())
    finally:
        app.extensions["webhook"].close()
    with psycopg.connect(url, autocommit=True) as conn:
        result = snapshot(conn)
    sent = {d.id for d in all_deliveries(hs)}
    assert set(result.statuses) == sent
    # The reference itself must be meaningful: every event settled, some plans granted.
    assert set(result.statuses.values()) <= {"processed", "ignored"}, result.statuses
    assert any(plan for _, plan, *_ in result.customers), result.customers
    return result


def check_invariant(conn: psycopg.Connection, hs: Sequence[History], expected: Snapshot) -> None:
    """Every event in the inbox exactly once and applied once; rows equal the in-order run.

    The servers' drains apply what they stored moments later: wait (bounded) for the queue
    to empty first.
    """
    wait_until_drained(conn)
    sent = [d.id for d in all_deliveries(hs)]
    assert len(set(sent)) == len(sent), "the histories reuse an event id"
    inbox = conn.execute("select id, status, attempts from webhook_private.events").fetchall()
    ids = Counter(row[0] for row in inbox)
    missing = sorted(set(sent) - set(ids))
    extra = sorted(set(ids) - set(sent))
    assert not missing, f"events lost: {missing}"
    assert not extra, f"events in the inbox that were never sent: {extra}"
    assert all(n == 1 for n in ids.values()), f"events stored twice: {ids}"
    stuck = [row[0] for row in inbox if row[1] == "received"]
    assert not stuck, f"events left half-done in status 'received': {stuck}"
    applied_twice = {row[0]: row[2] for row in inbox if row[2] != 1}
    assert not applied_twice, f"events applied more than once: {applied_twice}"
    attempts = Counter(
        event_id
        for (event_id,) in conn.execute("select event_id from webhook_private.event_attempts")
    )
    assert attempts == Counter(set(sent)), "one recorded attempt per event"
    audit = Counter(
        conn.execute(
            "select customer_uuid, action, source from public.audit_logs where source is not null"
        ).fetchall()
    )
    doubled = {key: n for key, n in audit.items() if n > 1}
    assert not doubled, f"an event wrote the same audit row twice: {doubled}"

    # Which of two events about one thing applies it may depend on the order (of a renewal's
    # invoice.paid and invoice.payment_succeeded the first is processed, the other ignored),
    # so statuses are compared only as settled, never failed.
    actual = snapshot(conn)
    unsettled = {e: s for e, s in actual.statuses.items() if s not in ("processed", "ignored")}
    assert not unsettled, f"events not settled: {unsettled}"
    assert actual.links == expected.links
    assert actual.subscriptions == expected.subscriptions
    assert actual.customers == expected.customers


def wait_until_drained(conn: psycopg.Connection, timeout: float = 30.0) -> None:
    """Until no event waits in the queue, or `timeout` (then the check that follows fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = conn.execute(
            "select count(*) from webhook_private.events where status = 'received'"
        ).fetchone()[0]
        if waiting == 0:
            return
        time.sleep(0.05)


def write_fingerprint(conn: psycopg.Connection) -> dict[str, Any]:
    """Row counts of every table the webhook writes, plus the customer rows themselves."""
    tables = [
        f"webhook_private.{name}"
        for (name,) in conn.execute(
            "select relname from pg_class where relnamespace = 'webhook_private'::regnamespace"
            " and relkind = 'r' and relname <> 'schema_migrations' order by 1"
        )
    ] + ["public.audit_logs"]
    counts = {
        table: conn.execute(f"select count(*) from {table}").fetchone()[0] for table in tables
    }
    customers = conn.execute(
        "select uuid, plan_id, stripe_customer_id, plan_resources, remaining_resources"
        " from public.customer order by uuid"
    ).fetchall()
    return {"counts": counts, "customers": customers}


def inbox_ids(conn: psycopg.Connection) -> set[str]:
    return {row[0] for row in conn.execute("select id from webhook_private.events")}


# -- HTTP -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    # Names in lower case: HTTP header names are case-insensitive, and servers differ
    # (gunicorn's threaded worker sends Flask's "Retry-After", the ASGI edge "retry-after").
    headers: Mapping[str, str]


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    timeout: float = REQUEST_TIMEOUT_SECONDS,
) -> Reply:
    """One request on a fresh connection to 127.0.0.1:port; raises OSError if none comes."""
    conn = HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        raw = response.read()
        try:
            decoded: Any = json.loads(raw or b"null")
        except ValueError:
            decoded = raw.decode("utf-8", "replace")
        headers = {name.lower(): value for name, value in response.getheaders()}
        return Reply(response.status, decoded, headers)
    finally:
        conn.close()


def post(port: int, delivery: Delivery, *, timeout: float = REQUEST_TIMEOUT_SECONDS) -> Reply:
    """Deliver one event as Stripe does: the exact bytes, freshly signed."""
    return http_request(
        port, "POST", "/webhook", delivery.body, delivery.headers(SECRET), timeout=timeout
    )


def redeliver_until_accepted(
    ports: Sequence[int], deliveries: Sequence[Delivery], *, within: float = 60.0
) -> list[Reply]:
    """Stripe's retries: post each delivery until it is answered 200, within a bound.

    A 503 (or a dropped connection) is retried after a short pause; anything else fails.
    Ports are used in turn, as a load balancer would.
    """
    deadline = time.monotonic() + within
    replies: list[Reply] = []
    for index, delivery in enumerate(deliveries):
        last: object = None
        while True:
            port = ports[index % len(ports)]
            try:
                reply = post(port, delivery)
            except OSError as exc:
                last = exc
            else:
                if reply.status == 200:
                    replies.append(reply)
                    break
                assert reply.status == 503, (delivery.id, reply)
                last = reply
            assert time.monotonic() < deadline, f"{delivery.id} never accepted; last: {last!r}"
            time.sleep(0.25)
    return replies


def run_concurrently(
    jobs: Sequence[Callable[[], Any]], *, timeout: float = 2 * REQUEST_TIMEOUT_SECONDS
) -> list[Any]:
    """Run the jobs on their own threads, released together; their results, in order.

    A job that raises makes this raise; a job that does not finish in time fails the test.
    """
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException | None] = [None] * len(jobs)

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=timeout)
            results[index] = jobs[index]()
        except BaseException as exc:
            errors[index] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"a job did not finish within {timeout:g}s"
    # A job that fails breaks the barriers the others wait on; report its error, not theirs.
    raised = [e for e in errors if e is not None]
    raised.sort(key=lambda e: isinstance(e, threading.BrokenBarrierError))
    if raised:
        raise raised[0]
    return results


class Background:
    """One call on its own thread; `result()` waits a bounded time for what it returned."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self._outcome: tuple[str, Any] | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self._outcome = ("returned", call())
        except BaseException as exc:
            self._outcome = ("raised", exc)

    def running(self) -> bool:
        return self._thread.is_alive()

    def outcome(self, timeout: float = WAIT_SECONDS) -> tuple[str, Any]:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the call did not finish within {timeout:g}s"
        assert self._outcome is not None
        return self._outcome

    def result(self, timeout: float = WAIT_SECONDS) -> Any:
        kind, value = self.outcome(timeout)
        if kind == "raised":
            raise value
        return value


# -- locks and processes ------------------------------------------------------------------


@contextmanager
def holding_customer_lock(url: str, stripe_customer_id: str) -> Iterator[psycopg.Connection]:
    """Hold the advisory lock the processor takes for this Stripe customer, until the end."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "select pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"stripe-customer:{stripe_customer_id}",),
        )
        try:
            yield conn
        finally:
            conn.rollback()


def lock_waiters(conn: psycopg.Connection) -> set[int]:
    """Backends of this database waiting for an advisory lock."""
    rows = conn.execute(
        "select pid from pg_stat_activity where datname = current_database()"
        " and wait_event_type = 'Lock' and wait_event = 'advisory'"
    ).fetchall()
    return {row[0] for row in rows}


def wait_until(
    condition: Callable[[], Any], what: str, *, timeout: float = WAIT_SECONDS, every: float = 0.05
) -> Any:
    """Poll until `condition()` is truthy; its value. Fails naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        time.sleep(every)


def child_pids(parent: int) -> set[int]:
    """Live processes whose parent is `parent` (from /proc)."""
    children = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is the state, fields[1] the parent pid; skip zombies.
        if int(fields[1]) == parent and fields[0] != "Z":
            children.add(int(entry))
    return children
