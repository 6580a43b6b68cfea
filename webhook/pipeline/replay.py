"""Re-apply stored events through the same code path as a delivery.

For events that failed for a data reason (a missing plan, an unknown customer) once the
data is fixed, or to check what an event would do now (dry run: applied, reported, rolled
back). Ordering rules still hold: replaying an old subscription event cannot move the
mirror back to an older state.
"""

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg

from webhook.core.errors import ProjectError
from webhook.pipeline import inbox, replay_parallel
from webhook.pipeline.processor import ProcessingRules, as_failure, run_handler
from webhook.pipeline.replay_result import ReplayResult
from webhook.pipeline.subscription_batch import (
    BATCH_EVENTS,
    SUBSCRIPTION_TYPES,
    replay_subscription_run,
)
from webhook.stripe.payloads import Event, PayloadError, parse_event

LOCK_ATTEMPTS = 3
_T = TypeVar("_T")


class UnknownEvent(ProjectError):
    """The event id is not in the inbox, or its payload was purged."""


def failed_event_ids(conn: psycopg.Connection, event_type: str | None = None) -> list[str]:
    """Ids of failed events still holding their payload, oldest first."""
    rows = conn.execute(
        "select id from webhook_private.events where status = 'failed' and payload is not null"
        " and (%s::text is null or type = %s) order by received_at, id",
        (event_type, event_type),
    ).fetchall()
    return [row[0] for row in rows]


@dataclass(frozen=True)
class Replayable:
    """What a replay needs to know of a stored event before reading its payload."""

    type: str
    # Read only for a replay that may be split (see replay_parallel), else None.
    stripe_customer: str | None = None


def check_replayable(
    conn: psycopg.Connection, event_ids: Iterable[str], *, stripe_customers: bool = False
) -> dict[str, Replayable]:
    """Each event's type (and with `stripe_customers`, its Stripe customer); raise
    UnknownEvent for the first id not in the inbox or purged.

    Called before anything is applied, so that `replay A B` with a mistyped B replays
    neither, instead of committing A and then stopping without having reported it.
    """
    ids = list(dict.fromkeys(event_ids))
    customer = replay_parallel.STORED_STRIPE_CUSTOMER if stripe_customers else "null"
    rows = conn.execute(
        f"select id, type, payload is not null, purged_at, status, {customer}"
        " from webhook_private.events where id = any(%s)",
        (ids,),
    ).fetchall()
    found = {row[0]: (row[2], row[3], row[4]) for row in rows}
    for event_id in ids:
        if event_id not in found:
            raise UnknownEvent(f"no event {event_id} in the inbox; nothing was replayed")
        has_payload, purged_at, status = found[event_id]
        if status == "received":
            raise UnknownEvent(
                f"event {event_id} is queued: the drain applies it (see `python -m webhook"
                " events --status received`); nothing was replayed"
            )
        if not has_payload:
            when = f" on {purged_at:%Y-%m-%d}" if purged_at is not None else ""
            raise UnknownEvent(
                f"the payload of event {event_id} was purged{when}, so it cannot be replayed;"
                " nothing was replayed"
            )
    return {row[0]: Replayable(row[1], row[5]) for row in rows}


def replay_event(
    conn: psycopg.Connection,
    event_id: str,
    rules: ProcessingRules,
    *,
    dry_run: bool = False,
    trigger: str = "replay",
) -> ReplayResult:
    """Apply one stored event again; with dry_run, roll everything back afterwards.

    The same handler as a delivery, in pipeline mode. A data error rolls the attempt back
    and a second transaction records it, exactly as for a delivery.
    """
    started = time.perf_counter()
    event: Event | None = None
    try:
        with conn.pipeline(), conn.transaction(force_rollback=dry_run):
            event = _claim(conn, event_id, rules)
            outcome = run_handler(conn, event, rules)
            inbox.record(conn, event_id, outcome, trigger, (time.perf_counter() - started) * 1000)
            before, after = _plans(conn, outcome.customer)
        return ReplayResult(event_id, event.type, outcome, before, after)
    except Exception as exc:
        if event is None:
            raise  # unknown, purged or unreachable: nothing to record
        failure = as_failure(exc, event)  # re-raises what means "retry later"
    with conn.pipeline(), conn.transaction(force_rollback=dry_run):
        _claim(conn, event_id, rules)
        inbox.record(conn, event_id, failure, trigger, (time.perf_counter() - started) * 1000)
    return ReplayResult(event_id, event.type, failure, None, None)


def _claim(conn: psycopg.Connection, event_id: str, rules: ProcessingRules) -> Event:
    """Lock the stored event, set this transaction's limits, and parse its payload.

    Replays can be run again at will, so their commits do not wait for the disk
    (synchronous_commit off): a crash loses at most the last moments of a replay.
    """
    row = conn.execute(
        """
        select e.payload, set_config('lock_timeout', %(lock)s, true),
               set_config('statement_timeout', %(statement)s, true),
               set_config('webhook.source', 'stripe:' || e.id, true),
               set_config('synchronous_commit', 'off', true)
          from webhook_private.events e where e.id = %(id)s for update of e
        """,
        {
            "id": event_id,
            "lock": f"{rules.lock_timeout_ms}ms",
            "statement": f"{rules.statement_timeout_ms}ms",
        },
    ).fetchone()
    if row is None or row[0] is None:
        raise UnknownEvent(f"no stored payload for event {event_id} (unknown id, or purged)")
    try:
        return parse_event(row[0])
    except PayloadError as exc:
        raise UnknownEvent(f"stored event {event_id} is unusable: {exc}") from None


def replay_many(
    conn: psycopg.Connection,
    event_ids: Iterable[str],
    rules: ProcessingRules,
    *,
    dry_run: bool = False,
    progress: Callable[[int, int], None] = lambda _done, _total: None,
) -> list[ReplayResult]:
    """Replay the events in the order given, and say what each one did."""
    return list(iter_replay(conn, event_ids, rules, dry_run=dry_run, progress=progress))


def iter_replay(
    conn: psycopg.Connection,
    event_ids: Iterable[str],
    rules: ProcessingRules,
    *,
    dry_run: bool = False,
    progress: Callable[[int, int], None] = lambda _done, _total: None,
    trigger: str = "replay",
    connect: Callable[[], psycopg.Connection] | None = None,
    workers: int = 1,
) -> Iterator[ReplayResult]:
    """Replay the events in the order given, yielding each result once it is committed.

    Consecutive subscription events go through the batch path (see subscription_batch), up to
    BATCH_EVENTS per transaction; every other event, and any the batch path leaves, gets
    a transaction of its own. With dry_run each transaction is rolled back, so a dry run
    shows each batch's effect on its own. Every id is checked before anything is applied.
    Yielding as it goes keeps a replay of 100 000 events from holding (and the garbage
    collector from walking) 100 000 results, and lets the CLI print what is already done.

    With `workers` > 1 and `connect` (which opens an autocommit connection), a replay of
    more than one batch is split by Stripe customer over that many connections (see
    replay_parallel): each Stripe customer's events still in the order given, the results
    reported as each batch commits. A replay holding an event about no Stripe customer (a
    price, a product) runs in order on `conn`.
    """
    ids = list(event_ids)
    may_split = workers > 1 and connect is not None and len(ids) > BATCH_EVENTS
    stored = check_replayable(conn, ids, stripe_customers=may_split)
    shares = (
        replay_parallel.split_by_stripe_customer(
            ids, {event_id: s.stripe_customer for event_id, s in stored.items()}, workers
        )
        if may_split
        else None
    )
    if shares is not None and connect is not None:

        def replay_share(
            share_conn: psycopg.Connection, share: list[str]
        ) -> Iterator[list[ReplayResult]]:
            return _batches(share_conn, share, stored, rules, dry_run, trigger)

        batches = replay_parallel.run_shares(shares, connect, replay_share)
    else:
        batches = _batches(conn, ids, stored, rules, dry_run, trigger)
    done = 0
    for batch in batches:
        done += len(batch)
        yield from batch
        progress(done, len(ids))


def _batches(
    conn: psycopg.Connection,
    ids: list[str],
    stored: dict[str, Replayable],
    rules: ProcessingRules,
    dry_run: bool,
    trigger: str,
) -> Iterator[list[ReplayResult]]:
    """The results of `ids` replayed in order, one list per committed transaction or run."""
    done = 0
    while done < len(ids):
        run = _subscription_run(ids, stored, done)
        applied = (
            _retried(replay_subscription_run, conn, run, rules, dry_run=dry_run, trigger=trigger)
            if run
            else []
        )
        if applied is None:  # the database refused part of the batch: find which, one by one
            applied = [
                _retried(replay_event, conn, event_id, rules, dry_run=dry_run, trigger=trigger)
                for event_id in run
            ]
        elif not applied:
            applied = [
                _retried(replay_event, conn, ids[done], rules, dry_run=dry_run, trigger=trigger)
            ]
        done += len(applied)
        yield applied


def _retried(apply: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Run one replay transaction, again if it lost a deadlock or waited too long for a lock.

    A parallel replay meets both (two connections on one customer's rows, one waiting for
    the other's batch); the transaction was rolled back whole, so running it again is safe.
    """
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            return apply(*args, **kwargs)
        except (psycopg.errors.DeadlockDetected, psycopg.errors.LockNotAvailable):
            if attempt == LOCK_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _subscription_run(ids: list[str], stored: dict[str, Replayable], start: int) -> list[str]:
    """The subscription events from `start` on, up to the first other one or BATCH_EVENTS."""
    run: list[str] = []
    for event_id in ids[start : start + BATCH_EVENTS]:
        event = stored.get(event_id)
        if event is None or event.type not in SUBSCRIPTION_TYPES:
            break
        run.append(event_id)
    return run


def _plans(conn: psycopg.Connection, customer: uuid.UUID | None) -> tuple[int | None, int | None]:
    """The customer's plan before this transaction changed it (from its audit row), and now."""
    if customer is None:
        return None, None
    row = conn.execute(
        """
        select (select (a.old_value ->> 'plan_id')::bigint from public.audit_logs a
                 where a.customer_uuid = c.uuid and a.action = 'plan_change'
                   and a.created_at = now()  -- written by this transaction
                 order by a.id limit 1),
               exists (select from public.audit_logs a
                        where a.customer_uuid = c.uuid and a.action = 'plan_change'
                          and a.created_at = now()),
               c.plan_id
          from public.customer c where c.uuid = %s
        """,
        (customer,),
    ).fetchone()
    if row is None:
        return None, None
    before, changed, now_plan = row
    return (before if changed else now_plan), now_plan
