"""One event at a time, the engine ends where the reference handler ends.

Every subscription event is decided by subscription_batch, also when it is applied alone
(a delivery in inline mode, a one-by-one replay). tests/reference_subscription_handler.py
states the same rule independently, reading and writing the database as it goes. These
tests apply the same random histories (ties, unknown prices, links by metadata, several
Stripe customers per user) through both, in the same shuffled order, and compare what
each event reported, every row the processor owns, and the audit log.
"""

import copy
import random

import pytest
from reference_subscription_handler import reference_handler
from replay_histories import RULES, add_team_plan, history, owned_rows, prepare, reported
from stripe_events import Delivery
from stripe_standin import API_KEY

from webhook.pipeline.processor import ProcessingRules
from webhook.pipeline.replay import replay_event


def audit_log(conn) -> list[tuple]:
    return conn.execute(
        "select customer_uuid, action, old_value, new_value, source from public.audit_logs"
        " order by id"
    ).fetchall()


def both_ways(conn, twin, deliveries, rules: ProcessingRules, seed: int) -> None:
    for db in (conn, twin):
        prepare(db, deliveries, backlog=True)
        if seed % 2:
            add_team_plan(db)
    ids = [d.id for d in deliveries if not d.type.startswith("checkout.")]
    random.Random(seed).shuffle(ids)

    engine = [replay_event(conn, event_id, rules) for event_id in ids]
    with reference_handler():
        reference = [replay_event(twin, event_id, rules) for event_id in ids]

    assert reported(engine) == reported(reference)
    assert owned_rows(conn) == owned_rows(twin)
    assert audit_log(conn) == audit_log(twin)


@pytest.mark.parametrize("seed", range(10))
def test_one_at_a_time_the_engine_ends_where_the_reference_ends(conn, twin, seed) -> None:
    both_ways(conn, twin, history(seed, team_last=seed % 3 == 0), RULES, seed)


def with_full_ties(deliveries: list[Delivery], rng: random.Random) -> list[Delivery]:
    """Every third subscription event gets a twin that ties it on the whole order key."""
    out = []
    for d in deliveries:
        out.append(d)
        if d.type.startswith("customer.subscription.") and rng.random() < 0.33:
            event = copy.deepcopy(d.event)
            event["id"] = event["id"][:-4] + "tie0"
            subscription = event["data"]["object"]
            subscription["cancel_at_period_end"] = not subscription.get("cancel_at_period_end")
            out.append(Delivery.from_event(event))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_with_stripe_settling_full_ties_too(conn, twin, standin, seed) -> None:
    """An API key and a Stripe that has each subscription's newest state: full ties (a
    second state in the same second, cancelling or not) are settled by asking it, the same
    way in both."""
    deliveries = with_full_ties(history(seed), random.Random(seed))
    newest = {}
    for d in sorted(deliveries, key=lambda d: d.event["created"]):
        if d.type.startswith("customer.subscription."):
            newest[d.event["data"]["object"]["id"]] = d.event["data"]["object"]
    standin.add("subscription", list(newest.values()))
    rules = ProcessingRules(
        RULES.entitled_statuses, stripe_api_key=API_KEY, stripe_api_base=standin.url
    )
    both_ways(conn, twin, deliveries, rules, seed)
    assert standin.answered(), "the histories have full ties"
