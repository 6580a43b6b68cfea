"""What every command needs from the group: the database, opened the one shared way."""

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
import psycopg

from webhook.core.config import load_settings, prepared_statements_setting, use_prepared_statements
from webhook.database import migrations
from webhook.database.connect import connect, resolve_database_url
from webhook.pipeline.processor import ProcessingRules


def database_url(ctx: click.Context) -> str:
    """The URL chosen by --database-url / DATABASE_URL, else the embedded server's."""
    return resolve_database_url(ctx.obj.get("database_url"))


def connector(
    ctx: click.Context, *, autocommit: bool = False, prepare: bool | None = None
) -> Callable[[], psycopg.Connection]:
    """Opens connections for one command, each the one shared way (for parallel workers).

    `prepare` None: statements are prepared as DB_PREPARED_STATEMENTS and the URL say (a
    bad value stops the command before connecting). `doctor` passes False: it runs each
    query once, and reports a bad value among the settings rather than as a database fault.
    """
    setting = prepared_statements_setting(os.environ) if prepare is None else prepare
    url = database_url(ctx)
    prepared = use_prepared_statements(setting, url)

    def open_one() -> psycopg.Connection:
        conn = connect(url, autocommit=autocommit)
        if not prepared:
            conn.prepare_threshold = None
        return conn

    return open_one


@contextmanager
def database(
    ctx: click.Context, *, autocommit: bool = False, prepare: bool | None = None
) -> Iterator[psycopg.Connection]:
    """A connection for one command, closed when it finishes (`prepare`: see connector)."""
    conn = connector(ctx, autocommit=autocommit, prepare=prepare)()
    try:
        yield conn
    finally:
        conn.close()


def require_schema(conn: psycopg.Connection) -> None:
    """Stop with one line if the database lacks migrations this code relies on."""
    waiting = migrations.pending(conn)
    if waiting:
        raise click.ClickException(
            f"{len(waiting)} migration(s) pending; run `python -m webhook migrate` first"
        )


def processing_rules() -> ProcessingRules:
    """The rules the handlers apply, from the environment (no signing secret needed)."""
    settings = load_settings(require_secret=False)
    return ProcessingRules(
        entitled_statuses=settings.entitled_statuses,
        stripe_api_key=settings.stripe_api_key,
        stripe_api_base=settings.stripe_api_base,
        lock_timeout_ms=settings.lock_timeout_ms,
        statement_timeout_ms=settings.statement_timeout_ms,
    )
