"""Replaying a long list of events on several connections at once.

One connection spends about as long waiting for PostgreSQL as PostgreSQL spends working,
so a replay of 100 000 events on one connection keeps one core busy at a time. Here the
events are split by the Stripe customer they are about (a subscription's, an invoice's, a
checkout's customer, or the customer of a `customer.*` event), each share is replayed in
the order given on a connection of its own, and the results are handed back as each batch
commits.

Every Stripe customer's events stay in order on one connection, so its links, unlinks,
subscriptions and renewals meet as in an in-order replay. Two shares meet only on one of
our customers with several Stripe customers: one waits for the other's batch (every batch
takes its locks in one sorted order; a deadlock or lock timeout with a one-by-one event is
retried, see replay), and the plan each computes reads the mirror after the other's commit.
Events about no Stripe customer (prices, products, a checkout without a customer) can
change what every other event does, so a replay that holds any of them is not split.
"""

import queue
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import psycopg

from webhook.pipeline.replay_result import ReplayResult

Batches = Iterator[list[ReplayResult]]

# The Stripe customer whose lock applying the event takes (Event.stripe_customer), as
# stored with the event; for an event stored before migration 011, or about no Stripe
# customer, read from the payload the same way: a customer event's own id, else the
# object's `customer`, an id or an expanded object. A column of webhook_private.events.
STORED_STRIPE_CUSTOMER = """coalesce(stripe_customer_id, case
         when type like 'customer.%%' and type not like 'customer.subscription.%%'
           then payload #>> '{data,object,id}'
         when jsonb_typeof(payload #> '{data,object,customer}') = 'object'
           then payload #>> '{data,object,customer,id}'
         else payload #>> '{data,object,customer}'
       end)"""


def split_by_stripe_customer(
    event_ids: Sequence[str], customer_of: Mapping[str, str | None], shares: int
) -> list[list[str]] | None:
    """The ids in up to `shares` lists (none empty), each Stripe customer's in one, order
    kept; None when some event is about no Stripe customer (then replay them in order).

    `customer_of` maps each id to its STORED_STRIPE_CUSTOMER."""
    split: list[list[str]] = [[] for _ in range(shares)]
    for event_id in event_ids:
        customer = customer_of.get(event_id)
        if not customer:
            return None
        split[zlib.crc32(customer.encode()) % shares].append(event_id)
    return [share for share in split if share]


def run_shares(
    shares: Sequence[list[str]],
    connect: Callable[[], psycopg.Connection],
    replay_share: Callable[[psycopg.Connection, list[str]], Batches],
) -> Batches:
    """Replay each share on a connection of its own; yield each batch's results as it lands.

    The first error a share raises stops the others after their batch in hand; every batch
    committed until then is still yielded, then the error is raised. Closing this iterator
    early stops them the same way. Either way every thread has finished (and closed its
    connection) when this returns.
    """
    landed: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
    stop = threading.Event()

    def work(share: list[str]) -> None:
        try:
            with connect() as conn:
                for batch in replay_share(conn, share):
                    landed.put(("batch", batch))  # committed: always handed over
                    if stop.is_set():
                        return
        except BaseException as exc:  # handed to the caller, raised there
            landed.put(("error", exc))
        finally:
            landed.put(("done", None))

    threads = [threading.Thread(target=work, args=(share,), daemon=True) for share in shares]
    for thread in threads:
        thread.start()
    running, failure = len(threads), None
    try:
        while running:
            kind, value = landed.get()
            if kind == "batch":
                yield value  # type: ignore[misc]
            elif kind == "error":
                stop.set()
                failure = failure or value
            else:
                running -= 1
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    if failure is not None:
        raise failure  # type: ignore[misc]
