"""What the benchmark stores and sends: seeded customers and signed, unique deliveries.

Customers are numbered; customer i has uuid md5('bench-i'), Stripe customer cus_b<i>
and an active subscription sub_b<i> on the Basic plan, already linked. The pgbench floor
uses the same numbering, so both sides touch the same rows.
"""

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from webhook.fixtures import MONTH, EventFactory, sign
from webhook.stripe.payloads import parse_event

SECRET = "whsec_bench_only_not_a_real_secret"
PRICES = ("price_basic", "price_pro", "price_enterprise")
IGNORED_TYPES = ("charge.succeeded", "payment_intent.succeeded", "invoice.finalized")
SEED_CREATED = 1_700_000_000  # every seeded state is older than any benchmark event


@dataclass(frozen=True)
class Mix:
    """Shares of the delivered events: plan-changing updates, renewals, ignored types."""

    updates: float = 0.5
    renewals: float = 0.25

    def describe(self) -> str:
        ignored = 1 - self.updates - self.renewals
        return (
            f"{self.updates:.0%} subscription updates (random plan), {self.renewals:.0%} renewals"
            f" (invoice.paid, subscription_cycle), {ignored:.0%} unhandled types"
        )


def seed(url: str, customers: int, old_events: int) -> None:
    """Plans, customers with linked active subscriptions, and an inbox of old events.

    Bulk-loaded with triggers off (session_replication_role = replica): the rows are what
    the triggers would have produced, written in seconds instead of minutes.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("set session_replication_role = replica")
        conn.execute(
            """
            insert into public.plans (id, name, price, resources, stripe_price_id) overriding system value
            values (1, 'Basic', 9.99, '{"api_calls": 1000, "storage_gb": 10}', 'price_basic'),
                   (2, 'Pro', 19.99, '{"api_calls": 5000, "storage_gb": 50}', 'price_pro'),
                   (3, 'Enterprise', 49.99, '{"api_calls": 20000, "storage_gb": 200}', 'price_enterprise')
            """
        )
        conn.execute(
            "insert into auth.users (id, email) select md5('bench-' || i)::uuid, 'user' || i || '@bench.test'"
            " from generate_series(1, %s) i",
            (customers,),
        )
        conn.execute(
            """
            insert into public.customer (uuid, email, plan_id, stripe_customer_id, plan_resources,
                                         remaining_resources, plan_updated_at)
            select md5('bench-' || i)::uuid, 'user' || i || '@bench.test', 1, 'cus_b' || i,
                   '{"api_calls": 1000, "storage_gb": 10}', '{"api_calls": 1000, "storage_gb": 10}', now()
              from generate_series(1, %s) i
            """,
            (customers,),
        )
        conn.execute(
            "insert into webhook_private.customer_links (stripe_customer_id, customer_uuid, event_created)"
            " select 'cus_b' || i, md5('bench-' || i)::uuid, to_timestamp(%s) from generate_series(1, %s) i",
            (SEED_CREATED, customers),
        )
        conn.execute(
            """
            insert into webhook_private.subscriptions
              (id, stripe_customer_id, status, price_ids, current_period_end, order_key, event_id)
            select 'sub_b' || i, 'cus_b' || i, 'active', '{price_basic}', to_timestamp(%s + %s),
                   array[%s, 0, %s, %s + %s, 1, 2]::bigint[], 'evt_seed_' || i
              from generate_series(1, %s) i
            """,
            (SEED_CREATED, MONTH, SEED_CREATED, SEED_CREATED, SEED_CREATED, MONTH, customers),
        )
        if old_events:
            old = json.dumps({"id": "evt_old", "object": "event", "type": "customer.subscription.updated",
                              "data": {"object": {"id": "sub_old", "status": "active"}}})  # fmt: skip
            conn.execute(
                """
                insert into webhook_private.events (id, type, stripe_created, object_id, payload, status,
                                                    received_at, processed_at)
                select 'evt_old_' || i, 'customer.subscription.updated', to_timestamp(%s - i),
                       'sub_b' || (i %% %s + 1), %s::jsonb, 'processed', now() - interval '60 days',
                       now() - interval '60 days'
                  from generate_series(1, %s) i
                """,
                (SEED_CREATED, customers, old, old_events),
            )
        conn.execute("set session_replication_role = origin")
        conn.execute("vacuum analyze")
        _checkpoint(conn)


BACKLOG_TEMPLATES = 1_000


def queue_backlog(url: str, count: int, customers: int, mix: Mix) -> None:
    """`count` stored events waiting to be applied, as a long outage of every drain leaves
    them: copies of a thousand deliveries of `mix` under new ids, received an hour ago.

    Written by one INSERT ... SELECT so that a million take a minute rather than the hour
    signing and sending them would; each copy's payload names its own id, so a drain
    applies it like any delivery.
    """
    templates = []
    for _, body in deliveries(BACKLOG_TEMPLATES, customers, seed_value=31337, mix=mix):
        text = body.decode()
        event = parse_event(json.loads(text), text)
        templates.append((len(templates), event.id, event.type, event.api_version, event.livemode,
                          event.created, event.object_id, event.stripe_customer, text))  # fmt: skip
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "create temporary table backlog_templates (n int, id text, type text, api_version"
            " text, livemode boolean, created bigint, object_id text, customer text, body text)"
        )
        with conn.cursor().copy("copy backlog_templates from stdin") as copy:
            for row in templates:
                copy.write_row(row)
        conn.execute(
            """
            insert into webhook_private.events
              (id, type, api_version, livemode, stripe_created, object_id, stripe_customer_id,
               payload, status, received_at)
            select 'evt_backlog_' || i, t.type, t.api_version, t.livemode, to_timestamp(t.created),
                   t.object_id, t.customer, replace(t.body, t.id, 'evt_backlog_' || i)::json,
                   'received', now() - interval '1 hour'
              from generate_series(0, %s - 1) i
              join backlog_templates t on t.n = i %% %s
            """,
            (count, BACKLOG_TEMPLATES),
        )
        conn.execute("vacuum analyze webhook_private.events")
        _checkpoint(conn)


def _checkpoint(conn: psycopg.Connection) -> None:
    """Flush what seeding wrote before anything is measured.

    Seeding a million rows leaves gigabytes of dirty pages and WAL; without a checkpoint
    here, the next run pays for them (slower fsyncs, full-page writes) and measures the
    seeding instead of the webhook.
    """
    try:
        conn.execute("checkpoint")
    except psycopg.errors.InsufficientPrivilege:
        print("note: no CHECKPOINT privilege; the first run may still be flushing the seed data")


def deliveries(
    count: int, customers: int, *, seed_value: int, mix: Mix = Mix()
) -> Iterator[tuple[str, bytes]]:
    """`count` unique signed deliveries: (Stripe-Signature header, raw body)."""
    rng = random.Random(seed_value)
    factory = EventFactory(start=SEED_CREATED + MONTH, seed=seed_value)
    for n in range(count):
        factory.clock = SEED_CREATED + MONTH + n  # strictly newer than all that came before
        i = rng.randint(1, customers)
        roll = rng.random()
        if roll < mix.updates:
            delivery = factory.subscription(
                "customer.subscription.updated",
                sub_id=f"sub_b{i}",
                customer=f"cus_b{i}",
                status="active",
                price_ids=[rng.choice(PRICES)],
            )
        elif roll < mix.updates + mix.renewals:
            delivery = factory.invoice(
                "invoice.paid",
                invoice_id=f"in_b{seed_value}_{n}",
                customer=f"cus_b{i}",
                subscription=f"sub_b{i}",
                billing_reason="subscription_cycle",
                price_ids=[rng.choice(PRICES)],
                period_start=factory.clock,
                period_end=factory.clock + MONTH,
            )
        else:
            delivery = factory.other(rng.choice(IGNORED_TYPES))
        yield sign(delivery.body, SECRET), delivery.body


def write_wrk_files(prefix: Path, items: Iterator[tuple[str, bytes]], threads: int) -> int:
    """Deal deliveries round-robin into one file per wrk thread; return how many."""
    handles = [open(f"{prefix}.{t}", "wb") for t in range(threads)]  # noqa: SIM115 - closed below
    written = 0
    try:
        for index, (signature, body) in enumerate(items):
            handles[index % threads].write(signature.encode() + b"\t" + body + b"\n")
            written += 1
    finally:
        for handle in handles:
            handle.close()
    return written
