"""Connections to PostgreSQL: where the URL comes from, and one-line errors when it fails.

Every entry point (the web app, each CLI command, the tests) resolves its database the
same way: an explicit URL, else DATABASE_URL, else the embedded server in ./.pgdata.
"""

import os
import re
from urllib.parse import urlsplit, urlunsplit

import psycopg

from webhook.core.errors import DatabaseUnavailable

CONNECT_TIMEOUT_SECONDS = 5


def resolve_database_url(explicit: str | None = None) -> str:
    """The URL to use: `explicit`, else DATABASE_URL, else the embedded server."""
    url = explicit or os.environ.get("DATABASE_URL", "").strip()
    if url:
        return url
    from webhook.database.embedded import embedded_database_url

    return embedded_database_url()


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, safe to print or log."""
    if "://" in url:
        parts = urlsplit(url)
        if parts.password is not None:
            host = parts.hostname or ""
            if parts.port:
                host = f"{host}:{parts.port}"
            netloc = f"{parts.username or ''}:***@{host}"
            parts = parts._replace(netloc=netloc)
        return urlunsplit(parts)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url)


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection:
    """Open one connection, turning any failure into a one-line DatabaseUnavailable."""
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_SECONDS)
    except psycopg.Error as exc:
        raise DatabaseUnavailable(
            f"cannot reach the database at {mask_url(url)}: {first_line(exc)}"
        ) from None


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
