"""Re-apply stored events through the same code path as a delivery.

For events that failed for a data reason (a missing plan, an unknown customer) once the
data is fixed, or to check what an event would do now (dry run: applied, reported, rolled
back). Ordering rules still hold: replaying an old subscription event cannot move the
mirror back to an older state.
"""

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psycopg

from webhook import inbox
from webhook.errors import ProjectError
from webhook.handlers.base import Outcome
from webhook.processor import ProcessingRules, apply
from webhook.stripe_objects import PayloadError, parse_event


class UnknownEvent(ProjectError):
    """The event id is not in the inbox, or its payload was purged."""


@dataclass(frozen=True)
class ReplayResult:
    """One replayed event and the plan of its customer before and after."""

    event_id: str
    event_type: str
    outcome: Outcome
    plan_before: int | None
    plan_after: int | None


def failed_event_ids(conn: psycopg.Connection, event_type: str | None = None) -> list[str]:
    """Ids of failed events still holding their payload, oldest first."""
    rows = conn.execute(
        "select id from webhook_private.events where status = 'failed' and payload is not null"
        " and (%s::text is null or type = %s) order by received_at, id",
        (event_type, event_type),
    ).fetchall()
    return [row[0] for row in rows]


def check_replayable(conn: psycopg.Connection, event_ids: Iterable[str]) -> None:
    """Raise UnknownEvent for the first id that is not in the inbox or has lost its payload.

    Called before anything is applied, so that `replay A B` with a mistyped B replays
    neither, instead of committing A and then stopping without having reported it.
    """
    ids = list(dict.fromkeys(event_ids))
    rows = conn.execute(
        "select id, payload is not null, purged_at from webhook_private.events where id = any(%s)",
        (ids,),
    ).fetchall()
    found = {event_id: (has_payload, purged_at) for event_id, has_payload, purged_at in rows}
    for event_id in ids:
        if event_id not in found:
            raise UnknownEvent(f"no event {event_id} in the inbox; nothing was replayed")
        has_payload, purged_at = found[event_id]
        if not has_payload:
            when = f" on {purged_at:%Y-%m-%d}" if purged_at is not None else ""
            raise UnknownEvent(
                f"the payload of event {event_id} was purged{when}, so it cannot be replayed;"
                " nothing was replayed"
            )


def replay_event(
    conn: psycopg.Connection, event_id: str, rules: ProcessingRules, *, dry_run: bool = False
) -> ReplayResult:
    """Apply one stored event again; with dry_run, roll everything back afterwards."""
    with conn.transaction(force_rollback=dry_run):
        payload = inbox.load_payload(conn, event_id)
        if payload is None:
            raise UnknownEvent(f"no stored payload for event {event_id} (unknown id, or purged)")
        try:
            event = parse_event(payload)
        except PayloadError as exc:
            raise UnknownEvent(f"stored event {event_id} is unusable: {exc}") from None
        conn.execute("select 1 from webhook_private.events where id = %s for update", (event_id,))
        outcome = apply(conn, event, rules, trigger="replay")
        customer = outcome.customer
        before = _plan_before(conn, customer)
        after = _plan(conn, customer)
    return ReplayResult(event_id, event.type, outcome, before, after)


def replay_many(
    conn: psycopg.Connection,
    event_ids: Iterable[str],
    rules: ProcessingRules,
    *,
    dry_run: bool = False,
    progress: Callable[[int, int], None] = lambda _done, _total: None,
) -> list[ReplayResult]:
    """Replay each event in its own transaction, in the order given."""
    ids = list(event_ids)
    check_replayable(conn, ids)
    results = []
    for index, event_id in enumerate(ids, start=1):
        results.append(replay_event(conn, event_id, rules, dry_run=dry_run))
        progress(index, len(ids))
    return results


def _plan(conn: psycopg.Connection, customer: uuid.UUID | None) -> int | None:
    if customer is None:
        return None
    row = conn.execute(
        "select plan_id from public.customer where uuid = %s", (customer,)
    ).fetchone()
    return row[0] if row else None


def _plan_before(conn: psycopg.Connection, customer: uuid.UUID | None) -> int | None:
    """The plan the customer had before this transaction's change, from the audit log."""
    if customer is None:
        return None
    row = conn.execute(
        """
        select (old_value ->> 'plan_id')::bigint from public.audit_logs
         where customer_uuid = %s and action = 'plan_change'
           and created_at = now()  -- written by this transaction
         order by id limit 1
        """,
        (customer,),
    ).fetchone()
    return row[0] if row else _plan(conn, customer)
