"""What every command needs from the group: the database, opened the one shared way."""

from collections.abc import Iterator
from contextlib import contextmanager

import click
import psycopg

from webhook.db import connect, resolve_database_url


def database_url(ctx: click.Context) -> str:
    """The URL chosen by --database-url / DATABASE_URL, else the embedded server's."""
    return resolve_database_url(ctx.obj.get("database_url"))


@contextmanager
def database(ctx: click.Context, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """A connection for one command, closed when it finishes."""
    conn = connect(database_url(ctx), autocommit=autocommit)
    try:
        yield conn
    finally:
        conn.close()
