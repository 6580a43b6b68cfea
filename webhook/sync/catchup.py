"""`python -m webhook sync --events --since 72h`: catch up on events after an outage.

Stripe retries a failed delivery for three days in live mode (a few hours in a sandbox),
and never delivers what it created while an endpoint was disabled. Its API keeps every
event for 30 days, so this lists the events of the handled types created since then and
applies each one the inbox does not hold yet, oldest first, through the drain's engine
(batches of subscription events, the handlers for the rest), with the same outcome as a
delivery. Events already delivered change nothing.

It does not filter on `delivery_success=false`: that flag is per account, not per
endpoint, and it misses the events created while an endpoint was disabled. Listed events
are rendered in the API version current when each was created, so both payload shapes
arrive mixed; the handlers read both.

Two resumable phases (runs.py): `events` stores the missing events page by page (as
`received`, with no delivery), `apply` applies the stored ones.
"""

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg

from webhook.core.errors import ProjectError
from webhook.pipeline.drain import Applied, drain_batch
from webhook.pipeline.handlers import HANDLERS
from webhook.pipeline.processor import ProcessingRules
from webhook.stripe.client import Page, StripeAPI, read_ahead
from webhook.stripe.payloads import Event, PayloadError, parse_event, timestamp
from webhook.sync import runs

# How long Stripe keeps events (GET /v1/events goes back this far).
RETENTION = timedelta(days=30)
EVENTS, APPLY = "events", "apply"
APPLY_CHUNK = 1000


@dataclass
class CatchUpReport:
    """What a catch-up listed, stored and applied."""

    run_id: int = 0
    resumed: bool = False
    since: datetime | None = None
    counts: dict[str, int] = field(default_factory=dict)
    missing_by_type: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)


def handled_types() -> list[str]:
    """The event types worth fetching: those with a handler (Stripe takes up to 20)."""
    types = sorted(HANDLERS)
    assert len(types) <= 20, "GET /v1/events takes at most 20 types: list them in two passes"
    return types


def check_window(since: timedelta) -> None:
    """Refuse a window Stripe cannot serve, saying what to run instead."""
    if since > RETENTION:
        days = since.total_seconds() / 86_400
        raise ProjectError(
            f"--since covers {days:g} days, but Stripe keeps events for 30 days only:"
            " run a full `python -m webhook sync` instead"
        )


def catch_up(
    conn: psycopg.Connection,
    api: StripeAPI,
    rules: ProcessingRules,
    since: timedelta,
    *,
    dry_run: bool = False,
    restart: bool = False,
    on_result: Callable[[Applied], None] = lambda _result: None,
    progress: Callable[[str, int], None] = lambda _phase, _count: None,
) -> CatchUpReport:
    """List, store and apply the missing events of the window; `conn` in autocommit mode."""
    check_window(since)
    start_at = datetime.now(UTC) - since
    report = CatchUpReport(since=start_at)
    if dry_run:
        for page in api.list_pages("/v1/events", _filters(start_at)):
            _count_missing(conn, page, report)
            progress(EVENTS, report.counts.get("events_listed", 0))
        return report
    run = runs.start(conn, "events", EVENTS, restart=restart, since=start_at)
    report.run_id, report.resumed, report.since, report.counts = (
        run.id,
        run.resumed,
        run.since,
        run.counts,
    )
    try:
        if run.phase == EVENTS:
            assert run.since is not None
            for page in read_ahead(api.list_pages("/v1/events", _filters(run.since), run.cursor)):
                with conn.transaction():
                    _store_missing(conn, run, page)
                progress(EVENTS, run.counts.get("events_listed", 0))
            runs.advance(conn, run, APPLY)
        if run.phase == APPLY:
            _apply_stored(conn, run, rules, report, on_result, progress)
    except BaseException:
        runs.release(conn, run)
        raise
    runs.finish(conn, run)
    return report


def _filters(start_at: datetime) -> list[tuple[str, str]]:
    types = [(f"types[{n}]", name) for n, name in enumerate(handled_types())]
    return [("created[gte]", str(int(start_at.timestamp()))), *types]


def _parsed(page: Page) -> tuple[list[tuple[Event, str]], int]:
    """The page's usable events with their JSON text, and how many were unusable."""
    events, unusable = [], 0
    for document in page.data:
        text = json.dumps(document, separators=(",", ":"))
        try:
            events.append((parse_event(document, text), text))
        except PayloadError:
            unusable += 1
    return events, unusable


def _store_missing(conn: psycopg.Connection, run: runs.Run, page: Page) -> None:
    """Store the page's events the inbox lacks (received, no delivery yet)."""
    events, unusable = _parsed(page)
    stored = conn.execute(
        """
        insert into webhook_private.events as e
          (id, type, api_version, livemode, stripe_created, object_id, stripe_customer_id,
           payload, deliveries)
        select v.id, v.type, v.api_version, v.livemode, v.created, v.object_id,
               v.stripe_customer_id, v.payload::json, 0
          from unnest(%s::text[], %s::text[], %s::text[], %s::boolean[], %s::timestamptz[],
                      %s::text[], %s::text[], %s::text[])
               as v(id, type, api_version, livemode, created, object_id, stripe_customer_id,
                    payload)
        on conflict (id) do nothing
        returning e.id
        """,
        (
            [e.id for e, _ in events],
            [e.type for e, _ in events],
            [e.api_version for e, _ in events],
            [e.livemode for e, _ in events],
            [timestamp(e.created) for e, _ in events],
            [e.object_id for e, _ in events],
            [e.stripe_customer for e, _ in events],
            [text for _, text in events],
        ),
    ).fetchall()
    run.add(
        events_listed=len(page.data),
        events_missing=len(stored),
        events_already_received=len(events) - len(stored),
        events_unusable=unusable,
    )
    if page.data:
        run.cursor = page.data[-1].get("id")
    runs.save(conn, run)


def _count_missing(conn: psycopg.Connection, page: Page, report: CatchUpReport) -> None:
    events, unusable = _parsed(page)
    known = {
        row[0]
        for row in conn.execute(
            "select id from webhook_private.events where id = any(%s)", ([e.id for e, _ in events],)
        ).fetchall()
    }
    missing = [e for e, _ in events if e.id not in known]
    report.missing_by_type.update(e.type for e in missing)
    for name, value in (
        ("events_listed", len(page.data)),
        ("events_missing", len(missing)),
        ("events_already_received", len(events) - len(missing)),
        ("events_unusable", unusable),
    ):
        report.counts[name] = report.counts.get(name, 0) + value


def _apply_stored(
    conn: psycopg.Connection,
    run: runs.Run,
    rules: ProcessingRules,
    report: CatchUpReport,
    on_result: Callable[[Applied], None],
    progress: Callable[[str, int], None],
) -> None:
    """Apply the window's stored, not yet applied events, oldest first, through the drain's
    engine. A web worker's drain may take some of them meanwhile: SKIP LOCKED lets each
    event be applied by one of the two, once."""
    while True:
        ids = _next_chunk(conn, run)
        if not ids:
            return
        applied = drain_batch(conn, rules, limit=len(ids), only=ids, trigger="sync")
        for result in applied:
            report.outcomes[result.outcome.status] += 1
            on_result(result)
        run.add(events_applied=len(applied))
        with conn.transaction():
            runs.save(conn, run)
        progress(APPLY, run.counts.get("events_applied", 0))


def _next_chunk(conn: psycopg.Connection, run: runs.Run) -> list[str]:
    rows = conn.execute(
        "select id from webhook_private.events"
        " where status = 'received' and payload is not null and stripe_created >= %s"
        " order by stripe_created, id limit %s",
        (run.since, APPLY_CHUNK),
    ).fetchall()
    return [row[0] for row in rows]
