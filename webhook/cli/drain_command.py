"""drain: apply stored events in a process of its own (the Procfile's optional worker line).

The web workers drain by default; a dedicated drain lets the web processes only store
and answer (set WEB_DRAIN=off on them), or adds draining capacity. Any number of drains
may run against one database: they share the queue through SKIP LOCKED. SIGTERM or
Ctrl-C lets the batch in hand commit, then the process exits.
"""

import signal
from collections.abc import Sequence
from types import FrameType

import click

from webhook.cli import cli
from webhook.cli.context import database_url, processing_rules
from webhook.core.config import load_settings, use_prepared_statements
from webhook.pipeline.drain import Applied
from webhook.pipeline.drain_worker import DrainWorker
from webhook.pipeline.event_log import configure_event_log, log_applied


@cli.command()
@click.option("--once", is_flag=True, help="Apply what is queued now, then exit.")
@click.pass_context
def drain(ctx: click.Context, once: bool) -> None:
    """Apply stored events as they arrive, until stopped (or, with --once, until none wait)."""
    settings = load_settings(require_secret=False)
    url = database_url(ctx)
    configure_event_log()
    applied_total = 0

    def applied(batch: Sequence[Applied]) -> None:
        nonlocal applied_total
        applied_total += len(batch)
        log_applied(batch)

    worker = DrainWorker(
        url,
        processing_rules(),
        prepare=use_prepared_statements(settings.prepared_statements, url),
        batch_size=settings.drain_batch_size,
        on_applied=applied,
    )
    if once:
        worker.until_empty()
        worker.stop()
        click.echo(f"drained {applied_total} event(s)", err=True)
        return

    def stop(_signum: int, _frame: FrameType | None) -> None:
        worker.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo("drain: applying stored events (Ctrl-C to stop)", err=True)
    worker.run()
    click.echo(f"drain: stopped after {applied_total} event(s)", err=True)
