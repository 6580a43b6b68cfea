"""The triggers of schema/001_core.sql: auth.users -> customer, plan -> resources, audit log.

Each test names the flaw of the source designs (shared/seeds/design-*.md) it guards
against where there is one; on those designs the test fails.
"""

import json
import uuid

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

PAST = "2000-06-01 00:00:00+00"  # mid-year: the year is 2000 in any time zone


def customer(conn: psycopg.Connection, user_id: uuid.UUID) -> dict | None:
    return (
        conn.cursor(row_factory=dict_row)
        .execute("select *, xmin::text as xmin from public.customer where uuid = %s", (user_id,))
        .fetchone()
    )


def plan_resources(conn: psycopg.Connection, plan_id: int) -> dict:
    return conn.execute("select resources from public.plans where id = %s", (plan_id,)).fetchone()[
        0
    ]


def audit_rows(conn: psycopg.Connection, user_id: uuid.UUID) -> list[dict]:
    return (
        conn.cursor(row_factory=dict_row)
        .execute(
            "select * from public.audit_logs where customer_uuid = %s order by created_at, id",
            (user_id,),
        )
        .fetchall()
    )


def set_plan(conn: psycopg.Connection, user_id: uuid.UUID, plan_id: int | None) -> None:
    conn.execute("update public.customer set plan_id = %s where uuid = %s", (plan_id, user_id))


def without_triggers(conn: psycopg.Connection, sql: str, params: tuple = ()) -> None:
    """Run one statement with triggers (and FK checks) off, to set up a precise state."""
    with conn.transaction():
        conn.execute("set local session_replication_role = replica")
        conn.execute(sql, params)


# ---------------------------------------------------------------------------------------
# auth.users -> customer on sign-up
# ---------------------------------------------------------------------------------------


def test_sign_up_creates_customer_with_email_and_metadata(conn, make_user) -> None:
    user_id = make_user(email="ada@example.test", meta={"name": "Ada"})
    row = customer(conn, user_id)
    assert row is not None
    assert row["email"] == "ada@example.test"
    assert row["metadata"] == {"name": "Ada"}
    assert row["plan_id"] is None
    assert row["plan_resources"] is None and row["remaining_resources"] is None
    assert audit_rows(conn, user_id) == []


def test_sign_up_with_null_metadata_stores_empty_object(conn, make_user) -> None:
    # Design 1 copied NULL straight through (and defaulted to '[]', an array).
    user_id = make_user(meta=None)
    assert conn.execute(
        "select raw_user_meta_data from auth.users where id = %s", (user_id,)
    ).fetchone() == (None,)
    assert customer(conn, user_id)["metadata"] == {}


def test_sign_up_without_email_phone_user_succeeds(conn) -> None:
    # Both designs had email NOT NULL: a phone or anonymous sign-up would fail.
    user_id = uuid.uuid4()
    conn.execute("insert into auth.users (id, email) values (%s, null)", (user_id,))
    row = customer(conn, user_id)
    assert row is not None and row["email"] is None


def test_two_users_with_the_same_email_both_sign_up(conn, make_user) -> None:
    # Design 2 had email UNIQUE: the second SSO user sharing an address could not sign up.
    first = make_user(email="shared@example.test")
    second = make_user(email="shared@example.test")
    emails = conn.execute(
        "select uuid, email from public.customer where uuid in (%s, %s)", (first, second)
    ).fetchall()
    assert dict(emails) == {first: "shared@example.test", second: "shared@example.test"}


def test_sign_up_when_customer_row_already_exists_keeps_it(conn) -> None:
    # A plain INSERT (both designs) raised unique_violation and aborted the sign-up.
    user_id = uuid.uuid4()
    without_triggers(
        conn,
        "insert into public.customer (uuid, email, metadata) values (%s, 'before@x.test', %s)",
        (user_id, Jsonb({"kept": True})),
    )
    conn.execute(
        "insert into auth.users (id, email, raw_user_meta_data) values (%s, 'after@x.test', %s)",
        (user_id, Jsonb({"kept": False})),
    )
    assert conn.execute("select count(*) from auth.users where id = %s", (user_id,)).fetchone() == (
        1,
    )
    row = customer(conn, user_id)
    assert row["email"] == "before@x.test"
    assert row["metadata"] == {"kept": True}


def test_deleting_auth_user_removes_customer_and_audit_rows(conn, make_user, plans) -> None:
    user_id = make_user()
    set_plan(conn, user_id, plans["Basic"])
    assert len(audit_rows(conn, user_id)) == 1
    conn.execute("delete from auth.users where id = %s", (user_id,))
    assert customer(conn, user_id) is None
    assert audit_rows(conn, user_id) == []


# ---------------------------------------------------------------------------------------
# auth.users updates -> customer
# ---------------------------------------------------------------------------------------


def test_sign_in_update_leaves_customer_untouched(conn, make_user) -> None:
    # Supabase writes last_sign_in_at on every sign-in; both designs rewrote the customer
    # row each time (a new row version, a fresh updated_at, lock traffic).
    user_id = make_user(email="signin@example.test", meta={"a": 1})
    without_triggers(
        conn, "update public.customer set updated_at = %s where uuid = %s", (PAST, user_id)
    )
    before = customer(conn, user_id)

    conn.execute("update auth.users set last_sign_in_at = now() where id = %s", (user_id,))
    conn.execute(
        "update auth.users set email = email, raw_user_meta_data = raw_user_meta_data"
        " where id = %s",
        (user_id,),
    )

    after = customer(conn, user_id)
    assert after == before  # same values and the same row version (xmin)
    assert after["updated_at"].year == 2000


def test_email_change_propagates(conn, make_user) -> None:
    user_id = make_user(email="old@example.test", meta={"a": 1})
    without_triggers(
        conn, "update public.customer set updated_at = %s where uuid = %s", (PAST, user_id)
    )
    conn.execute("update auth.users set email = 'new@example.test' where id = %s", (user_id,))
    row = customer(conn, user_id)
    assert row["email"] == "new@example.test"
    assert row["metadata"] == {"a": 1}
    assert row["updated_at"].year > 2000
    conn.execute("update auth.users set email = null where id = %s", (user_id,))
    assert customer(conn, user_id)["email"] is None


def test_metadata_change_propagates_and_null_becomes_empty_object(conn, make_user) -> None:
    user_id = make_user(meta={"a": 1})
    conn.execute(
        "update auth.users set raw_user_meta_data = %s where id = %s", (Jsonb({"b": 2}), user_id)
    )
    assert customer(conn, user_id)["metadata"] == {"b": 2}
    conn.execute("update auth.users set raw_user_meta_data = null where id = %s", (user_id,))
    assert customer(conn, user_id)["metadata"] == {}


def test_user_update_keeps_plan_and_resources(conn, make_user, plans) -> None:
    user_id = make_user()
    set_plan(conn, user_id, plans["Pro"])
    conn.execute("select public.consume_resources(%s, 'api_calls', 7)", (user_id,))
    before = customer(conn, user_id)
    conn.execute("update auth.users set email = 'changed@example.test' where id = %s", (user_id,))
    after = customer(conn, user_id)
    assert after["plan_id"] == plans["Pro"]
    assert after["remaining_resources"] == before["remaining_resources"]
    assert after["plan_updated_at"] == before["plan_updated_at"]


def test_user_update_creates_a_missing_customer_row(conn) -> None:
    # A user who existed before the schema was installed has no customer row; the next real
    # change of the user creates it (the designs' UPDATE silently did nothing).
    user_id = uuid.uuid4()
    without_triggers(
        conn, "insert into auth.users (id, email) values (%s, 'early@example.test')", (user_id,)
    )
    assert customer(conn, user_id) is None
    conn.execute("update auth.users set last_sign_in_at = now() where id = %s", (user_id,))
    assert customer(conn, user_id) is None  # not a change the customer cares about
    conn.execute("update auth.users set email = 'later@example.test' where id = %s", (user_id,))
    row = customer(conn, user_id)
    assert row is not None and row["email"] == "later@example.test" and row["metadata"] == {}


# ---------------------------------------------------------------------------------------
# Plan -> resources
# ---------------------------------------------------------------------------------------


def test_customer_inserted_with_plan_gets_its_resources(conn, make_user, plans) -> None:
    # Design 2's trigger fired on UPDATE only: a customer created with a plan had none.
    user_id = make_user(email="direct@example.test")
    conn.execute("delete from public.customer where uuid = %s", (user_id,))
    conn.execute(
        "insert into public.customer (uuid, email, plan_id) values (%s, 'direct@example.test', %s)",
        (user_id, plans["Pro"]),
    )
    row = customer(conn, user_id)
    expected = {"api_calls": 5000, "storage_gb": 50}
    assert row["plan_resources"] == expected
    assert row["remaining_resources"] == expected
    assert row["plan_updated_at"] is not None

    logged = audit_rows(conn, user_id)
    assert [a["action"] for a in logged] == ["plan_change"]
    assert logged[0]["old_value"] is None
    assert logged[0]["new_value"] == {"plan_id": plans["Pro"], "remaining_resources": expected}


def test_customer_inserted_without_plan_has_no_resources_or_audit(conn, make_user) -> None:
    user_id = make_user()
    conn.execute("delete from public.customer where uuid = %s", (user_id,))
    conn.execute("insert into public.customer (uuid) values (%s)", (user_id,))
    row = customer(conn, user_id)
    assert row["plan_resources"] is None and row["remaining_resources"] is None
    assert row["plan_updated_at"] is None
    assert audit_rows(conn, user_id) == []


def test_plan_change_copies_the_plans_resources(conn, make_user, plans) -> None:
    user_id = make_user()
    set_plan(conn, user_id, plans["Basic"])
    row = customer(conn, user_id)
    assert (
        row["plan_resources"] == row["remaining_resources"] == plan_resources(conn, plans["Basic"])
    )
    assert row["plan_updated_at"] is not None

    conn.execute("select public.consume_resources(%s, 'api_calls', 100)", (user_id,))
    without_triggers(
        conn, "update public.customer set plan_updated_at = %s where uuid = %s", (PAST, user_id)
    )
    set_plan(conn, user_id, plans["Enterprise"])
    row = customer(conn, user_id)
    enterprise = plan_resources(conn, plans["Enterprise"])
    assert row["plan_resources"] == enterprise
    assert row["remaining_resources"] == enterprise  # a new plan starts full
    assert row["plan_updated_at"].year > 2000


def test_setting_the_same_plan_again_changes_nothing(conn, make_user, plans) -> None:
    user_id = make_user()
    set_plan(conn, user_id, plans["Basic"])
    conn.execute("select public.consume_resources(%s, 'api_calls', 10)", (user_id,))
    without_triggers(
        conn, "update public.customer set plan_updated_at = %s where uuid = %s", (PAST, user_id)
    )
    before = customer(conn, user_id)
    logged_before = audit_rows(conn, user_id)

    set_plan(conn, user_id, plans["Basic"])

    after = customer(conn, user_id)
    assert after["remaining_resources"] == {"api_calls": 990, "storage_gb": 10}
    assert after["plan_resources"] == before["plan_resources"]
    assert after["plan_updated_at"] == before["plan_updated_at"]
    assert audit_rows(conn, user_id) == logged_before


def test_setting_plan_to_null_clears_resources(conn, make_user, plans) -> None:
    user_id = make_user()
    set_plan(conn, user_id, plans["Pro"])
    set_plan(conn, user_id, None)
    row = customer(conn, user_id)
    assert row["plan_id"] is None
    assert row["plan_resources"] is None
    assert row["remaining_resources"] is None
    last = audit_rows(conn, user_id)[-1]
    assert last["action"] == "plan_change"
    assert last["new_value"] == {"plan_id": None, "remaining_resources": None}


def test_deleting_a_plan_detaches_its_customers_and_clears_resources(
    conn, make_user, plans
) -> None:
    on_basic = [make_user(), make_user()]
    on_pro = make_user()
    for user_id in on_basic:
        set_plan(conn, user_id, plans["Basic"])
    set_plan(conn, on_pro, plans["Pro"])

    conn.execute("delete from public.plans where id = %s", (plans["Basic"],))

    for user_id in on_basic:
        row = customer(conn, user_id)
        assert row["plan_id"] is None
        assert row["plan_resources"] is None and row["remaining_resources"] is None
        last = audit_rows(conn, user_id)[-1]
        assert last["action"] == "plan_change"
        assert last["old_value"]["plan_id"] == plans["Basic"]
        assert last["new_value"] == {"plan_id": None, "remaining_resources": None}
    pro = customer(conn, on_pro)
    assert pro["plan_id"] == plans["Pro"]
    assert pro["remaining_resources"] == plan_resources(conn, plans["Pro"])


def test_plan_without_resources_gives_null_resources(conn, make_user) -> None:
    plan_id = conn.execute(
        "insert into public.plans (name, price) values ('Free', 0) returning id"
    ).fetchone()[0]
    user_id = make_user()
    set_plan(conn, user_id, plan_id)
    row = customer(conn, user_id)
    assert row["plan_id"] == plan_id
    assert row["plan_resources"] is None and row["remaining_resources"] is None


def test_check_constraints(conn, make_user) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("insert into public.plans (name, price) values ('Neg', -1)")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("insert into public.plans (name, price, resources) values ('Arr', 1, '[1]')")
    currency = conn.execute(
        "insert into public.plans (name, price) values ('Cur', 1) returning price_currency"
    ).fetchone()[0]
    assert currency == "eur"
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "insert into public.audit_logs (customer_uuid, action) values (%s, 'whatever')",
            (make_user(),),
        )


def test_updated_at_is_touched_on_update(conn, make_user, plans) -> None:
    user_id = make_user()
    without_triggers(conn, "update public.plans set updated_at = %s", (PAST,))
    without_triggers(
        conn, "update public.customer set updated_at = %s where uuid = %s", (PAST, user_id)
    )
    conn.execute("update public.plans set description = 'new' where id = %s", (plans["Pro"],))
    conn.execute(
        "update public.customer set stripe_customer_id = 'cus_1' where uuid = %s", (user_id,)
    )
    years = dict(conn.execute("select name, extract(year from updated_at) from public.plans"))
    assert years["Pro"] > 2000 and years["Basic"] == 2000
    assert customer(conn, user_id)["updated_at"].year > 2000


# ---------------------------------------------------------------------------------------
# Audit log
# ---------------------------------------------------------------------------------------


def test_plan_change_writes_one_row_with_old_and_new_values(conn, make_user, plans) -> None:
    user_id = make_user()
    set_plan(conn, user_id, plans["Basic"])
    conn.execute("select public.consume_resources(%s, 'storage_gb', 4)", (user_id,))
    count_before = len(audit_rows(conn, user_id))

    set_plan(conn, user_id, plans["Pro"])

    logged = audit_rows(conn, user_id)
    assert len(logged) == count_before + 1
    last = logged[-1]
    assert last["action"] == "plan_change"
    assert last["old_value"] == {
        "plan_id": plans["Basic"],
        "remaining_resources": {"api_calls": 1000, "storage_gb": 6},
    }
    assert last["new_value"] == {
        "plan_id": plans["Pro"],
        "remaining_resources": {"api_calls": 5000, "storage_gb": 50},
    }
    assert last["source"] is None


def test_consume_writes_resource_update(conn, make_user, plans) -> None:
    user_id = make_user()
    set_plan(conn, user_id, plans["Basic"])
    conn.execute("select public.consume_resources(%s, 'api_calls', 25)", (user_id,))
    last = audit_rows(conn, user_id)[-1]
    assert last["action"] == "resource_update"
    assert last["old_value"]["remaining_resources"]["api_calls"] == 1000
    assert last["new_value"]["remaining_resources"]["api_calls"] == 975
    assert last["new_value"]["plan_id"] == plans["Basic"]


def test_restoring_full_allowance_writes_resource_reset(conn, make_user, plans) -> None:
    # Design 2 logged every balance change as resource_update; a renewal could not be told
    # apart from consumption.
    user_id = make_user()
    set_plan(conn, user_id, plans["Basic"])
    conn.execute("select public.consume_resources(%s, 'api_calls', 300)", (user_id,))
    conn.execute(
        "update public.customer set remaining_resources = plan_resources where uuid = %s",
        (user_id,),
    )
    logged = audit_rows(conn, user_id)
    assert [a["action"] for a in logged] == ["plan_change", "resource_update", "resource_reset"]
    assert logged[-1]["old_value"]["remaining_resources"]["api_calls"] == 700
    assert logged[-1]["new_value"]["remaining_resources"] == {"api_calls": 1000, "storage_gb": 10}
    # Resetting again when already full is not a change and is not logged.
    conn.execute(
        "update public.customer set remaining_resources = plan_resources where uuid = %s",
        (user_id,),
    )
    assert len(audit_rows(conn, user_id)) == 3


def test_other_updates_write_no_audit_rows(conn, make_user, plans) -> None:
    user_id = make_user()
    set_plan(conn, user_id, plans["Basic"])
    conn.execute(
        "update public.customer set stripe_customer_id = 'cus_x', email = 'e@x.test'"
        " where uuid = %s",
        (user_id,),
    )
    conn.execute("update auth.users set email = 'other@x.test' where id = %s", (user_id,))
    assert [a["action"] for a in audit_rows(conn, user_id)] == ["plan_change"]


def test_audit_source_comes_from_the_transaction_setting(conn, make_user, plans) -> None:
    user_id = make_user()
    with conn.transaction():
        conn.execute("select set_config('webhook.source', 'stripe:evt_123', true)")
        set_plan(conn, user_id, plans["Basic"])
        conn.execute("select public.consume_resources(%s, 'api_calls', 1)", (user_id,))
    # Outside the transaction the setting is back to '' and the source to NULL.
    conn.execute("select public.consume_resources(%s, 'api_calls', 1)", (user_id,))
    logged = audit_rows(conn, user_id)
    assert [(a["action"], a["source"]) for a in logged] == [
        ("plan_change", "stripe:evt_123"),
        ("resource_update", "stripe:evt_123"),
        ("resource_update", None),
    ]


BATCH_STEPS = [
    # (what every customer's row gets, in one statement); the audit rows must be those of
    # the same change made row by row.
    "plan_id = {basic}",  # plan_change from none
    "plan_id = {pro}",  # plan_change
    "remaining_resources = jsonb_set(remaining_resources, '{{api_calls}}', '7')",  # update
    "remaining_resources = plan_resources",  # reset
    "remaining_resources = plan_resources",  # nothing changed, nothing logged
    "email = 'same@example.test'",  # not a logged column
    "plan_id = null",  # plan_change to none
]


def _audit_by_customer(conn: psycopg.Connection, users: list[uuid.UUID]) -> list[list[tuple]]:
    return [
        [(a["action"], a["old_value"], a["new_value"]) for a in audit_rows(conn, user)]
        for user in users
    ]


def test_a_batch_statement_with_sources_logs_what_row_by_row_logs(conn, make_user, plans) -> None:
    one_by_one = [make_user() for _ in range(3)]
    batched = [make_user() for _ in range(3)]
    for step, assignment in enumerate(BATCH_STEPS):
        sql = f"update public.customer set {assignment.format(basic=plans['Basic'], pro=plans['Pro'])}"
        for user in one_by_one:
            conn.execute(f"{sql} where uuid = %s", (user,))
        sources = {str(user): f"stripe:evt_{step}_{n}" for n, user in enumerate(batched[:2])}
        with conn.transaction():
            conn.execute("select set_config('webhook.source', 'stripe:fallback', true)")
            conn.execute("select set_config('webhook.sources', %s, true)", (json.dumps(sources),))
            conn.execute(f"{sql} where uuid = any(%s)", (batched,))
    assert _audit_by_customer(conn, batched) == _audit_by_customer(conn, one_by_one)
    assert len(audit_rows(conn, batched[0])) == 5
    # Each row is named from the map; a customer missing from it gets webhook.source.
    named = [[a["source"] for a in audit_rows(conn, user)] for user in batched]
    logged_steps = [0, 1, 2, 3, 6]
    assert named == [
        [f"stripe:evt_{step}_0" for step in logged_steps],
        [f"stripe:evt_{step}_1" for step in logged_steps],
        ["stripe:fallback"] * 5,
    ]


def test_with_sources_set_an_insert_is_still_logged_once(conn, make_user, plans) -> None:
    user_id = make_user()
    conn.execute("delete from public.customer where uuid = %s", (user_id,))
    with conn.transaction():
        conn.execute("select set_config('webhook.sources', %s, true)", (f'{{"{user_id}": "x"}}',))
        conn.execute(
            "insert into public.customer (uuid, plan_id) values (%s, %s)",
            (user_id, plans["Basic"]),
        )
    assert [a["action"] for a in audit_rows(conn, user_id)] == ["plan_change"]


def test_with_sources_set_a_single_row_update_is_logged_once(conn, make_user, plans) -> None:
    user_id = make_user()
    set_plan(conn, user_id, plans["Basic"])
    with conn.transaction():
        conn.execute("select set_config('webhook.sources', %s, true)", (f'{{"{user_id}": "s"}}',))
        conn.execute("select public.consume_resources(%s, 'api_calls', 1)", (user_id,))
    logged = [(a["action"], a["source"]) for a in audit_rows(conn, user_id)]
    assert logged == [("plan_change", None), ("resource_update", "s")]


@pytest.mark.parametrize("value", ["[1, 2]", "not json"])
def test_sources_that_are_no_json_object_refuse_the_update(conn, make_user, plans, value) -> None:
    user_id = make_user()
    with pytest.raises(psycopg.Error), conn.transaction():
        conn.execute("select set_config('webhook.sources', %s, true)", (value,))
        set_plan(conn, user_id, plans["Basic"])
    assert customer(conn, user_id)["plan_id"] is None
    assert audit_rows(conn, user_id) == []


# ---------------------------------------------------------------------------------------
# customer_plan_history
# ---------------------------------------------------------------------------------------


def history(conn: psycopg.Connection, user_id: uuid.UUID) -> list[dict]:
    return (
        conn.cursor(row_factory=dict_row)
        .execute(
            "select * from public.customer_plan_history where customer_uuid = %s"
            " order by started_at, id",
            (user_id,),
        )
        .fetchall()
    )


def plan_change_times(conn: psycopg.Connection, user_id: uuid.UUID) -> list:
    return [
        t
        for (t,) in conn.execute(
            "select created_at from public.audit_logs where customer_uuid = %s"
            " and action = 'plan_change' order by created_at, id",
            (user_id,),
        )
    ]


def test_plan_history_has_one_row_per_plan_period(conn, make_user, plans) -> None:
    user_id = make_user()
    other = make_user()
    set_plan(conn, other, plans["Enterprise"])

    set_plan(conn, user_id, plans["Basic"])
    conn.execute("select public.consume_resources(%s, 'api_calls', 5)", (user_id,))
    set_plan(conn, user_id, plans["Pro"])
    set_plan(conn, user_id, None)
    set_plan(conn, user_id, plans["Enterprise"])
    conn.execute("select public.consume_resources(%s, 'api_calls', 5)", (user_id,))

    periods = history(conn, user_id)
    changes = plan_change_times(conn, user_id)  # Basic, Pro, NULL, Enterprise
    assert [(p["plan_id"], p["plan_name"]) for p in periods] == [
        (plans["Basic"], "Basic"),
        (plans["Pro"], "Pro"),
        (plans["Enterprise"], "Enterprise"),
    ]
    assert [p["started_at"] for p in periods] == [changes[0], changes[1], changes[3]]
    assert periods[0]["ended_at"] == periods[1]["started_at"]
    assert periods[1]["ended_at"] == changes[2]  # ended by the change to no plan
    assert periods[2]["ended_at"] is None
    assert periods[0]["resources"] == {"api_calls": 1000, "storage_gb": 10}

    other_periods = history(conn, other)
    assert [(p["plan_name"], p["ended_at"]) for p in other_periods] == [("Enterprise", None)]
    assert history(conn, make_user()) == []  # never had a plan


def test_plan_history_within_one_transaction_is_ordered_by_id(conn, make_user, plans) -> None:
    user_id = make_user()
    with conn.transaction():
        set_plan(conn, user_id, plans["Basic"])
        set_plan(conn, user_id, plans["Pro"])
    periods = history(conn, user_id)
    assert [p["plan_name"] for p in periods] == ["Basic", "Pro"]
    assert periods[0]["ended_at"] == periods[1]["started_at"]
    assert periods[1]["ended_at"] is None
