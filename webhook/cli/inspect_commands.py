"""events, customer, purge and doctor: seeing what happened, and keeping the inbox lean."""

import json
import os
import re
import uuid
from collections.abc import Callable
from datetime import timedelta

import click
import psycopg

from webhook.cli import cli
from webhook.cli.context import database
from webhook.cli.devsecret import existing_dev_secret
from webhook.core.config import (
    WEB_LINE_SETTINGS,
    load_settings,
    web_concurrency,
    web_port,
    web_worker_class,
)
from webhook.core.errors import ConfigError, ProjectError
from webhook.database import migrations

STATUSES = ("received", "processed", "ignored", "failed")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
PURGE_BATCH = 5000
# doctor reports the queue when its oldest event has waited longer than this.
LAG_WARNING_SECONDS = 60


# The longest duration accepted: a century reaches back past any event Stripe sent, and
# stays far inside what timestamps (Python's and PostgreSQL's) can go back by.
LONGEST_DURATION = timedelta(days=36_500)


def parse_duration(text: str) -> timedelta:
    """'90d', '1h', '30m', '2w', '45s' as a timedelta, up to LONGEST_DURATION;
    ProjectError otherwise."""
    match = _DURATION.match(text or "")
    if not match or int(match[1]) == 0:
        raise ProjectError(
            f"bad duration {text!r}: use a positive number and a unit, like 30m, 1h, 90d, 2w"
        )
    seconds_each = timedelta(**{_UNITS[match[2]]: 1}).total_seconds()
    if int(match[1]) * seconds_each > LONGEST_DURATION.total_seconds():
        raise ProjectError(f"bad duration {text!r}: at most {LONGEST_DURATION.days}d")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


class _Duration(click.ParamType):
    name = "duration"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ProjectError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _Duration()


@cli.group(invoke_without_command=True)
@click.option("--status", type=click.Choice(STATUSES), default=None)
@click.option("--type", "event_type", default=None, help="Only this event type.")
@click.option(
    "--since", type=DURATION, default=None, help="Only events received in this window, e.g. 1h."
)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.pass_context
def events(
    ctx: click.Context,
    status: str | None,
    event_type: str | None,
    since: timedelta | None,
    limit: int,
) -> None:
    """List stored events, newest first (`events show EVT_ID` for one)."""
    if ctx.invoked_subcommand is not None:
        return
    with database(ctx, autocommit=True) as conn:
        rows = conn.execute(
            """
            select id, type, status, deliveries, to_char(received_at, 'YYYY-MM-DD HH24:MI:SS'),
                   coalesce(error, '')
              from webhook_private.events
             where (%(status)s::text is null or status = %(status)s)
               and (%(type)s::text is null or type = %(type)s)
               and (%(since)s::interval is null or received_at >= now() - %(since)s::interval)
             order by received_at desc, id
             limit %(limit)s
            """,
            {"status": status, "type": event_type, "since": since, "limit": limit},
        ).fetchall()
    if not rows:
        click.echo("no events match")
        return
    click.echo(f"{'id':<32} {'type':<40} {'status':<9} {'n':>3}  {'received (UTC)':<19}  error")
    for event_id, kind, state, deliveries, received, error in rows:
        click.echo(
            f"{event_id:<32} {kind:<40} {state:<9} {deliveries:>3}  {received:<19}  {error[:80]}"
        )


@events.command("show")
@click.argument("event_id")
@click.pass_context
def show_event(ctx: click.Context, event_id: str) -> None:
    """Show one stored event: its fields, its processing history and its payload."""
    with database(ctx, autocommit=True) as conn:
        row = conn.execute(
            """
            select id, type, api_version, livemode, stripe_created, object_id, status, error,
                   deliveries, attempts, received_at, processed_at, purged_at, payload::text
              from webhook_private.events where id = %s
            """,
            (event_id,),
        ).fetchone()
        if row is None:
            raise ProjectError(f"no event {event_id} in the inbox")
        attempts = conn.execute(
            "select attempted_at, trigger, outcome, coalesce(error, ''), duration_ms"
            " from webhook_private.event_attempts where event_id = %s order by id",
            (event_id,),
        ).fetchall()
    names = ("id", "type", "api_version", "livemode", "created", "object", "status", "error",
             "deliveries", "attempts", "received_at", "processed_at", "purged_at")  # fmt: skip
    for name, value in zip(names, row[:-1], strict=True):
        if value is not None:
            click.echo(f"{name + ':':<14}{value}")
    click.echo("history:")
    for attempted_at, trigger, outcome, error, ms in attempts:
        took = "-" if ms is None else f"{ms} ms"
        click.echo(f"  {attempted_at:%Y-%m-%d %H:%M:%S} {trigger:<8} {outcome:<9} {took}  {error}")
    payload = row[-1]
    click.echo("payload: (purged)" if payload is None else "payload:\n" + _pretty(payload))


def _pretty(stored: str) -> str:
    """The stored payload laid out, or as stored when it nests deeper than Python's json
    can walk (about 1,000 levels; the edge accepts what orjson reads, up to 1,024)."""
    try:
        return json.dumps(json.loads(stored), indent=2, sort_keys=True)
    except RecursionError:
        return stored


@cli.command("customer")
@click.argument("customer_uuid")
@click.pass_context
def show_customer(ctx: click.Context, customer_uuid: str) -> None:
    """Show a customer's plan and resources (usage_analytics) and plan history."""
    try:
        customer = uuid.UUID(customer_uuid)
    except ValueError:
        raise ProjectError(f"{customer_uuid!r} is not a uuid") from None
    with database(ctx, autocommit=True) as conn:
        row = conn.execute(
            "select plan_name, plan_price, plan_updated_at, remaining_resources, total_resources"
            " from public.usage_analytics where uuid = %s",
            (customer,),
        ).fetchone()
        if row is None:
            raise ProjectError(f"no customer {customer}")
        links = conn.execute(
            "select stripe_customer_id from webhook_private.customer_links where customer_uuid = %s order by 1",
            (customer,),
        ).fetchall()
        history = conn.execute(
            "select plan_name, started_at, ended_at from public.customer_plan_history"
            " where customer_uuid = %s order by started_at, id",
            (customer,),
        ).fetchall()
    plan, price, since, remaining, total = row
    click.echo(f"plan:       {plan or '(none)'}{f' ({price})' if plan else ''}")
    click.echo(f"since:      {since or '-'}")
    click.echo(f"remaining:  {json.dumps(remaining)}")
    click.echo(f"of:         {json.dumps(total)}")
    click.echo(f"stripe:     {', '.join(r[0] for r in links) or '(not linked)'}")
    for name, started, ended in history:
        click.echo(f"history:    {name:<12} {started:%Y-%m-%d %H:%M:%S} -> {ended or 'now'}")


# Below this age, purge asks for --yes: a typo (90m for 90d) would drop the payloads that
# `events show` and `replay` need for the events of the last days, for good.
PURGE_CONFIRM_BELOW = timedelta(days=7)


@cli.command()
@click.option("--older-than", "older_than", type=DURATION, required=True, help="e.g. 90d")
@click.option("--dry-run", is_flag=True, help="Count what would be purged; purge nothing.")
@click.option("--yes", is_flag=True, help="Needed for an age under 7 days.")
@click.pass_context
def purge(ctx: click.Context, older_than: timedelta, dry_run: bool, yes: bool) -> None:
    """Drop stored payloads of settled events older than the given age; keep their ids.

    Payloads hold personal data. Ids stay, so a late redelivery is still recognised as a
    duplicate. Failed events keep their payload for replay.
    """
    if older_than < PURGE_CONFIRM_BELOW and not (yes or dry_run):
        raise click.UsageError(
            f"--older-than {_human(older_than)} would drop the payloads of events from the"
            " last days, which `events show` and `replay` need; add --yes if you mean it"
        )
    purged = 0
    with database(ctx, autocommit=True) as conn:
        total = _purgeable(conn, older_than)
        if dry_run:
            click.echo(
                f"would purge the payloads of {total} event(s) older than {_human(older_than)}"
            )
            return
        while True:
            count = conn.execute(
                """
                with batch as (
                  select id from webhook_private.events
                   where payload is not null and status in ('processed', 'ignored')
                     and received_at < now() - %s::interval
                   limit %s for update skip locked)
                update webhook_private.events e set payload = null, purged_at = now()
                  from batch where e.id = batch.id
                """,
                (older_than, PURGE_BATCH),
            ).rowcount
            purged += count
            if total >= PURGE_BATCH:
                click.echo(f"purge: {purged}/{total}", err=True)
            if count < PURGE_BATCH:
                break
    click.echo(f"purged the payloads of {purged} event(s) older than {_human(older_than)}")


def _long_customer_holders(conn: psycopg.Connection) -> list[str]:
    """Client sessions whose transaction has locked or changed rows of public.customer
    and stayed open longer than the lag threshold: the drains skip the customers whose rows
    another transaction holds, so such a session may be what keeps their events queued.
    Row locks and changes show as these two table lock modes; a mere reader (a report,
    pg_dump) holds neither and is no such session. Empty when the role may not see other
    sessions (pg_stat_activity hides them)."""
    rows = conn.execute(
        """
        select a.pid, coalesce(nullif(a.application_name, ''), 'no application name'),
               a.state, extract(epoch from now() - a.xact_start)
          from pg_stat_activity a
         where a.datname = current_database() and a.pid <> pg_backend_pid()
           and a.backend_type = 'client backend'
           and a.xact_start < now() - make_interval(secs => %s)
           and exists (select from pg_locks l
                        where l.pid = a.pid and l.relation = 'public.customer'::regclass
                          and l.mode in ('RowShareLock', 'RowExclusiveLock'))
         order by a.xact_start
        """,
        (LAG_WARNING_SECONDS,),
    ).fetchall()
    return [
        f"session {pid} ({application}, {state}) has held rows of public.customer for"
        f" {seconds:.0f}s"
        for pid, application, state, seconds in rows
    ]


def _human(age: timedelta) -> str:
    """A duration as the operator would write it: 90 days, 1 hour, 30 minutes."""
    seconds = int(age.total_seconds())
    for unit, size in (("week", 604_800), ("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds % size == 0 and seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


def _purgeable(conn: psycopg.Connection, older_than: timedelta) -> int:
    return conn.execute(
        "select count(*) from webhook_private.events where payload is not null"
        " and status in ('processed', 'ignored') and received_at < now() - %s::interval",
        (older_than,),
    ).fetchone()[0]


@cli.command()
@click.pass_context
def doctor(ctx: click.Context) -> None:
    """Check configuration, database, migrations, plans and failed events; say what to do."""
    problems = 0

    def report(ok: bool, text: str, advice: str = "") -> None:
        nonlocal problems
        problems += not ok
        click.echo(f"{'ok  ' if ok else 'FIX '} {text}")
        if advice and not ok:
            click.echo(f"     -> {advice}")

    # In development (no database URL, a ./.dev-secret) `serve` adds the local secret
    # itself; every other setting is checked as the web process will check it.
    development = ctx.obj.get("database_url") is None and existing_dev_secret()
    configuration_error = None
    try:
        settings = load_settings(require_secret=not development)
        if settings.webhook_secrets:
            report(True, f"configuration: {len(settings.webhook_secrets)} signing secret(s)")
        else:
            report(True, "configuration: development secret in ./.dev-secret (make dev)")
    except ProjectError as exc:
        configuration_error = str(exc)
        advice = "set it in the environment the web process runs with"
        report(False, f"configuration: {exc}", advice)
    _doctor_web_line(report, configuration_error)
    try:
        # Prepared or not does not matter to a few queries run once each, and a bad
        # DB_PREPARED_STATEMENTS was reported above, not as a fault of the database.
        with database(ctx, autocommit=True, prepare=False) as conn:
            report(True, "database: reachable")
            _doctor_database(conn, report)
    except ProjectError as exc:
        report(False, f"database: {exc}", "check DATABASE_URL and that the server is up")
    click.echo("all good" if not problems else f"{problems} thing(s) to fix")
    if problems:
        ctx.exit(1)


def _doctor_web_line(report: Callable[..., None], reported: str | None) -> None:
    """What the Procfile's web line refuses before gunicorn starts (PORT, WEB_CONCURRENCY,
    WEB_WORKER_CLASS, WEB_THREADS, WEB_ACCESS_LOG, PROMETHEUS_MULTIPROC_DIR), by the very
    functions it uses: each bad one on a line of its own, except the one the
    configuration line (`reported`) already named."""
    faults = 0
    for setting in WEB_LINE_SETTINGS:
        try:
            setting(os.environ)
        except ConfigError as exc:
            faults += 1
            if str(exc) != reported:
                report(False, f"web line: {exc}",
                       "set it in the environment the Procfile's web line runs with")  # fmt: skip
    if not faults:
        report(True, f"web line: port {web_port(os.environ)},"
               f" {web_concurrency(os.environ)} {web_worker_class(os.environ)} worker(s)")  # fmt: skip


def _doctor_database(conn: psycopg.Connection, report: Callable[..., None]) -> None:
    states = migrations.status(conn)
    waiting = [s.migration.path.name for s in states if s.pending]
    report(not waiting, f"migrations: {len(states) - len(waiting)} applied, {len(waiting)} pending",
           "run `python -m webhook migrate`")  # fmt: skip
    if waiting and len(waiting) == len(states):
        return
    newer = migrations.unknown(conn)
    if newer:
        report(False, f"the database has migrations this code does not know: {', '.join(newer)}",
               "a newer version migrated it: run that version here (this one may not write"
               " what the newer schema expects), or restore the database")  # fmt: skip
    changed = [s.migration.path.name for s in states if not s.checksum_matches]
    if changed:
        report(False, f"migrations changed after being applied: {', '.join(changed)}",
               "never edit an applied migration; put the change in a new numbered file")  # fmt: skip
    unmapped = [
        r[0]
        for r in conn.execute(
            "select name from public.plans where coalesce(stripe_price_id, stripe_plan_id,"
            " stripe_product_id) is null order by id"
        )
    ]
    report(not unmapped,
           f"plans with neither a Stripe price nor a product: {', '.join(unmapped) or 'none'}",
           "set plans.stripe_price_id (one price) or plans.stripe_product_id (every price of"
           " a product) to what sells each plan")  # fmt: skip
    failed = conn.execute(
        "select count(*) from webhook_private.events where status = 'failed'"
    ).fetchone()[0]
    report(failed == 0, f"failed events: {failed}",
           "see `python -m webhook events --status failed`, fix the cause, then `python -m webhook replay --failed`")  # fmt: skip
    queued, lag = conn.execute(
        "select count(*), coalesce(extract(epoch from now() - min(received_at)), 0)"
        " from webhook_private.events where status = 'received'"
    ).fetchone()
    holders = _long_customer_holders(conn) if lag > LAG_WARNING_SECONDS else []
    held = (
        "; " + "; ".join(holders) + " (the drains pass over the customers it holds: end that"
        " transaction, or `select pg_terminate_backend(<pid>)`)"
        if holders
        else ""
    )
    report(lag <= LAG_WARNING_SECONDS,
           f"queue: {queued} event(s) waiting, the oldest for {lag:.0f}s{held}",
           "the drains are behind or not running: check that the web process (or"
           " `python -m webhook drain`) runs and reaches the database")  # fmt: skip
    stuck, refused = conn.execute(
        "select count(*) filter (where status = 'pending' and requested_at < now() - interval '1 minute'),"
        " count(*) filter (where status = 'failed') from webhook_private.link_requests"
    ).fetchone()
    report(stuck == 0, f"application links waiting for over a minute: {stuck}",
           "they are applied by the web workers: is the web process running? (or run"
           " `python -m webhook sync`, which applies them too)")  # fmt: skip
    report(refused == 0, f"application links that could not be applied: {refused}",
           "see webhook_private.link_requests where status = 'failed' for the reason")  # fmt: skip
    # Subscriptions of add-ons only (webhook_private.add_ons) grant nothing, knowingly.
    orphans = conn.execute(
        """
        select count(*) from webhook_private.subscriptions s
         where s.status in ('active', 'trialing', 'past_due') and cardinality(s.price_ids) > 0
           and not exists (
             select from public.plans p
              where p.stripe_price_id = any(s.price_ids) or p.stripe_plan_id = any(s.price_ids)
                 or p.stripe_product_id = any(s.product_ids))
           and exists (
             select from unnest(s.price_ids, s.product_ids) as item(price, product)
              where not exists (
                select from webhook_private.add_ons a
                 where a.stripe_price_id = item.price or a.stripe_product_id = item.product))
        """
    ).fetchone()[0]
    report(orphans == 0, f"live subscriptions whose prices match no plan: {orphans}",
           "add plans for their prices or products (or list add-ons in"
           " webhook_private.add_ons), then run `python -m webhook reconcile`")  # fmt: skip
    click.echo(f"info auth: {migrations.describe_auth(conn)}")
