"""public.consume_resources: the one safe write path for spending a customer's resources."""

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg.errors import InsufficientPrivilege
from psycopg.types.json import Jsonb

CONSUME = "select public.consume_resources(%s, %s, %s)"


@pytest.fixture
def on_basic(conn, make_user, plans) -> uuid.UUID:
    """A customer on Basic: api_calls 1000, storage_gb 10."""
    user_id = make_user()
    conn.execute(
        "update public.customer set plan_id = %s where uuid = %s", (plans["Basic"], user_id)
    )
    return user_id


def remaining(conn: psycopg.Connection, user_id: uuid.UUID) -> dict | None:
    row = conn.execute(
        "select remaining_resources from public.customer where uuid = %s", (user_id,)
    ).fetchone()
    return row[0] if row else None


def audit_count(conn: psycopg.Connection, user_id: uuid.UUID | None = None) -> int:
    return conn.execute(
        "select count(*) from public.audit_logs where %s::uuid is null or customer_uuid = %s",
        (user_id, user_id),
    ).fetchone()[0]


def set_remaining(conn: psycopg.Connection, user_id: uuid.UUID, balance: dict) -> None:
    conn.execute(
        "update public.customer set remaining_resources = %s where uuid = %s",
        (Jsonb(balance), user_id),
    )


def test_returns_resource_consumed_and_remaining(conn, on_basic) -> None:
    result = conn.execute(CONSUME, (on_basic, "api_calls", 42)).fetchone()[0]
    assert result["resource"] == "api_calls"
    assert result["consumed"] == 42
    assert result["remaining"] == 958
    assert result["customer"] == str(on_basic)
    assert result["remaining_resources"] == {"api_calls": 958, "storage_gb": 10}
    assert remaining(conn, on_basic) == {"api_calls": 958, "storage_gb": 10}
    # The whole balance can be spent, down to zero.
    assert conn.execute(CONSUME, (on_basic, "storage_gb", 10)).fetchone()[0]["remaining"] == 0
    assert remaining(conn, on_basic) == {"api_calls": 958, "storage_gb": 0}


def _consume_in_parallel(db_url: str, calls: list[tuple[uuid.UUID, str, int]]) -> list:
    """Run each call on its own connection, all released at once; return results in order.

    Each result is ("ok", returned jsonb) or ("error", sqlstate).
    """
    barrier = threading.Barrier(len(calls))

    def call(args: tuple[uuid.UUID, str, int]):
        with psycopg.connect(db_url, autocommit=True) as own:
            barrier.wait(timeout=30)
            try:
                return ("ok", own.execute(CONSUME, args).fetchone()[0])
            except psycopg.Error as exc:
                return ("error", exc.sqlstate)

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(call, calls))


def test_parallel_calls_never_overspend_or_lose_updates(conn, db_url, on_basic) -> None:
    set_remaining(conn, on_basic, {"api_calls": 10, "storage_gb": 10})
    audit_before = audit_count(conn, on_basic)

    results = _consume_in_parallel(db_url, [(on_basic, "api_calls", 1)] * 30)

    succeeded = [value for kind, value in results if kind == "ok"]
    failed = [value for kind, value in results if kind == "error"]
    assert len(succeeded) == 10
    assert failed == ["23514"] * 20
    # Every success saw a different balance: no two calls spent the same unit.
    assert sorted(r["remaining"] for r in succeeded) == list(range(10))
    assert remaining(conn, on_basic) == {"api_calls": 0, "storage_gb": 10}

    logged = conn.execute(
        "select (new_value -> 'remaining_resources' ->> 'api_calls')::int from public.audit_logs"
        " where customer_uuid = %s and action = 'resource_update'"
        " order by id desc limit 10",
        (on_basic,),
    ).fetchall()
    assert audit_count(conn, on_basic) - audit_before == 10
    assert sorted(v for (v,) in logged) == list(range(10))


def test_parallel_calls_on_different_resources_keep_both(conn, db_url, on_basic) -> None:
    calls = [(on_basic, "api_calls", 3)] * 8 + [(on_basic, "storage_gb", 1)] * 8
    results = _consume_in_parallel(db_url, calls)
    assert [kind for kind, _ in results] == ["ok"] * 16
    assert remaining(conn, on_basic) == {"api_calls": 1000 - 24, "storage_gb": 2}


# ---------------------------------------------------------------------------------------
# Errors: each with its own SQLSTATE and a message that says what is wrong
# ---------------------------------------------------------------------------------------


def expect_error(conn, args: tuple, sqlstate: str, *fragments: str) -> None:
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(CONSUME, args)
    assert caught.value.sqlstate == sqlstate, caught.value
    message = caught.value.diag.message_primary
    for fragment in fragments:
        assert fragment in message, message


def test_missing_customer(conn, plans) -> None:
    ghost = uuid.uuid4()
    expect_error(conn, (ghost, "api_calls", 1), "P0002", str(ghost), "does not exist")


def test_customer_without_plan(conn, make_user) -> None:
    user_id = make_user()
    expect_error(conn, (user_id, "api_calls", 1), "P0002", str(user_id), "has no plan")
    assert audit_count(conn, user_id) == 0


def test_resource_not_in_plan(conn, on_basic) -> None:
    expect_error(conn, (on_basic, "gpu_hours", 1), "P0002", 'no resource "gpu_hours"')


def test_non_numeric_resource_is_not_consumable(conn, make_user) -> None:
    plan_id = conn.execute(
        "insert into public.plans (name, price, resources)"
        """ values ('Support', 5, '{"support": "email", "seats": 3}') returning id"""
    ).fetchone()[0]
    user_id = make_user()
    conn.execute("update public.customer set plan_id = %s where uuid = %s", (plan_id, user_id))
    # Not a cast error (22P02) from deep inside: the same clear answer as a missing resource.
    expect_error(conn, (user_id, "support", 1), "P0002", 'no resource "support"')
    assert conn.execute(CONSUME, (user_id, "seats", 2)).fetchone()[0]["remaining"] == 1


def test_insufficient_balance_changes_nothing(conn, on_basic) -> None:
    conn.execute(CONSUME, (on_basic, "storage_gb", 4))
    before = (remaining(conn, on_basic), audit_count(conn, on_basic))
    expect_error(
        conn, (on_basic, "storage_gb", 7), "23514", 'insufficient "storage_gb"', "6 remaining"
    )
    assert (remaining(conn, on_basic), audit_count(conn, on_basic)) == before


def test_amount_must_be_positive(conn, on_basic) -> None:
    for amount in (0, -1, -1000):
        expect_error(conn, (on_basic, "api_calls", amount), "22023", "must be positive")
    assert remaining(conn, on_basic)["api_calls"] == 1000


def test_null_arguments(conn, on_basic) -> None:
    for missing in ("customer", "resource", "amount"):
        args = {"customer": on_basic, "resource": "api_calls", "amount": 1}
        args[missing] = None
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(
                "select public.consume_resources(%s::uuid, %s::text, %s::integer)",
                (args["customer"], args["resource"], args["amount"]),
            )
        assert caught.value.sqlstate == "22004", missing
        assert "required" in caught.value.diag.message_primary
    assert remaining(conn, on_basic)["api_calls"] == 1000


# ---------------------------------------------------------------------------------------
# Who may consume whose resources
# ---------------------------------------------------------------------------------------


def test_authenticated_user_consumes_own_resources(as_role, conn, on_basic) -> None:
    with as_role("authenticated", on_basic):
        result = conn.execute(CONSUME, (on_basic, "api_calls", 5)).fetchone()[0]
        assert result["remaining"] == 995
        assert remaining(conn, on_basic) == {"api_calls": 995, "storage_gb": 10}


def test_authenticated_user_cannot_consume_anothers(
    as_role, conn, make_user, plans, on_basic
) -> None:
    intruder = make_user()
    conn.execute(
        "update public.customer set plan_id = %s where uuid = %s", (plans["Pro"], intruder)
    )
    with as_role("authenticated", intruder), pytest.raises(InsufficientPrivilege) as caught:
        conn.execute(CONSUME, (on_basic, "api_calls", 5))
    assert caught.value.sqlstate == "42501"
    assert "not allowed" in caught.value.diag.message_primary
    assert remaining(conn, on_basic)["api_calls"] == 1000


def test_authenticated_without_claims_or_for_a_stranger_cannot_consume(
    as_role, conn, on_basic
) -> None:
    with as_role("authenticated"), pytest.raises(InsufficientPrivilege):
        conn.execute(CONSUME, (on_basic, "api_calls", 5))
    assert remaining(conn, on_basic)["api_calls"] == 1000
    # Permission is checked first: a signed-in stranger cannot probe which customers exist.
    with as_role("authenticated", on_basic), pytest.raises(InsufficientPrivilege):
        conn.execute(CONSUME, (uuid.uuid4(), "api_calls", 1))


def test_anon_cannot_execute(as_role, conn, on_basic) -> None:
    with as_role("anon", on_basic), pytest.raises(InsufficientPrivilege) as caught:
        conn.execute(CONSUME, (on_basic, "api_calls", 1))
    assert "permission denied for function consume_resources" in str(caught.value)
    assert remaining(conn, on_basic)["api_calls"] == 1000


def test_service_role_consumes_anyones(as_role, conn, make_user, on_basic) -> None:
    someone_else = make_user()
    with as_role("service_role", someone_else):
        assert conn.execute(CONSUME, (on_basic, "api_calls", 9)).fetchone()[0]["remaining"] == 991
        conn.execute("select set_config('request.jwt.claims', '', true)")
        assert conn.execute(CONSUME, (on_basic, "api_calls", 1)).fetchone()[0]["remaining"] == 990
        assert remaining(conn, on_basic)["api_calls"] == 990


def test_consumption_is_logged_with_the_callers_source(as_role, conn, on_basic) -> None:
    with as_role("service_role"):
        conn.execute("select set_config('webhook.source', 'job:nightly', true)")
        conn.execute(CONSUME, (on_basic, "api_calls", 2))
        row = conn.execute(
            "select action, source from public.audit_logs order by id desc limit 1"
        ).fetchone()
    assert row == ("resource_update", "job:nightly")
