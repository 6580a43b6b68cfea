"""The test bed itself: a real, migrated PostgreSQL per test."""

import psycopg

from webhook.database import migrations


def test_each_test_gets_a_migrated_database(conn: psycopg.Connection) -> None:
    version = conn.execute("show server_version_num").fetchone()[0]
    assert int(version) >= 150000
    applied = conn.execute(
        "select version from webhook_private.schema_migrations order by 1"
    ).fetchall()
    assert [v for (v,) in applied] == [m.version for m in migrations.discover()]
    assert conn.execute("select count(*) from public.customer").fetchone()[0] == 0


def test_databases_are_isolated_between_tests(conn: psycopg.Connection, make_user) -> None:
    make_user()
    assert conn.execute("select count(*) from public.customer").fetchone()[0] == 1
