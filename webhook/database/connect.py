"""Connections to PostgreSQL: where the URL comes from, and one-line errors when it fails.

Every entry point (the web app, each CLI command, the tests) resolves its database the
same way: an explicit URL, else DATABASE_URL, else the embedded server in ./.pgdata.
"""

import os
import re
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from webhook.core.errors import DatabaseUnavailable

CONNECT_TIMEOUT_SECONDS = 5

# Noticing a database host that went away without closing its connections (a failover to
# another machine, a network partition). libpq leaves that to the system, which waits two
# hours before its first keepalive probe: meanwhile a query whose answer never comes holds
# its connection, and its worker answers 503 or its drain waits, for all that time. With
# these, a connection that hears nothing for 10 s is probed every 5 s, and one that has
# heard nothing for 30 s (probes or data unacknowledged) is given up (on Linux the user
# timeout decides; elsewhere, three unanswered probes); the query fails, the pool drops the
# connection, and the next one goes to whatever answers at the database's address now.
# A URL that sets any of them keeps its own value; one that turns keepalives off or names
# a service file entry gets none. libpq ignores them for Unix-domain sockets. Behind a
# pooler (PgBouncer, Supavisor) they cover the link to the pooler only.
DEAD_PEER_OPTIONS = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}


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


def dead_peer_options(url: str) -> dict[str, str]:
    """DEAD_PEER_OPTIONS that `url` does not set itself (none for a URL that turns them off
    or takes its options from a service file, and none for a URL libpq cannot read:
    connecting then fails with libpq's own message, as it would without them)."""
    try:
        given = conninfo_to_dict(url)
    except psycopg.Error:
        return {}
    if given.get("keepalives") == "0" or "service" in given:
        return {}
    return {key: value for key, value in DEAD_PEER_OPTIONS.items() if key not in given}


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection:
    """Open one connection, turning any failure into a one-line DatabaseUnavailable."""
    try:
        return psycopg.connect(
            url,
            autocommit=autocommit,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            **dead_peer_options(url),
        )
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
