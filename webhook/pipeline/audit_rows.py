"""Naming the audit rows a batch statement made after the events that caused them.

The audit trigger (schema/001_core.sql) takes one source per statement, from the
transaction's `webhook.source`. A batch engine changes many customers in one statement
with the source left empty, and names each customer's new rows afterwards.
"""

import json
import uuid

import psycopg


def name_audit_rows(conn: psycopg.Connection, action: str, events: dict[uuid.UUID, str]) -> None:
    """Name each customer's `action` audit rows written so far by this transaction without a
    source (one batch statement wrote them) after the event that caused them."""
    conn.execute(
        """
        update public.audit_logs a set source = %s::jsonb ->> a.customer_uuid::text
         where a.customer_uuid = any(%s::uuid[])
           and a.created_at = now() and a.action = %s and a.source is null
        """,
        (
            json.dumps({str(owner): f"stripe:{event_id}" for owner, event_id in events.items()}),
            list(events),
            action,
        ),
    )
