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
