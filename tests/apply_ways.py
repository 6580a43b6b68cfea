"""The two ways a rules test applies its deliveries: inline one by one, or queued.

Inline mode processes each delivery in its request; queued mode stores them all, then a
drain applies them in batches. A rule that holds must hold both ways, in the order given.
"""

from collections.abc import Callable

import psycopg
from stripe_events import Delivery

from webhook.core.config import DEFAULT_ENTITLED_STATUSES
from webhook.pipeline import inbox
from webhook.pipeline.drain import drain_until_empty
from webhook.pipeline.processor import ProcessingRules, process_delivery
from webhook.stripe.payloads import parse_event

STATUSES = frozenset(DEFAULT_ENTITLED_STATUSES)
RULES = ProcessingRules(entitled_statuses=STATUSES)


def one_by_one(db: psycopg.Connection, deliveries: list[Delivery]) -> None:
    """Inline mode: each delivery applied in its own request, in the order given."""
    for delivery in deliveries:
        process_delivery(db, parse_event(delivery.event, delivery.body.decode()), RULES)


def queued(db: psycopg.Connection, deliveries: list[Delivery]) -> None:
    """Queued mode: all stored in the order given, then drained."""
    for delivery in deliveries:
        inbox.receive(db, parse_event(delivery.event, delivery.body.decode()))
    drain_until_empty(db, RULES)


WAYS: dict[str, Callable[[psycopg.Connection, list[Delivery]], None]] = {
    "one_by_one": one_by_one,
    "queued": queued,
}
