"""The service's own log lines (every logger under `webhook`), on stderr at LOG_LEVEL.

Nothing else sets them up: gunicorn configures only its own loggers, and a CLI process
none, so Python's last-resort handler showed warnings alone. The lines an operator needs
at INFO (an event left queued after a lock wait, a batch retried after a deadlock, link
requests resting after a wait in vain, a Stripe request tried again) were never seen. The
event log (`webhook.events`) keeps its own handler and level: one JSON line per applied
event on stdout, whatever LOG_LEVEL says. No line names a secret, a signature or an
e-mail address: they carry ids, counts and the database's or Stripe's first line.
"""

import logging
import sys

import psycopg

SERVICE_LOGGER = "webhook"
# gunicorn's own layout, so a web process's lines read alike; the logger's name besides.
FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"


class _CurrentStderr(logging.StreamHandler):
    """Writes to sys.stderr as it is when a line is written, not as it was when the
    handler was made: a test runner (click's CliRunner) swaps it for a while and closes
    its own, which a stream kept from then would fail on."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


def configure_service_log(level: str) -> None:
    """Show the `webhook` loggers' lines from `level` up ("info", "warning", ...).

    The level is set every time; the handler is added once per process, and only where
    nothing else handles log records yet: an application that configured logging itself
    (a root handler, as gunicorn's --log-config makes) gets the lines through its own.
    """
    logger = logging.getLogger(SERVICE_LOGGER)
    logger.setLevel(level.upper())
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    logger.addHandler(handler)


def log_unexpected(log: logging.Logger, message: str) -> None:
    """Log the exception being handled, as `log.exception` would, unless it is the
    database's: PostgreSQL's detail and context lines quote the data a statement carried
    (a payload's text, with e-mail addresses), so of those only the SQLSTATE and the first
    line are written."""
    exc = sys.exc_info()[1]
    if isinstance(exc, psycopg.Error):
        primary = exc.diag.message_primary or type(exc).__name__
        log.error("%s: database error %s: %s", message, exc.sqlstate or "-", primary)
    else:
        log.exception(message)
