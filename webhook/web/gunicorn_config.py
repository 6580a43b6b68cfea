"""gunicorn settings shared by the Procfile and `python -m webhook serve`.

Workers come from WEB_CONCURRENCY (what Heroku-style platforms set), the port from PORT.
Each worker builds the app after the fork and opens its own connection pool on first use.
On SIGTERM gunicorn stops accepting, lets in-flight requests finish for up to
graceful_timeout seconds, and the worker's exit handlers close its pool.

By default each worker is gunicorn's asyncio worker with the ASGI edge in front of the
Flask app (web/asgi.py): one event loop per worker reads and stores every delivery.
WEB_WORKER_CLASS=gthread serves the same Flask app from gunicorn's threaded worker instead.
"""

import gc
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import TypeVar

from webhook.core.config import (
    load_settings,
    metrics_dir,
    web_access_log,
    web_concurrency,
    web_port,
    web_threads,
    web_worker_class,
)
from webhook.core.errors import ConfigError, MigrationError
from webhook.database import migrations
from webhook.database.connect import configured_database_url
from webhook.web.gunicorn_run import restart_command

_made_metrics_dir: str | None = None

T = TypeVar("T")


def _read(setting: Callable[[Mapping[str, str]], T]) -> T:
    """A setting gunicorn takes before on_starting checks the rest: a bad value stops
    gunicorn here with its one line, as on_starting would, not with gunicorn's own words
    (which do not name the variable) or a traceback. Each is read by its function in
    core.config (WEB_LINE_SETTINGS), which `doctor` runs too."""
    try:
        return setting(os.environ)
    except ConfigError as exc:
        sys.exit(f"Error: {exc}")


bind = f"{os.environ.get('HOST', '0.0.0.0')}:{_read(web_port)}"
workers = _read(web_concurrency)
worker_class = _read(web_worker_class)
# Threads of the threaded worker: they wait on the network and PostgreSQL more than they
# run; while one stores, the others parse, and the deliveries they reach the store with
# meanwhile go in one insert (web/grouped_store.py). The asyncio worker has one thread
# for its loop (the ASGI edge keeps WEB_THREADS for what blocks: see Settings.web_threads).
threads = _read(web_threads) if worker_class == "gthread" else 1
timeout = 30
graceful_timeout = 30
keepalive = 5
# gunicorn 27 opens a control socket at one fixed path per user; two instances on one host
# (a second app, a test, `make dev` next to a manual run) would take it from each other.
control_socket_disable = True
# Off by default: gunicorn's access line costs about a sixth of a worker's CPU per
# delivery, and each event already writes its own JSON line when it is applied, while
# /metrics counts requests by outcome. WEB_ACCESS_LOG=on brings it back.
accesslog = "-" if _read(web_access_log) else None
# The access log names method, path, status and timing; never headers, so no signature.
access_log_format = '{"log":"access","method":"%(m)s","path":"%(U)s","status":%(s)s,"ms":%(M)s}'
# Its values JSON-escaped, so that each request is one line of valid JSON whatever its path.
logger_class = "webhook.web.access_log.AccessLogger"


def on_starting(server) -> None:
    """Check the configuration, and give the workers a shared metrics folder, in the
    master, before any worker forks.

    A configuration the app would refuse, or an installation without the migrations' SQL,
    stops the master here with its one-line reason, rather than every worker with a
    traceback. Workers are separate processes:
    prometheus_client adds their counts up through files in the shared folder. A USR2
    upgrade starts the web line again as it was started (see gunicorn_run).
    """
    try:
        settings = load_settings()
        configured_database_url(settings.database_url)
        given_metrics_dir = metrics_dir(os.environ)
        # An installation without the SQL files could never be ready (/readyz would fail
        # on every call, each drain on every cycle): say so once, here.
        migrations.discover()
    except (ConfigError, MigrationError) as exc:
        sys.exit(f"Error: {exc}")
    restart = restart_command()
    if restart is not None:
        server.START_CTX["args"] = restart
    global _made_metrics_dir
    if given_metrics_dir is None:
        _made_metrics_dir = tempfile.mkdtemp(prefix="webhook-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = _made_metrics_dir


def post_worker_init(worker) -> None:
    """Put the ASGI edge in front of the Flask app on the asyncio worker, and start the
    worker's drain (stored events, application links) once the app is loaded in the
    worker, after the fork; WEB_DRAIN=off leaves draining to `webhook drain`."""
    if _is_flask_app(getattr(worker, "asgi", None)):
        from webhook.web.asgi import AsgiEdge

        worker.asgi = AsgiEdge(worker.asgi)
    service = _service(worker)
    if service is not None and service.settings.web_drain:
        service.drain.start()
    # What the worker has loaded so far (Flask, stripe, psycopg, the app) lives as long as
    # the worker: keep it out of the garbage collector's full collections, which would
    # otherwise walk it every few seconds under load while every request thread waits.
    gc.collect()
    gc.freeze()


def worker_exit(server, worker) -> None:
    """Let the drain commit the batch in hand before the worker exits."""
    service = _service(worker)
    if service is not None:
        service.drain.stop()


def child_exit(server, worker) -> None:
    """Drop a dead worker's live gauges (its counters stay in the totals)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    """Remove the metrics folder this configuration made, when the master exits."""
    if _made_metrics_dir:
        shutil.rmtree(_made_metrics_dir, ignore_errors=True)


def _service(worker):
    """The worker's webhook Service (see web/service.py), on either worker class."""
    app = getattr(worker, "asgi", None) or getattr(worker, "wsgi", None)
    return getattr(app, "extensions", {}).get("webhook")


def _is_flask_app(app) -> bool:
    """Whether `app` is the Flask app of create_app() rather than an ASGI application."""
    from flask import Flask

    return isinstance(app, Flask) and "webhook" in app.extensions
