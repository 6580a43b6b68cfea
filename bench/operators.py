"""`reconcile` and `replay --failed` over many rows, through the same functions the CLI calls."""

import json
import time
from collections import Counter
from datetime import UTC, datetime

import psycopg

from bench.workload import SEED_CREATED
from webhook.core.config import DEFAULT_ENTITLED_STATUSES
from webhook.fixtures import MONTH, EventFactory
from webhook.pipeline.processor import ProcessingRules
from webhook.pipeline.reconcile import reconcile
from webhook.pipeline.replay import failed_event_ids, iter_replay

RULES = ProcessingRules(entitled_statuses=frozenset(DEFAULT_ENTITLED_STATUSES))
REPLAY_WORKERS = 2  # the CLI's default


def measure_operators(url: str, rows: int) -> dict:
    """Rows per second of reconcile (every plan changes) and replay (every event applies)."""
    with psycopg.connect(url, autocommit=True) as conn:
        # Every customer's mirrored subscription moved to Pro: reconcile has work on each row.
        conn.execute("update webhook_private.subscriptions set price_ids = '{price_pro}'")
        conn.execute("checkpoint")  # the set-up's writes are flushed before the clock starts
        started = time.perf_counter()
        result = reconcile(conn, RULES.entitled_statuses)
        reconcile_seconds = time.perf_counter() - started
        assert len(result.changes) == rows, (len(result.changes), rows)

        _store_failed_events(conn, rows)
        ids = failed_event_ids(conn)
        conn.execute("checkpoint")
        started = time.perf_counter()
        results = iter_replay(conn, ids, RULES, connect=lambda: psycopg.connect(url, autocommit=True),
                              workers=REPLAY_WORKERS)  # fmt: skip
        outcomes = Counter(r.outcome.status for r in results)
        replay_seconds = time.perf_counter() - started
        assert outcomes == {"processed": rows}, outcomes
    print(
        f"operators: reconcile {rows / reconcile_seconds:.0f} rows/s, replay {rows / replay_seconds:.0f} rows/s"
    )
    return {
        "rows": rows,
        "reconcile_seconds": reconcile_seconds,
        "reconcile_rate": rows / reconcile_seconds,
        "replay_seconds": replay_seconds,
        "replay_rate": rows / replay_seconds,
        "replay_workers": REPLAY_WORKERS,
    }


def _store_failed_events(conn: psycopg.Connection, rows: int) -> None:
    """One failed subscription update per customer (back to Basic), as if a plan had been missing."""
    factory = EventFactory(start=SEED_CREATED + 2 * MONTH, seed=5)
    columns = "id, type, stripe_created, object_id, stripe_customer_id, payload, status, error"
    with (
        conn.cursor() as cursor,
        cursor.copy(f"copy webhook_private.events ({columns}) from stdin") as copy,
    ):
        for i in range(1, rows + 1):
            factory.clock = SEED_CREATED + 2 * MONTH + i
            delivery = factory.subscription(
                "customer.subscription.updated",
                sub_id=f"sub_b{i}",
                customer=f"cus_b{i}",
                status="active",
                price_ids=["price_basic"],
            )
            created = datetime.fromtimestamp(factory.clock, UTC)
            row = (delivery.id, delivery.type, created, f"sub_b{i}", f"cus_b{i}",
                   json.dumps(delivery.event))  # fmt: skip
            copy.write_row((*row, "failed", "no plan (benchmark)"))
