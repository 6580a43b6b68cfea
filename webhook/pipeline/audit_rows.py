"""Naming the audit rows of a batch statement after the events that caused them.

The audit trigger (schema/001_core.sql) names its rows after `webhook.source`, one value
per transaction, while a batch engine changes many customers in one statement, each for
an event of its own. For such a statement the engine sets `webhook.sources`, a map from
customer to source: the statement-level trigger of migration 015 then writes all the
statement's audit rows in one insert, each named from the map.
"""

import json
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus


def update_naming_audit_rows(
    conn: psycopg.Connection, sql: str, params: Sequence[Any], events: dict[uuid.UUID, str]
) -> None:
    """Run the update `sql`; the audit rows it makes name, for each customer, the event in
    `events` (as `stripe:<event id>`).

    The map is set for this one statement and emptied afterwards, so that whatever the
    transaction writes next is logged row by row again. If the update fails the map stays,
    but so does the failure: the transaction (or its savepoint) must be rolled back, and the
    setting with it.
    """
    if conn.info.transaction_status == TransactionStatus.IDLE:
        # Outside a transaction the setting would end with its own statement, and the
        # audit rows would go unnamed.
        raise RuntimeError("update_naming_audit_rows needs the caller's transaction")
    sources = {str(owner): f"stripe:{event_id}" for owner, event_id in events.items()}
    conn.execute("select set_config('webhook.sources', %s, true)", (json.dumps(sources),))
    conn.execute(sql, params)
    conn.execute("select set_config('webhook.sources', '', true)")
