"""Structured logs: one JSON line per processed event on stdout.

Only ids, types, outcomes and timings are logged. Secrets, signatures, e-mail addresses and
payloads never are: an event's error message is written by this service and names ids only.
"""

import json
import logging
import sys
from collections.abc import Sequence

from webhook.pipeline.drain import Applied
from webhook.pipeline.processor import Result

_event_log = logging.getLogger("webhook.events")


def configure_event_log() -> None:
    """Send event lines to stdout as bare JSON, once per process."""
    if not _event_log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        _event_log.addHandler(handler)
        _event_log.setLevel(logging.INFO)
        _event_log.propagate = False


def log_applied(applied: Sequence[Applied]) -> None:
    """One line per event a drain applied, as for an event applied in the request."""
    for event in applied:
        line = {
            "log": "stripe_event",
            "event_id": event.event_id,
            "type": event.event_type,
            "customer": str(event.outcome.customer) if event.outcome.customer else None,
            "outcome": event.outcome.status,
            "queued_ms": round(event.waited_seconds * 1000, 1),
        }
        if event.outcome.error:
            line["error"] = event.outcome.error
        _event_log.info(json.dumps(line, separators=(",", ":")))


def log_result(result: Result) -> None:
    """Write the line for one processed delivery."""
    line = {
        "log": "stripe_event",
        "event_id": result.event.id,
        "type": result.event.type,
        "customer": str(result.outcome.customer) if result.outcome.customer else None,
        "outcome": result.outcome.status,
        "duplicate": result.duplicate,
        "ms": round(result.duration_ms, 2),
    }
    if result.outcome.error:
        line["error"] = result.outcome.error
    _event_log.info(json.dumps(line, separators=(",", ":")))
