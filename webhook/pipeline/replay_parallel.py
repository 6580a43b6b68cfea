"""Replaying a long list of events on several connections at once.

One connection spends about as long waiting for PostgreSQL as PostgreSQL spends working,
so a replay of 100 000 events on one connection keeps one core busy at a time. Here the
events are split by the Stripe customer they are about (a subscription's, an invoice's, a
checkout's customer, or the customer of a `customer.*` event), each share is replayed in
the order given on a connection (and, on Linux, in a process) of its own, and the results
are handed back as each batch commits.

Every Stripe customer's events stay in order on one connection, so its links, unlinks,
subscriptions and renewals meet as in an in-order replay. Two shares meet only on one of
our customers with several Stripe customers: one waits for the other's batch (every batch
takes its locks in one sorted order; a deadlock or lock timeout with a one-by-one event is
retried, see replay), and the plan each computes reads the mirror after the other's commit.
Events about no Stripe customer (prices, products, a checkout without a customer) can
change what every other event does, so a replay that holds any of them is not split.
"""

import gc
import multiprocessing
import multiprocessing.connection
import os
import queue
import sys
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import psycopg

from webhook.core.errors import ProjectError
from webhook.pipeline.replay_result import ReplayResult

Batches = Iterator[list[ReplayResult]]

# The Stripe customer whose lock applying the event takes (Event.stripe_customer), as
# stored with the event; for an event stored before migration 011, or about no Stripe
# customer, read from the payload the same way: a customer event's own id, else the
# object's `customer`, an id or an expanded object. A column of webhook_private.events.
STORED_STRIPE_CUSTOMER = """coalesce(stripe_customer_id, case
         when type like 'customer.%%' and type not like 'customer.subscription.%%'
           then payload #>> '{data,object,id}'
         when json_typeof(payload #> '{data,object,customer}') = 'object'
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

    Each share runs in a process of its own where the system can fork (Linux): a batch is
    about as much Python work as PostgreSQL work, and threads of one process would take
    turns on its interpreter lock, leaving a core idle a fifth of the time. Elsewhere the
    shares run in threads.

    The first error a share raises stops the others after their batch in hand; every batch
    committed until then is still yielded, then the error is raised. Closing this iterator
    early stops them the same way. Either way every share has finished (and closed its
    connection) when this returns.
    """
    if FORK is None:
        return _run_in_threads(shares, connect, replay_share)
    return _run_in_processes(FORK, shares, connect, replay_share)


# Fork, not spawn: a forked share needs nothing pickled but its results, and sees the
# process as it was (settings, the rules, a test's patched batch size).
FORK = (
    multiprocessing.get_context("fork")
    if sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()
    else None
)


def _run_in_processes(
    context: Any,
    shares: Sequence[list[str]],
    connect: Callable[[], psycopg.Connection],
    replay_share: Callable[[psycopg.Connection, list[str]], Batches],
) -> Batches:
    stop = context.Event()
    children: list[tuple[Any, Any]] = []  # (process, the end of its pipe this side reads)
    for share in shares:
        reader, writer = context.Pipe(duplex=False)
        process = context.Process(
            target=_share_process, args=(writer, stop, connect, replay_share, share), daemon=True
        )
        process.start()
        writer.close()  # the child's copy stays open: end of file means it has finished
        children.append((process, reader))
    open_readers = {reader: process for process, reader in children}
    failure: BaseException | None = None
    try:
        while open_readers:
            for reader in multiprocessing.connection.wait(list(open_readers)):
                process = open_readers[reader]
                try:
                    kind, value = reader.recv()
                except EOFError:
                    del open_readers[reader]
                    process.join()
                    if process.exitcode != 0 and failure is None:
                        failure = ProjectError(
                            f"a replay worker ended with exit code {process.exitcode}"
                        )
                        stop.set()
                    continue
                if kind == "batch":
                    yield value
                elif failure is None:
                    failure = value
                    stop.set()
    finally:
        stop.set()
        for process, reader in children:
            while _still_sending(reader):
                pass  # what a stopped share still commits is not asked for any more
            process.join()
            reader.close()
    if failure is not None:
        raise failure


def _still_sending(reader: Any) -> bool:
    try:
        reader.recv()
    except (EOFError, OSError):
        return False
    return True


def _share_process(
    writer: Any,
    stop: Any,
    connect: Callable[[], psycopg.Connection],
    replay_share: Callable[[psycopg.Connection, list[str]], Batches],
    share: list[str],
) -> None:
    """One share, in a forked process: every committed batch sent back, then any error.

    Leaves with os._exit: what the parent had open (its connections, a pool's atexit hook,
    an embedded server's) belongs to the parent, and must not be closed from here.

    What the child inherited (the parent's list of a hundred thousand stored events among
    it) is frozen first: the garbage collector's full collections, several per batch of
    parsed payloads, would otherwise walk all of it again and again (measured: a quarter
    of the share's CPU, and replay --failed at 4,700 rows/s instead of 5,400).
    """
    gc.freeze()
    code = 0

    def send(kind: str, value: object) -> None:
        nonlocal code
        if kind == "error":
            code = 1
            try:
                writer.send((kind, value))
            except Exception:  # an error that cannot be pickled: its words will do
                writer.send((kind, ProjectError(f"replay worker failed: {value}")))
        else:
            writer.send((kind, value))

    try:
        _replay_share(send, stop, connect, replay_share, share)
    finally:
        writer.close()
        os._exit(code)


def _replay_share(
    send: Callable[[str, object], None],
    stop: Any,
    connect: Callable[[], psycopg.Connection],
    replay_share: Callable[[psycopg.Connection, list[str]], Batches],
    share: list[str],
) -> None:
    """Replay one share, sending ("batch", results) as each commits, or ("error", exc)."""
    try:
        with connect() as conn:
            for batch in replay_share(conn, share):
                send("batch", batch)  # committed: always handed over
                if stop.is_set():
                    return
    except BaseException as exc:  # handed to the caller, raised there
        send("error", exc)


def _run_in_threads(
    shares: Sequence[list[str]],
    connect: Callable[[], psycopg.Connection],
    replay_share: Callable[[psycopg.Connection, list[str]], Batches],
) -> Batches:
    landed: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
    stop = threading.Event()

    def work(share: list[str]) -> None:
        try:
            _replay_share(lambda *item: landed.put(item), stop, connect, replay_share, share)
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
