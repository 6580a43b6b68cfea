"""Which of two states of one subscription is the newer one, without trusting delivery order.

Stripe delivers events in no particular order, and `created` has one-second resolution, so
a subscription's created/updated pair often share a second. Each state gets a key that
sorts later states higher; the mirror keeps the state with the highest key. Because the
winner is a maximum, the same events applied in any order, any number of times, end in
the same row, and in the row in-order delivery gives for real lifecycles:

1. the event's `created` second;
2. on a tie, a terminal state (canceled, incomplete_expired) wins: Stripe never revives one;
3. then the later start of the billing period: a period starts when it begins (a renewal,
   a change of interval, a reset billing anchor, a trial's end), so the start only moves
   forward, while the end can move back (yearly to monthly ends the year early);
4. then the later end of the period (a trial extended within its period);
5. then the event type: `created` comes before any update, `deleted` after all;
6. then how far the status has gone in the lifecycle (incomplete before active, ...).

The event id breaks any remaining tie, arbitrarily but the same way every time: byte by
byte (COLLATE "C" in SQL, as Python compares strings), whatever the database's collation.

A state read from Stripe's API by `sync` is as of the moment it was read: it beats every
event created in an earlier second and loses to every event created in that second or
later (fetched_order_key), so a sync never undoes a change it did not see.
"""

from webhook.stripe.payloads import SubscriptionState

TERMINAL_STATUSES = frozenset({"canceled", "incomplete_expired"})

_STATUS_PROGRESS = {
    "incomplete": 0,
    "trialing": 1,
    "active": 2,
    "past_due": 3,
    "unpaid": 4,
    "paused": 5,
    "incomplete_expired": 6,
    "canceled": 7,
}

_TYPE_RANK = {
    "customer.subscription.created": 0,
    "customer.subscription.deleted": 2,
}


def subscription_order_key(
    event_created: int, event_type: str, state: SubscriptionState
) -> list[int]:
    """The sort key of a subscription state, as stored in subscriptions.order_key."""
    return [
        event_created,
        1 if state.status in TERMINAL_STATUSES else 0,
        state.current_period_start or 0,
        state.current_period_end or 0,
        _TYPE_RANK.get(event_type, 1),
        _STATUS_PROGRESS.get(state.status, 0),
    ]


def is_full_tie(a: list[int], b: list[int]) -> bool:
    """True when two keys cannot say which state is newer (only the event id differs)."""
    return list(a) == list(b)


def fetched_order_key(requested_at: int, state: SubscriptionState) -> list[int]:
    """The sort key of a state fetched from Stripe's API by a request sent at `requested_at`.

    Events created before that second happened before the read, so the fetched state
    includes them and wins. Events of that second or later may have happened after it, so
    they win: the rest of the key is below any event's. A terminal state stays terminal,
    as for events (Stripe never revives one).
    """
    return [requested_at, 1 if state.status in TERMINAL_STATUSES else 0, -1, -1, -1, -1]
