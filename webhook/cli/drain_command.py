"""drain: apply stored events in a process of its own (the Procfile's optional worker line).

The web workers drain by default; a dedicated drain lets the web processes only store
and answer (set WEB_DRAIN=off on them), or adds draining capacity. Any number of drains
may run against one database: they share the queue through SKIP LOCKED. SIGTERM or
Ctrl-C lets the batch in hand commit, then the process exits.
"""

import os
import signal
from collections.abc import Callable, Sequence
from types import FrameType

import click

from webhook.cli import cli
from webhook.cli.context import database_url, processing_rules
from webhook.core.config import load_settings, metrics_dir, use_prepared_statements
from webhook.core.errors import ProjectError
from webhook.core.logs import configure_service_log
from webhook.database import migrations
from webhook.database.pool import Database
from webhook.pipeline.drain import Applied
from webhook.pipeline.drain_worker import DrainWorker
from webhook.pipeline.event_log import configure_event_log, log_applied


@cli.command()
@click.option("--once", is_flag=True, help="Apply what is queued now, then exit.")
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    envvar="DRAIN_METRICS_PORT",
    help="Serve this drain's Prometheus metrics on GET /metrics at this port"
    " (default: $DRAIN_METRICS_PORT; none).",
)
@click.pass_context
def drain(ctx: click.Context, once: bool, metrics_port: int | None) -> None:
    """Apply stored events as they arrive, until stopped (or, with --once, until none wait)."""
    settings = load_settings(require_secret=False)
    url = database_url(ctx)
    migrations.discover()  # no SQL files in this installation: one line now, not every cycle
    configure_service_log(settings.log_level)
    configure_event_log()
    applied_total = 0
    stop_metrics = _serve_metrics(url, metrics_port) if metrics_port else None

    def applied(batch: Sequence[Applied]) -> None:
        nonlocal applied_total
        applied_total += len(batch)
        log_applied(batch)
        if stop_metrics is not None:
            from webhook.web import metrics

            metrics.observe_applied(batch)

    worker = DrainWorker(
        url,
        processing_rules(),
        prepare=use_prepared_statements(settings.prepared_statements, url),
        batch_size=settings.drain_batch_size,
        on_applied=applied,
    )
    if once:
        try:
            worker.until_empty()
        finally:
            worker.stop()
            if stop_metrics is not None:
                stop_metrics()
        click.echo(f"drained {applied_total} event(s)", err=True)
        return

    def stop(_signum: int, _frame: FrameType | None) -> None:
        worker.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo("drain: applying stored events (Ctrl-C to stop)", err=True)
    worker.run()
    if stop_metrics is not None:
        stop_metrics()
    click.echo(f"drain: stopped after {applied_total} event(s)", err=True)


def _serve_metrics(url: str, port: int) -> Callable[[], None]:
    """This process's counts (events applied by outcome, received→applied time) and the
    inbox's figures, as the web's /metrics has them, on HOST (default 0.0.0.0) and `port`.

    The web workers' counts cannot include a drain in a process of its own, so with
    WEB_DRAIN=off and a `worker:` line, this is where the apply rate and failures are seen.
    """
    # Imported here, not with the CLI: prometheus_client chooses between in-memory and
    # multiprocess values when first imported, and `serve` sets PROMETHEUS_MULTIPROC_DIR
    # (in gunicorn's master) only after the CLI is loaded. A folder it names must exist
    # first: prometheus_client's first count in a missing one is a FileNotFoundError.
    metrics_dir(os.environ)
    from webhook.web import metrics

    database = Database(url, min_size=0, max_size=1, timeout=5)
    host = os.environ.get("HOST", "0.0.0.0")
    try:
        stop = metrics.serve_in_background(database, host, port, metrics.render_drain)
    except OSError as exc:
        database.close()
        raise ProjectError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
        ) from None
    click.echo(f"drain: metrics on http://{host}:{port}/metrics", err=True)

    def stop_all() -> None:
        stop()
        database.close()

    return stop_all
