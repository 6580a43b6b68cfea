"""Connections to PostgreSQL: where the URL comes from, and one-line errors when it fails.

Every entry point (the web app, each CLI command, the tests) resolves its database the
same way: an explicit URL, else DATABASE_URL, else the embedded server in ./.pgdata if
`make dev` made one there. `serve` (make dev) alone makes it.
"""

import os
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from webhook.core.errors import ConfigError, DatabaseUnavailable

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


NO_DATABASE = (
    "DATABASE_URL is not set: set it to your PostgreSQL's URL (for development, `make dev`"
    " starts an embedded PostgreSQL in ./.pgdata, which commands run in this folder then use)"
)


def resolve_database_url(explicit: str | None = None) -> str:
    """The URL to use: `explicit`, else DATABASE_URL, else the embedded server of
    development if `make dev` made one here (see configured_database_url)."""
    url = configured_database_url(explicit)
    if url is not None:
        return url
    from webhook.database.embedded import embedded_database_url

    return embedded_database_url()


def configured_database_url(explicit: str | None = None) -> str | None:
    """`explicit`, else DATABASE_URL; None when neither is set but `make dev` made the
    embedded database here (which the caller may then start).

    With neither, ConfigError: a process started without DATABASE_URL by mistake (a
    release step, a web line) must not run on a database of its own that the next deploy
    throws away, answering Stripe 200 for events nobody keeps. A given URL that libpq
    cannot read, or reads otherwise than written, is refused too, before a pool or a
    command tries it: libpq's messages would quote the part it misread, which can be the
    password. Starts nothing (the web line's master checks this before any worker starts).
    Either is trimmed, and a blank one counts as unset (a trailing newline from a secret
    file is not part of the URL; a blank one must not mean libpq's default server).
    """
    url = (explicit or "").strip() or os.environ.get("DATABASE_URL", "").strip()
    if url:
        check_readable(url)
        return url
    from webhook.database.embedded import development_database_exists

    if not development_database_exists():
        raise ConfigError(NO_DATABASE)
    return None


def check_readable(url: str) -> None:
    """Raise ConfigError, without quoting `url`, if libpq cannot read it as meant."""
    if _read_as_written(url) is None:
        raise ConfigError(
            "the database URL is not a connection string PostgreSQL reads as written; in a"
            " URL, characters such as @ : / ? # % in the user name or password must be"
            " percent-encoded (%40 %3A %2F %3F %23 %25)"
        )


def _read_as_written(url: str) -> dict[str, str] | None:
    """The parameters libpq reads from `url`; None when it cannot read it, or reads its
    credentials as something else.

    libpq takes a URL's user name and password from before the first `@`, and only if
    no `/` comes first: `postgres:pa/ss@host` is read as the host `postgres` on the port
    `pa`, and `user:p@ss@host` as the password `p` on the host `ss@host`. Either way
    part of the password would reach libpq's error messages, and the URL does not
    connect where its author meant.
    """
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return None
    _, separator, rest = url.partition("://")
    has_credentials = bool(separator) and "@" in rest
    credentials_read = bool({"user", "password"} & params.keys()) and not any(
        "@" in params.get(key, "") for key in ("host", "port", "dbname")
    )
    return params if credentials_read or not has_credentials else None


# Connection parameters that are secrets, masked wherever a connection string is shown.
SECRET_PARAMETERS = ("password", "sslpassword")
MISREAD_URL = "(a database URL PostgreSQL does not read as written)"


def mask_url(url: str) -> str:
    """The URL with its secrets replaced by ***, safe to print or log.

    What counts as the password is what libpq reads as one: a URL whose password holds an
    unencoded `#` or `?` is read by libpq whole, but split by urllib at that character.
    A URL is shown as a URL when urllib finds the same password libpq does; otherwise the
    parameters libpq read are shown as key=value pairs, the secrets masked. A URL libpq
    misreads (see _read_as_written) is not shown at all.
    """
    params = _read_as_written(url)
    if params is None:
        return MISREAD_URL
    if not any(key in params for key in SECRET_PARAMETERS):
        return url
    if "://" in url and "sslpassword" not in params:
        try:
            parts = urlsplit(url)
            password = parts.password
        except ValueError:  # urllib refuses what libpq reads (a bracket left open)
            password = None
        if password is not None and unquote(password) == params.get("password"):
            user_info, _, hosts = parts.netloc.rpartition("@")
            user = user_info.partition(":")[0]
            return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))
    shown = {key: "***" if key in SECRET_PARAMETERS else value for key, value in params.items()}
    return make_conninfo(**shown)


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
    """Open one connection, turning any failure into a one-line DatabaseUnavailable
    (ConfigError for a URL libpq would misread)."""
    check_readable(url)
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
