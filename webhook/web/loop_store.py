"""Storing the deliveries one event loop holds with as few inserts as it can.

The ASGI edge (asgi.py) reads, verifies and decodes every request of a worker on one
event loop; storing is the one step that waits for PostgreSQL. Inserts run on a small
thread pool with the same synchronous code as everywhere else (inbox.receive_many through
the worker's connection pool), at most `in_flight` at once, by default one. Deliveries
that arrive while an insert is on its way wait in a list and go in together with the next
one, up to `max_rows` per insert: at a light load each delivery is stored at once on its
own; under a heavy one a worker commits many events per transaction, which costs
PostgreSQL and the worker far less per event than one commit each (README, Benchmark).

Nothing here needs a lock: the list and the counter are only touched on the loop, and the
thread pool hands each insert's answers back to the loop.

The answers are those of grouped_store.store_together: each event's own; when the database
is unavailable, the deliveries queued meanwhile get the same 503 at once rather than each
waiting for a connection again; a data error in a grouped insert lands on its own event.

A database that stalls rather than fails (a migration holding the inbox's lock, a
saturated disk) gets the same answer within `timeout_seconds` of a delivery's arrival: an
insert is due back by then for the oldest delivery it carries (which may have waited in
the queue behind the one before); past that, its deliveries and those queued behind it get
503, and so does every delivery that arrives until the insert comes back. Stripe sends
them again later; if the late insert does commit, the redelivery finds its event stored
and is answered as a duplicate, so nothing is lost or stored twice.
"""

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from webhook.core.errors import DatabaseUnavailable
from webhook.database.pool import Database
from webhook.pipeline import inbox
from webhook.stripe.payloads import Event
from webhook.web.grouped_store import Answers, store_together

# Inserts one event loop runs at once. One keeps each worker's groups largest; measured on
# two cores, it applied more events per second than two or four (README, Benchmark).
INSERTS_IN_FLIGHT = 1
# Deliveries one worker holds waiting for an insert. A database that stalls rather than
# fails (a lock held by a migration, say) would otherwise let a worker take in bodies for
# as long as connections arrive; past this many, a delivery gets 503 at once and Stripe
# sends it again later. At a thousand events per second per worker, a full queue is some
# sixty inserts of sixteen.
QUEUE_LIMIT = 1_000

# A delivery waiting to be stored: the event, its request's answer, when it arrived (loop time).
_Waiting = tuple[Event, "asyncio.Future[inbox.Stored]", float]


@dataclass(eq=False)
class _Insert:
    """One insert on its way: the deliveries it carries, and when they are due (the timer
    is cancelled when the insert comes back, so it fires only for an insert still out)."""

    batch: list[_Waiting]
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class LoopStore:
    """The inbox as the requests of one event loop store into it."""

    def __init__(
        self,
        database: Database,
        max_rows: int,
        in_flight: int = INSERTS_IN_FLIGHT,
        timeout_seconds: float = 5.0,
    ) -> None:
        self._database = database
        self._max_rows = max_rows
        self._in_flight_limit = in_flight
        self._timeout_seconds = timeout_seconds
        self._threads = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="store")
        self._queue: list[_Waiting] = []
        self._in_flight = 0
        self._overdue: set[_Insert] = set()  # past their time and not back yet
        self._closed = False

    async def receive(self, event: Event) -> inbox.Stored:
        """What inbox.receive says of `event`, stored together with the others queued.

        Raises what storing raised (DatabaseUnavailable for an outage), for this event only.
        If the request goes away meanwhile, its event is still stored (a redelivery then
        finds it).
        """
        if self._closed:
            raise DatabaseUnavailable("this worker is shutting down")
        if self._overdue:
            raise self._stalled()
        if len(self._queue) >= QUEUE_LIMIT:
            raise DatabaseUnavailable(f"{QUEUE_LIMIT} deliveries already wait to be stored")
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[inbox.Stored] = loop.create_future()
        self._queue.append((event, answer, loop.time()))
        if self._in_flight < self._in_flight_limit:
            self._launch(loop)
        return await answer

    def close(self) -> None:
        """Let the inserts on their way finish; take no more (what is still queued then
        gets 503, and Stripe sends it again)."""
        self._closed = True
        self._threads.shutdown(wait=True)

    def _launch(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._queue[: self._max_rows]
        del self._queue[: self._max_rows]
        events = [event for event, _, _ in batch]
        try:
            work = self._threads.submit(store_together, self._database, events)
        except RuntimeError:  # closed meanwhile: the pool takes nothing more
            batch.extend(self._queue)
            self._queue.clear()
            _answer(batch, [DatabaseUnavailable("this worker is shutting down")] * len(batch))
            return
        self._in_flight += 1
        insert = _Insert(batch)
        oldest = min(arrived for _, _, arrived in batch)
        insert.timer = loop.call_at(oldest + self._timeout_seconds, self._past_its_time, insert)
        work.add_done_callback(lambda done: _call_on(loop, self._landed, loop, insert, done))

    def _stalled(self) -> DatabaseUnavailable:
        return DatabaseUnavailable(
            f"the database has not stored a delivery for {self._timeout_seconds:g} s"
        )

    def _past_its_time(self, insert: _Insert) -> None:
        """On the loop: the insert has not come back in time; answer its deliveries and
        everything queued 503 now (the insert itself carries on and may still commit)."""
        self._overdue.add(insert)
        stranded = [*insert.batch, *self._queue]
        self._queue.clear()
        _answer(stranded, [self._stalled()] * len(stranded))

    def _landed(
        self,
        loop: asyncio.AbstractEventLoop,
        insert: _Insert,
        done: "Future[tuple[Answers, DatabaseUnavailable | None]]",
    ) -> None:
        """On the loop: answer the batch, then start the next insert if any is queued."""
        self._in_flight -= 1
        if insert.timer is not None:
            insert.timer.cancel()
        self._overdue.discard(insert)
        batch = insert.batch
        try:
            answers, outage = done.result()
        except BaseException as exc:  # store_together answers for itself; this is a bug
            answers, outage = [exc] * len(batch), None
        if outage is not None:
            # Queued while the database was failing: the same answer, now.
            answers = [*answers, *[outage] * len(self._queue)]
            batch = [*batch, *self._queue]
            self._queue.clear()
        _answer(batch, answers)
        if self._queue and self._in_flight < self._in_flight_limit:
            self._launch(loop)


def _answer(batch: list[_Waiting], answers: Answers) -> None:
    """Hand each waiting request its answer (or error), unless it was cancelled meanwhile
    (its client went away)."""
    for (_, future, _), answer in zip(batch, answers, strict=True):
        if future.done():
            continue
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(answer)


def _call_on(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: object) -> None:
    """Hand an insert's result to the loop, unless the loop is gone (its server stopped
    after answering the insert's deliveries 503 on time): then nobody waits for it."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)
