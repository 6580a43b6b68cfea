"""webhook/pipeline/audit_rows.py: a batch statement's audit rows name their events, and
only that statement's (the rows the batch trigger writes are checked against row-by-row
logging in tests/database/test_schema_triggers.py)."""

import psycopg
import pytest

from webhook.pipeline.audit_rows import update_naming_audit_rows

SET_PLAN = "update public.customer set plan_id = %s where uuid = any(%s)"


def sources(conn: psycopg.Connection) -> dict:
    return dict(conn.execute("select customer_uuid, source from public.audit_logs").fetchall())


def test_each_row_names_its_event_and_later_statements_log_row_by_row(
    conn, make_user, plans
) -> None:
    first, second = make_user(), make_user()
    with conn.transaction():
        update_naming_audit_rows(
            conn, SET_PLAN, (plans["Basic"], [first]), {first: "evt_a", second: "evt_b"}
        )
        # The map named `second` too, but this statement is not the batch's: it must be
        # logged by the row trigger, after webhook.source.
        conn.execute("select set_config('webhook.source', 'stripe:evt_later', true)")
        conn.execute(SET_PLAN, (plans["Pro"], [second]))
    assert sources(conn) == {first: "stripe:evt_a", second: "stripe:evt_later"}


def test_outside_a_transaction_it_refuses(conn, make_user, plans) -> None:
    user = make_user()
    with pytest.raises(RuntimeError, match="transaction"):
        update_naming_audit_rows(conn, SET_PLAN, (plans["Basic"], [user]), {user: "evt_a"})
    assert sources(conn) == {}
