"""Random subscription histories for comparing replay paths, and the rows they leave.

Shared by the batch-replay, parallel-replay, drain and CLI tests: `history(seed)` gives
one user with several Stripe customers, unknown prices, links by metadata, invoices and
other types; `prepare` puts plans, users and the events in a database; `owned_rows` is
every row the processor writes, for comparing two databases.
"""

import json
import random
import uuid
from collections import Counter
from typing import Any

import psycopg
from stripe_events import API_VERSIONS, MONTH, Delivery, EventFactory

from webhook.core.config import DEFAULT_ENTITLED_STATUSES
from webhook.pipeline.processor import ProcessingRules, process_delivery
from webhook.stripe.payloads import parse_event, timestamp

RULES = ProcessingRules(entitled_statuses=frozenset(DEFAULT_ENTITLED_STATUSES))
USERS = [uuid.UUID(int=n) for n in range(1, 5)]
# Stripe customer -> our customer (None: never linked). User 3 has two Stripe customers.
OWNERS = {"cus_1": USERS[0], "cus_2": USERS[1], "cus_3": USERS[2], "cus_4": USERS[2], "cus_5": None}
SUBSCRIPTIONS = {"sub_1": "cus_1", "sub_2": "cus_2", "sub_3": "cus_3", "sub_4": "cus_4",
                 "sub_5": "cus_5", "sub_6": "cus_1"}  # fmt: skip
STATUSES = [
    "active",
    "active",
    "trialing",
    "past_due",
    "unpaid",
    "canceled",
    "incomplete",
    "paused",
]
# price_pro_yearly has no plan of its own: it grants Pro through its product.
PRICES = ["price_basic", "price_pro", "price_pro_yearly", "price_enterprise", "price_team",
          "price_seats"]  # fmt: skip
SUBSCRIPTION_TYPES = [
    "customer.subscription.updated",
    "customer.subscription.updated",
    "customer.subscription.created",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
]


def history(seed: int, *, team_last: bool = False) -> list[Delivery]:
    """Checkouts that link the Stripe customers, then a random subscription history.

    With `team_last`, the newest state of sub_1 is on price_team, which has no plan at
    first: its owner's events fail until the plan exists.
    """
    rng = random.Random(seed)
    factory = EventFactory(API_VERSIONS[seed % 2], seed=seed)
    factory.known_price("price_pro_yearly", product="prod_pro")
    start = factory.clock
    deliveries = [
        factory.checkout_completed(
            customer=stripe_id, subscription=None, client_reference_id=str(owner), created=start
        )
        for stripe_id, owner in OWNERS.items()
        if owner is not None
    ]
    for _ in range(45):
        created = start + rng.randint(1, 12)  # few seconds: many ties on `created`
        roll = rng.random()
        if roll < 0.06:
            deliveries.append(factory.other("charge.succeeded", created=created))
            continue
        if roll < 0.1:
            invoice = factory.new_id("in_")
            sub_id = rng.choice(list(SUBSCRIPTIONS))
            deliveries.append(
                factory.invoice("invoice.paid", invoice_id=invoice, customer=SUBSCRIPTIONS[sub_id],
                                subscription=sub_id, price_ids=[rng.choice(PRICES)],
                                period_start=created, period_end=created + MONTH, created=created)
            )  # fmt: skip
            continue
        sub_id = rng.choice(list(SUBSCRIPTIONS))
        metadata = {}
        if roll < 0.18:  # links by metadata: usually its own owner, sometimes someone else
            owner = OWNERS[SUBSCRIPTIONS[sub_id]] if rng.random() < 0.6 else rng.choice(USERS)
            metadata = {"customer_uuid": str(owner)}
        # Now and then a subscription names another Stripe customer: Stripe does not move
        # subscriptions, but the mirror must cope with any payload the same way twice.
        customer = SUBSCRIPTIONS[sub_id] if rng.random() > 0.05 else rng.choice(list(OWNERS))
        deliveries.append(
            factory.subscription(
                rng.choice(SUBSCRIPTION_TYPES),
                sub_id=sub_id,
                customer=customer,
                status=rng.choice(STATUSES),
                price_ids=rng.sample(PRICES, rng.choice([1, 1, 1, 2])),
                period_start=start + rng.choice([0, MONTH]),
                metadata=metadata,
                created=created,
            )
        )
    if team_last:
        deliveries.append(
            factory.subscription("customer.subscription.updated", sub_id="sub_1", customer="cus_1",
                                 status="active", price_ids=["price_team"], created=start + 60)
        )  # fmt: skip
    return deliveries


def prepare(conn: psycopg.Connection, deliveries: list[Delivery], *, backlog: bool = False) -> None:
    """Plans (but none for price_team), the users, and every event delivered once.

    With `backlog`, only the checkouts are applied; every other event is stored as failed
    without having been applied, as after an outage of the plan catalogue: the replay
    then does all the work.
    """
    conn.execute(
        """
        insert into public.plans (name, price, resources, stripe_price_id, stripe_product_id)
        values ('Basic', 9.99, '{"api_calls": 1000}', 'price_basic', null),
               ('Pro', 19.99, '{"api_calls": 5000}', 'price_pro', 'prod_pro'),
               ('Enterprise', 49.99, '{"api_calls": 20000}', 'price_enterprise', null)
        """
    )
    for user in USERS:
        conn.execute(
            "insert into auth.users (id, email) values (%s, %s)", (user, f"{user.hex}@x.test")
        )
    for delivery in deliveries:
        event = parse_event(json.loads(delivery.body), delivery.body.decode())
        if backlog and not event.type.startswith("checkout."):
            conn.execute(
                "insert into webhook_private.events (id, type, stripe_created, object_id, payload,"
                " status, error) values (%s, %s, %s, %s, %s, 'failed', 'backlog')",
                (
                    event.id,
                    event.type,
                    timestamp(event.created),
                    event.object_id,
                    delivery.body.decode(),
                ),
            )
        else:
            process_delivery(conn, event, RULES)


def add_team_plan(conn: psycopg.Connection) -> None:
    conn.execute(
        "insert into public.plans (name, price, resources, stripe_price_id)"
        " values ('Team', 29.00, '{\"api_calls\": 9000}', 'price_team')"
    )


def owned_rows(conn: psycopg.Connection) -> dict[str, Any]:
    """Every row the processor writes, without timestamps and surrogate ids."""
    query = {
        "customers": "select uuid, plan_id, stripe_customer_id, plan_resources,"
        " remaining_resources from public.customer order by uuid",
        "subscriptions": "select id, stripe_customer_id, status, price_ids, product_ids,"
        " current_period_end,"
        " cancel_at_period_end, cancel_at, ended_at, metadata, order_key, event_id"
        " from webhook_private.subscriptions order by id",
        "links": "select stripe_customer_id, customer_uuid, event_created, linked_by_event,"
        " deleted_at from webhook_private.customer_links order by 1",
        "inbox": "select id, status, error, attempts from webhook_private.events order by id",
        "resets": "select invoice_id, customer_uuid, period_start from"
        " webhook_private.resource_resets order by 1",
    }
    rows: dict[str, Any] = {name: conn.execute(sql).fetchall() for name, sql in query.items()}
    rows["attempts"] = Counter(
        conn.execute(
            "select event_id, trigger, outcome, error from webhook_private.event_attempts"
        ).fetchall()
    )
    return rows


def reported(results: list) -> list[tuple[Any, ...]]:
    return [
        (r.event_id, r.event_type, r.outcome.status, r.outcome.error, r.outcome.customer,
         r.plan_before, r.plan_after)
        for r in results
    ]  # fmt: skip
