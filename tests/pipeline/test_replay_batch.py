"""Batch replay ends where one-by-one replay ends.

The batch path (webhook/pipeline/subscription_batch.py) decides a run of subscription events in memory and
writes the net result. These tests build the same inbox in two databases (random
subscription histories with ties, unknown prices, unlinked and several Stripe customers,
links by metadata, other event types in between), replay the same ids through
`replay_many` in one and event by event in the other, and compare every row the processor
owns, and what each replay reported.
"""

import json
import random
from typing import Any

import pytest
from databases import refuse_writes
from replay_histories import (
    RULES,
    USERS,
    add_team_plan,
    history,
    owned_rows,
    prepare,
    reported,
)
from stripe_events import EventFactory
from stripe_standin import API_KEY

from webhook.pipeline import subscription_batch
from webhook.pipeline.processor import ProcessingRules, process_delivery
from webhook.pipeline.replay import replay_event, replay_many
from webhook.pipeline.subscription_batch import replay_subscription_run
from webhook.stripe.payloads import parse_event


@pytest.mark.parametrize("seed", range(12))
def test_batch_replay_of_a_backlog_ends_where_one_by_one_replay_ends(
    conn, twin, seed, batched_events
) -> None:
    deliveries = history(seed, team_last=seed % 3 == 0)
    for db in (conn, twin):
        prepare(db, deliveries, backlog=True)
        if seed % 2:
            add_team_plan(db)
    assert owned_rows(conn) == owned_rows(twin)
    ids = [d.id for d in deliveries if not d.type.startswith("checkout.")]
    random.Random(seed).shuffle(ids)

    batched = replay_many(conn, ids, RULES)
    one_by_one = [replay_event(twin, event_id, RULES) for event_id in ids]

    assert reported(batched) == reported(one_by_one)
    assert owned_rows(conn) == owned_rows(twin)
    assert batched_events["events"] >= len(ids) // 3  # the batch path did most of the work


@pytest.mark.parametrize("seed", range(4))
def test_batch_replay_of_applied_events_ends_where_one_by_one_replay_ends(
    conn, twin, seed, batched_events
) -> None:
    deliveries = history(seed)
    for db in (conn, twin):
        prepare(db, deliveries)
        add_team_plan(db)
    ids = [d.id for d in deliveries]
    random.Random(seed).shuffle(ids)
    plain = [
        d.id
        for d in deliveries
        if d.type.startswith("customer.subscription.") and not d.object.get("metadata")
    ]
    ids = plain[:2] * 2 + ids  # `replay A B A B ...`: repeated ids inside one batch-sized run

    batched = replay_many(conn, ids, RULES)
    one_by_one = [replay_event(twin, event_id, RULES) for event_id in ids]

    assert reported(batched) == reported(one_by_one)
    assert owned_rows(conn) == owned_rows(twin)
    assert batched_events["events"] >= len(ids) // 3


@pytest.mark.parametrize("seed", range(12, 16))
def test_batch_replay_of_the_failed_events_matches_too(conn, twin, seed, batched_events) -> None:
    deliveries = history(seed, team_last=True)
    for db in (conn, twin):
        prepare(db, deliveries)
    failed = [
        row[0]
        for row in conn.execute(
            "select id from webhook_private.events where status = 'failed' order by received_at, id"
        )
    ]
    assert deliveries[-1].id in failed
    for db in (conn, twin):
        add_team_plan(db)

    batched = replay_many(conn, failed, RULES)
    one_by_one = [replay_event(twin, event_id, RULES) for event_id in failed]

    assert reported(batched) == reported(one_by_one)
    assert owned_rows(conn) == owned_rows(twin)
    assert batched_events["events"] > 0


def test_batch_replay_reports_failures_like_one_by_one(conn, twin, batched_events) -> None:
    """Without the Team plan, events on price_team fail again, in both paths alike."""
    deliveries = history(3, team_last=True)
    for db in (conn, twin):
        prepare(db, deliveries)
    ids = [d.id for d in deliveries]

    batched = replay_many(conn, ids, RULES)
    one_by_one = [replay_event(twin, event_id, RULES) for event_id in ids]

    assert reported(batched) == reported(one_by_one)
    assert owned_rows(conn) == owned_rows(twin)
    assert batched_events["failed"] > 0


def test_a_batch_writes_one_plan_change_per_customer_naming_its_event(conn) -> None:
    """Basic -> Pro -> Enterprise within one batch: one audit row, from the last event."""
    deliveries = [
        EventFactory(seed=7).checkout_completed(
            customer="cus_1", subscription=None, client_reference_id=str(USERS[0])
        )
    ]
    factory = EventFactory(seed=8)
    for step, price in enumerate(["price_basic", "price_pro", "price_enterprise"], start=1):
        deliveries.append(
            factory.subscription("customer.subscription.updated", sub_id="sub_1", customer="cus_1",
                                 status="active", price_ids=[price], created=factory.clock + step)
        )  # fmt: skip
    prepare(conn, deliveries, backlog=True)
    ids = [d.id for d in deliveries[1:]]

    results = replay_many(conn, ids, RULES)

    enterprise = conn.execute("select id from public.plans where name = 'Enterprise'").fetchone()[0]
    assert [r.plan_after for r in results][-1] == enterprise
    audit = conn.execute(
        "select old_value ->> 'plan_id', new_value ->> 'plan_id', source from public.audit_logs"
        " where customer_uuid = %s and action = 'plan_change' order by id",
        (USERS[0],),
    ).fetchall()
    assert audit == [(None, str(enterprise), f"stripe:{ids[-1]}")]


def full_tie(factory: EventFactory) -> list:
    """A link, then two states of one subscription that only their event ids tell apart."""
    deliveries = [
        factory.checkout_completed(
            customer="cus_1", subscription=None, client_reference_id=str(USERS[0])
        )
    ]
    for price in ("price_basic", "price_pro"):
        deliveries.append(
            factory.subscription("customer.subscription.updated", sub_id="sub_1", customer="cus_1",
                                 status="active", price_ids=[price], created=factory.clock + 5,
                                 period_start=factory.clock)
        )  # fmt: skip
    return deliveries


@pytest.mark.parametrize("reverse", [False, True])
def test_with_a_stripe_key_a_full_tie_in_a_run_takes_stripes_current_state(
    conn, standin, reverse
) -> None:
    """The run asks Stripe, as one event at a time would, and goes on with the rest."""
    deliveries = full_tie(EventFactory(seed=9))
    basic = deliveries[1].event["data"]["object"]
    standin.add("subscription", [basic])  # Stripe has the Basic state now
    prepare(conn, deliveries, backlog=True)
    ids = [d.id for d in deliveries[1:]]
    if reverse:
        ids.reverse()
    rules = ProcessingRules(
        RULES.entitled_statuses, stripe_api_key=API_KEY, stripe_api_base=standin.url
    )

    applied = replay_subscription_run(conn, ids, rules, dry_run=False)

    assert [r.event_id for r in applied] == ids
    assert {r.outcome.status for r in applied} == {"processed"}
    assert [entry.path for entry in standin.answered()] == ["/v1/subscriptions/sub_1"]
    assert conn.execute(
        "select price_ids, event_id from webhook_private.subscriptions where id = 'sub_1'"
    ).fetchone() == (["price_basic"], max(ids))
    basic_plan = conn.execute("select id from public.plans where name = 'Basic'").fetchone()[0]
    assert conn.execute(
        "select plan_id from public.customer where uuid = %s", (USERS[0],)
    ).fetchone() == (basic_plan,)


def test_a_full_tie_in_a_run_ends_where_one_event_at_a_time_ends(conn, twin, standin) -> None:
    deliveries = full_tie(EventFactory(seed=10))
    standin.add("subscription", [deliveries[2].event["data"]["object"]])
    for db in (conn, twin):
        prepare(db, deliveries, backlog=True)
    ids = [d.id for d in deliveries[1:]]
    rules = ProcessingRules(
        RULES.entitled_statuses, stripe_api_key=API_KEY, stripe_api_base=standin.url
    )

    batched = replay_many(conn, ids, rules)
    one_by_one = [replay_event(twin, event_id, rules) for event_id in ids]

    assert reported(batched) == reported(one_by_one)
    assert owned_rows(conn) == owned_rows(twin)
    assert len(standin.answered()) == 2  # once in the run, once one at a time


def test_a_write_the_database_refuses_is_found_one_event_at_a_time(conn) -> None:
    """The batch rolls back whole; one by one, only the refused event fails."""
    deliveries = history(5)
    prepare(conn, deliveries, backlog=True)
    add_team_plan(conn)
    refuse_writes(
        conn, "webhook_private.subscriptions", "new.status = 'unpaid'", "unpaid refused by test"
    )
    ids = [d.id for d in deliveries if d.type.startswith("customer.subscription.")]

    results = replay_many(conn, ids, RULES)

    refused = {
        r.event_id for r in results if r.outcome.error and "unpaid refused" in r.outcome.error
    }
    unpaid = conn.execute(
        "select id from webhook_private.events where payload -> 'data' -> 'object' ->> 'status' = 'unpaid'"
        " and id = any(%s)",
        (ids,),
    ).fetchall()
    assert refused and refused <= {row[0] for row in unpaid}
    assert sum(r.outcome.status == "processed" for r in results) > len(ids) // 2
    assert conn.execute(
        "select count(*) from webhook_private.subscriptions where status = 'unpaid'"
    ).fetchone() == (0,)


def test_a_plan_that_comes_back_within_a_batch_gets_the_move_away_and_back(conn) -> None:
    """Basic -> Pro -> Basic: two audit rows naming their events, and the resources reset."""
    factory = EventFactory(seed=10)
    link = factory.checkout_completed(
        customer="cus_1", subscription=None, client_reference_id=str(USERS[0])
    )
    steps = [
        factory.subscription("customer.subscription.updated", sub_id="sub_1", customer="cus_1",
                             status="active", price_ids=[price], created=factory.clock + n)
        for n, price in enumerate(["price_basic", "price_pro", "price_basic"], start=1)
    ]  # fmt: skip
    prepare(conn, [link, *steps[1:]], backlog=True)
    process_delivery(conn, parse_event(json.loads(steps[0].body)), RULES)
    conn.execute(
        "update public.customer set remaining_resources = '{\"api_calls\": 3}' where uuid = %s",
        (USERS[0],),
    )
    conn.execute("delete from public.audit_logs")

    replay_many(conn, [d.id for d in steps[1:]], RULES)

    plans = dict(conn.execute("select name, id from public.plans").fetchall())
    rows = conn.execute(
        "select old_value ->> 'plan_id', new_value ->> 'plan_id', source from public.audit_logs"
        " where customer_uuid = %s and action = 'plan_change' order by id",
        (USERS[0],),
    ).fetchall()
    basic, pro = str(plans["Basic"]), str(plans["Pro"])
    assert rows == [(basic, pro, f"stripe:{steps[1].id}"), (pro, basic, f"stripe:{steps[2].id}")]
    remaining = conn.execute(
        "select remaining_resources from public.customer where uuid = %s", (USERS[0],)
    ).fetchone()
    assert remaining == ({"api_calls": 1000},)


def test_a_fault_in_the_batch_path_falls_back_to_one_by_one(conn, twin, monkeypatch) -> None:
    deliveries = history(6)
    for db in (conn, twin):
        prepare(db, deliveries, backlog=True)
        add_team_plan(db)
    ids = [d.id for d in deliveries if not d.type.startswith("checkout.")]

    def broken(*_args: Any) -> None:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(subscription_batch, "_decide", broken)
    batched = replay_many(conn, ids, RULES)
    one_by_one = [replay_event(twin, event_id, RULES) for event_id in ids]

    assert reported(batched) == reported(one_by_one)
    assert owned_rows(conn) == owned_rows(twin)
