"""Replaying a long list of events on several connections at once.

One connection spends about as long waiting for PostgreSQL as PostgreSQL spends working,
so a replay of 100 000 events on one connection keeps one core busy at a time. Here the
events are split by the Stripe object they are about (a subscription, an invoice, a
customer), each share is replayed in order on a connection of its own, and the results are
handed back as each batch commits.

Each object's events stay in the order given. Two shares meet only on a Stripe customer
with several subscriptions (or invoices) in both: there one share waits for the other's
batch, since every batch takes its locks in one sorted order; a deadlock with a one-by-one
event is retried (see replay). The final rows are the ones an in-order replay gives,
because the mirror and the plan rule are order-safe; only the order in which results are
reported, and the intermediate plans of such a customer, can differ.
"""

import queue
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import psycopg

from webhook.replay_result import ReplayResult

Batches = Iterator[list[ReplayResult]]
WAIT_SECONDS = 0.1


def split_by_object(
    event_ids: Sequence[str], object_of: Mapping[str, str | None], shares: int
) -> list[list[str]]:
    """The ids in up to `shares` lists (none empty), each object's in one, order kept."""
    split: list[list[str]] = [[] for _ in range(shares)]
    for event_id in event_ids:
        key = object_of.get(event_id) or ""
        split[zlib.crc32(key.encode()) % shares].append(event_id)
    return [share for share in split if share]


def run_shares(
    shares: Sequence[list[str]],
    connect: Callable[[], psycopg.Connection],
    replay_share: Callable[[psycopg.Connection, list[str]], Batches],
) -> Batches:
    """Replay each share on a connection of its own; yield each batch's results as it lands.

    The first error a share raises stops the others after their batch in hand and is
    raised here; so is closing this iterator early. Either way every thread has finished
    (and closed its connection) when this returns.
    """
    landed: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=4 * len(shares))
    stop = threading.Event()

    def hand_over(kind: str, value: object) -> None:
        while not stop.is_set():
            try:
                landed.put((kind, value), timeout=WAIT_SECONDS)
                return
            except queue.Full:
                continue

    def work(share: list[str]) -> None:
        try:
            with connect() as conn:
                for batch in replay_share(conn, share):
                    hand_over("batch", batch)
                    if stop.is_set():
                        return
        except BaseException as exc:  # handed to the caller, raised there
            hand_over("error", exc)
        finally:
            hand_over("done", None)

    threads = [threading.Thread(target=work, args=(share,), daemon=True) for share in shares]
    for thread in threads:
        thread.start()
    running = len(threads)
    try:
        while running:
            kind, value = landed.get()
            if kind == "batch":
                yield value  # type: ignore[misc]
            elif kind == "error":
                raise value  # type: ignore[misc]
            else:
                running -= 1
    finally:
        stop.set()
        for thread in threads:
            thread.join()
