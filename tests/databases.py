"""Throwaway databases on the test server, for tests that need more than their own clone.

Named `webhook_tests_<pid>_...` like the per-run databases, so the leftovers of a killed run
are swept with them (see conftest.py).
"""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo


@contextmanager
def scratch_database(server: Any, *, template: str, label: str) -> Iterator[str]:
    """Create a database from `template` on `server` (a pytest-postgresql executor); yield
    its URL; drop it afterwards."""

    def url(dbname: str) -> str:
        return make_conninfo(
            host=server.host,
            port=server.port,
            user=server.user,
            dbname=dbname,
            password=server.password or None,
        )

    admin = url(server.maintenance_dbname)
    name = f"webhook_tests_{os.getpid()}_{label}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("create database {} template {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    try:
        yield url(name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


def refuse_writes(
    conn: psycopg.Connection,
    table: str,
    when: str,
    message: str,
    *,
    on: str = "insert or update",
    schema: str = "pg_temp",
) -> None:
    """Make the database refuse a write to `table` whose new row matches `when` (SQL over
    `new`), raising `message`: a refusal the code must pin on the one event that caused it.

    The trigger function lives in this session's pg_temp unless `schema` says otherwise
    (a server process writing over its own connections needs it in a real schema).
    """
    function = sql.Identifier(schema, "refuse_for_test")
    conn.execute(
        sql.SQL(
            """
            create function {function}() returns trigger language plpgsql as $$
            begin
              if {when} then raise exception {message}; end if;
              return new;
            end $$;
            create trigger refuse_for_test before {on} on {table}
              for each row execute function {function}();
            """
        ).format(
            function=function,
            when=sql.SQL(when),  # type: ignore[arg-type]
            message=sql.Literal(message),
            on=sql.SQL(on),  # type: ignore[arg-type]
            table=sql.Identifier(*table.split(".")),
        )
    )
