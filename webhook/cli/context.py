"""What every command needs from the group: the database, opened the one shared way."""

import os
from collections.abc import Iterator
from contextlib import contextmanager

import click
import psycopg

from webhook.config import prepared_statements_setting, use_prepared_statements
from webhook.db import connect, resolve_database_url


def database_url(ctx: click.Context) -> str:
    """The URL chosen by --database-url / DATABASE_URL, else the embedded server's."""
    return resolve_database_url(ctx.obj.get("database_url"))


@contextmanager
def database(ctx: click.Context, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """A connection for one command, closed when it finishes."""
    setting = prepared_statements_setting(os.environ)  # a bad value stops before connecting
    url = database_url(ctx)
    conn = connect(url, autocommit=autocommit)
    if not use_prepared_statements(setting, url):
        conn.prepare_threshold = None
    try:
        yield conn
    finally:
        conn.close()
