"""sync: import and repair from Stripe's API, or catch up on events after an outage."""

import sys
import time
from datetime import timedelta

import click
import psycopg

from webhook.cli import cli
from webhook.cli.context import database, processing_rules, require_schema
from webhook.cli.inspect_commands import DURATION
from webhook.core.config import load_settings
from webhook.core.errors import ProjectError
from webhook.core.logs import configure_service_log
from webhook.pipeline.drain import Applied
from webhook.pipeline.reconcile import Change
from webhook.stripe.client import StripeAPI, default_rate
from webhook.sync import catchup
from webhook.sync.subscriptions import (
    CUSTOMERS,
    PLANS,
    SUBSCRIPTIONS,
    SyncReport,
    sync_subscriptions,
)

DEFAULT_WINDOW = timedelta(hours=72)


PROGRESS_LABELS = {
    SUBSCRIPTIONS: "subscriptions read",
    CUSTOMERS: "customers read",
    PLANS: "customers checked",
    catchup.EVENTS: "events listed",
    catchup.APPLY: "events applied",
}


def _describe_applied(applied: Applied) -> str:
    error = f": {applied.outcome.error}" if applied.outcome.error else ""
    return f"{applied.event_id} {applied.event_type}: {applied.outcome.status}{error}"


class Progress:
    """Progress on stderr: rewritten in place on a terminal, every 10,000 rows otherwise."""

    def __init__(self) -> None:
        self._interactive = sys.stderr.isatty()
        self._shown: dict[str, int] = {}
        self._open_line = False

    def show(self, phase: str, count: int) -> None:
        label = PROGRESS_LABELS.get(phase, phase)
        if self._interactive:
            click.echo(f"\rsync: {label}: {count:,}", nl=False, err=True)
            self._open_line = True
        elif count // 10_000 > self._shown.get(phase, 0) // 10_000:
            click.echo(f"sync: {label}: {count:,}", err=True)
        self._shown[phase] = count

    def end(self) -> None:
        """Finish a line left open on a terminal."""
        if self._open_line:
            click.echo("", err=True)
            self._open_line = False


@cli.command()
@click.option(
    "--events",
    "events_only",
    is_flag=True,
    help="Catch up on events (GET /v1/events) instead of importing every subscription.",
)
@click.option(
    "--since",
    type=DURATION,
    default=None,
    help="With --events: how far back, at most 30d (Stripe's retention). Default: 72h.",
)
@click.option("--dry-run", is_flag=True, help="Say what would change; write nothing.")
@click.option(
    "--rate",
    type=click.FloatRange(min=0.1, max=100),
    default=None,
    help="Requests per second to Stripe. Default: $STRIPE_API_RATE, else 20 (test keys) or 80.",
)
@click.option(
    "--restart", is_flag=True, help="Start over instead of continuing an interrupted run."
)
@click.pass_context
def sync(
    ctx: click.Context,
    events_only: bool,
    since: timedelta | None,
    dry_run: bool,
    rate: float | None,
    restart: bool,
) -> None:
    """Import subscriptions from Stripe's API and repair plans (needs STRIPE_API_KEY).

    Resumable: run it again after an interruption and it continues where it stopped.
    """
    if since is not None and not events_only:
        raise click.UsageError("--since goes with --events (a full sync reads everything)")
    window = since or DEFAULT_WINDOW
    if events_only:
        catchup.check_window(window)  # before anything else: a one-line answer, no traffic
    settings = load_settings(require_secret=False)
    configure_service_log(settings.log_level)  # the client's "trying again" lines
    api = StripeAPI(
        settings.stripe_api_key or "",
        settings.stripe_api_base,
        rate=rate or settings.stripe_api_rate,
        max_retries=settings.stripe_api_max_retries,
    )
    pace = rate or settings.stripe_api_rate or default_rate(api.api_key)
    progress = Progress()
    try:
        with database(ctx, autocommit=True) as conn:
            # Before any request to Stripe: what a sync writes follows this version's
            # schema, as replay's and the drains' writes do.
            require_schema(conn)
            click.echo(f"sync: reading from {api.where} at up to {pace:g} requests/s", err=True)
            started = time.monotonic()
            if events_only:
                _catch_up(conn, api, window, progress, dry_run=dry_run, restart=restart)
            else:
                _full_sync(
                    conn,
                    api,
                    settings.entitled_statuses,
                    progress,
                    dry_run=dry_run,
                    restart=restart,
                )
    except KeyboardInterrupt:
        raise ProjectError(
            "interrupted; run the same command again to continue where it stopped"
        ) from None
    finally:
        progress.end()
        api.close()
    counters = api.counters
    click.echo(
        f"{counters.requests} request(s) to Stripe in {time.monotonic() - started:.1f}s,"
        f" {counters.rate_limited} rate-limited (waited and retried), {counters.retried} retried",
        err=True,
    )


def _full_sync(
    conn: psycopg.Connection,
    api: StripeAPI,
    statuses: frozenset[str],
    progress: Progress,
    *,
    dry_run: bool,
    restart: bool,
) -> None:
    verb = "would change" if dry_run else "changed"

    def changed(change: Change) -> None:
        customer, old, new = change
        click.echo(f"{verb} {customer}: plan {old} -> {new}")

    report = sync_subscriptions(
        conn,
        api,
        statuses,
        dry_run=dry_run,
        restart=restart,
        on_change=changed,
        progress=progress.show,
    )
    progress.end()
    _print_summary(report, verb)


def _print_summary(report: SyncReport, verb: str) -> None:
    if report.resumed:
        click.echo(f"continued run {report.run_id}, which had been interrupted")
    read = report.count("subscriptions_read")
    seconds = report.seconds.get(SUBSCRIPTIONS)
    rate = f" ({read / seconds:,.0f}/s)" if seconds and read else ""
    click.echo(
        f"subscriptions read: {read}{rate}; {verb} in the mirror:"
        f" {report.count('subscriptions_changed')}"
    )
    if report.count("subscriptions_unreadable"):
        click.echo(
            f"subscriptions skipped: {report.count('subscriptions_unreadable')} (granting, but"
            " with no item that names a price or a plan)"
        )
    if report.count("customers_read"):
        click.echo(f"customers read: {report.count('customers_read')}")
    click.echo(
        f"links made from metadata.customer_uuid: {report.count('links_made')}"
        + (
            f" ({report.count('unknown_references')} named no customer of ours)"
            if report.count("unknown_references")
            else ""
        )
    )
    for customer, prices in report.plans.undecided:
        click.echo(f"left {customer} as is: no plan for price(s) {', '.join(prices)}")
    click.echo(
        f"customers checked: {report.plans.checked}; plans {verb}: {report.plans.changed};"
        f" waiting for a plan: {len(report.plans.undecided)}"
    )
    click.echo(
        f"subscriptions whose Stripe customer is not linked: {report.unlinked}"
        f" ({report.unlinked_live} of them active, trialing or past_due)"
        + (
            "; link them with public.customer.stripe_customer_id or metadata.customer_uuid"
            if report.unlinked_live
            else ""
        )
    )
    if report.dry_run:
        click.echo("dry run: nothing was written")


def _catch_up(
    conn: psycopg.Connection,
    api: StripeAPI,
    window: timedelta,
    progress: Progress,
    *,
    dry_run: bool,
    restart: bool,
) -> None:
    report = catchup.catch_up(
        conn,
        api,
        processing_rules(),
        window,
        dry_run=dry_run,
        restart=restart,
        on_result=lambda result: click.echo(_describe_applied(result)),
        progress=progress.show,
    )
    progress.end()
    if report.resumed:
        click.echo(f"continued run {report.run_id}, which had been interrupted")
    counts = report.counts
    since = f"{report.since:%Y-%m-%d %H:%M:%S} UTC" if report.since else "?"
    click.echo(
        f"events since {since}: {counts.get('events_listed', 0)} listed,"
        f" {counts.get('events_already_received', 0)} already received,"
        f" {counts.get('events_missing', 0)} missing"
        + (f", {counts['events_unusable']} unusable" if counts.get("events_unusable") else "")
    )
    if dry_run:
        for event_type, count in sorted(report.missing_by_type.items()):
            click.echo(f"would apply {count} {event_type}")
        click.echo("dry run: nothing was written")
        return
    outcomes = ", ".join(f"{n} {status}" for status, n in sorted(report.outcomes.items()))
    click.echo(f"applied: {sum(report.outcomes.values())} event(s) ({outcomes or 'none'})")
