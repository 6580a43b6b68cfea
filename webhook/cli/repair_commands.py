"""reconcile, replay and events dismiss: repairing plans and events after the data or the
configuration changed, or settling the events that cannot be repaired."""

from collections.abc import Callable

import click

from webhook.cli import cli
from webhook.cli.context import connector, database, processing_rules, require_schema
from webhook.cli.inspect_commands import events
from webhook.core.errors import ProjectError
from webhook.pipeline.reconcile import reconcile as reconcile_plans
from webhook.pipeline.replay import failed_event_ids, iter_replay
from webhook.pipeline.replay_result import ReplayResult


def _progress(label: str) -> Callable[[int, int], None]:
    """Progress on stderr for long runs: every 5%, only when there are 100 or more.

    `done` may jump (replay applies whole batches), so a line is shown whenever it crosses
    into a new 5% step rather than when it lands on one.
    """
    shown = 0

    def show(done: int, total: int) -> None:
        nonlocal shown
        step = max(total // 20, 1)
        if total >= 100 and (done // step > shown // step or done == total) and done != shown:
            shown = done
            click.echo(f"{label}: {done}/{total}", err=True)

    return show


@cli.command()
@click.option("--dry-run", is_flag=True, help="Report what would change without changing it.")
@click.pass_context
def reconcile(ctx: click.Context, dry_run: bool) -> None:
    """Recompute every linked customer's plan from the subscription mirror."""
    rules = processing_rules()
    with database(ctx, autocommit=True) as conn:
        # As replay does: plans recomputed by code newer than the schema could be wrong.
        require_schema(conn)
        report = reconcile_plans(
            conn, rules.entitled_statuses, dry_run=dry_run, progress=_progress("reconcile")
        )
    verb = "would change" if dry_run else "changed"
    for customer, old, new in report.changes:
        click.echo(f"{verb} {customer}: plan {old} -> {new}")
    for customer, prices in report.undecided:
        click.echo(f"left {customer} as is: no plan for price(s) {', '.join(prices)}")
    click.echo(
        f"checked {report.checked} customer(s); {len(report.changes)} {verb};"
        f" {len(report.undecided)} waiting for a plan"
    )


@cli.command()
@click.argument("event_ids", nargs=-1)
@click.option("--failed", "all_failed", is_flag=True, help="Replay every failed event.")
@click.option("--type", "event_type", default=None, help="With --failed: only this event type.")
@click.option("--dry-run", is_flag=True, help="Apply, report and roll back.")
@click.option(
    "--workers",
    type=click.IntRange(1, 16),
    default=2,
    show_default=True,
    help="Connections a long replay is spread over (split by Stripe customer).",
)
@click.pass_context
def replay(
    ctx: click.Context,
    event_ids: tuple[str, ...],
    all_failed: bool,
    event_type: str | None,
    dry_run: bool,
    workers: int,
) -> None:
    """Re-apply stored events (EVT_ID... or --failed) through the webhook's own code path."""
    if bool(event_ids) == all_failed:
        raise click.UsageError("give event ids or --failed (not both)")
    if event_type and not all_failed:
        raise click.UsageError("--type only goes with --failed")
    rules = processing_rules()
    replayed = failed = 0
    with database(ctx, autocommit=True) as conn:
        require_schema(conn)
        ids = failed_event_ids(conn, event_type) if all_failed else list(event_ids)
        progress = _progress("replay")
        results = iter_replay(conn, ids, rules, dry_run=dry_run, progress=progress,
                              connect=connector(ctx, autocommit=True), workers=workers)  # fmt: skip
        for result in results:
            click.echo(describe_result(result))
            replayed += 1
            failed += result.outcome.status == "failed"
    prefix = "dry run, nothing kept: " if dry_run else ""
    click.echo(f"{prefix}replayed {replayed} event(s), {failed} still failing")
    if failed and not dry_run:
        ctx.exit(1)  # scripts and release steps can tell that the repair is not complete


@events.command("dismiss")
@click.argument("event_ids", nargs=-1, required=True)
@click.option("--reason", required=True, help="Why: kept with the event and in its history.")
@click.pass_context
def dismiss(ctx: click.Context, event_ids: tuple[str, ...], reason: str) -> None:
    """Settle failed events that cannot be repaired as ignored, keeping the reason.

    They stop counting as failed (metrics, `doctor`, `replay --failed`); their payload and
    history stay, and a redelivery of one is answered as a duplicate. All or nothing: an id
    that is not a failed event changes none of them.
    """
    reason = reason.strip()
    if not reason:
        raise click.BadParameter("give a reason", param_hint="'--reason'")
    ids = list(dict.fromkeys(event_ids))
    with database(ctx) as conn:
        require_schema(conn)
        found = dict(
            conn.execute(
                "select id, status from webhook_private.events where id = any(%s) for update",
                (ids,),
            ).fetchall()
        )
        for event_id in ids:
            if event_id not in found:
                raise ProjectError(f"no event {event_id} in the inbox; nothing was dismissed")
            if found[event_id] != "failed":
                raise ProjectError(
                    f"{event_id} is {found[event_id]}, not failed: only failed events can be"
                    " dismissed; nothing was dismissed"
                )
        conn.execute(
            "update webhook_private.events set status = 'ignored', error = %s,"
            " processed_at = now() where id = any(%s)",
            (f"dismissed: {reason}", ids),
        )
        conn.execute(
            "insert into webhook_private.event_attempts (event_id, trigger, outcome, error)"
            " select unnest(%s::text[]), 'operator', 'ignored', %s",
            (ids, f"dismissed: {reason}"),
        )
        mirrored = conn.execute(
            "select id from webhook_private.subscriptions where event_id = any(%s) order by id",
            (ids,),
        ).fetchall()
        conn.commit()
    for event_id in ids:
        click.echo(f"dismissed {event_id}")
    if mirrored:
        click.echo(
            "note: the subscription state they carried stays in the mirror"
            f" ({', '.join(row[0] for row in mirrored)}); if a price of it has no plan, it"
            " keeps its customer's plan as it is: add a plan or an add-on for that price",
            err=True,
        )


def describe_result(result: ReplayResult) -> str:
    """One line per replayed event: its outcome, and the plan change if there was one."""
    change = (
        f"; plan {result.plan_before} -> {result.plan_after}"
        if result.plan_before != result.plan_after
        else ""
    )
    error = f": {result.outcome.error}" if result.outcome.error else ""
    return f"{result.event_id} {result.event_type}: {result.outcome.status}{error}{change}"
