"""Apply the numbered SQL files in schema/ in order, each exactly once.

Each migration runs in its own transaction together with the row that records it, so a
failure leaves the database as it was before that file. A session-level advisory lock
makes two releases that start at the same time take turns instead of racing. Before the
numbered files, the migrator creates its own bookkeeping (schema/bootstrap.sql) and, on a
plain PostgreSQL, the pieces of Supabase's auth the schema refers to (schema/auth_stub.sql).
"""

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path

import psycopg

from webhook.core.errors import MigrationError
from webhook.database.sqlfile import split_statements


def _shipped_schema_dir() -> Path:
    """Where this installation keeps the SQL files of the repository's schema/ folder.

    A wheel carries them as webhook/schema (pyproject maps that package onto schema/);
    a checkout, or an editable install of one, has them in schema/ beside the package.
    """
    package = Path(__file__).resolve().parents[1]
    installed, checkout = package / "schema", package.parent / "schema"
    # With neither, where a wheel keeps them: discover() names that folder as empty.
    return checkout if checkout.is_dir() and not installed.is_dir() else installed


SCHEMA_DIR = _shipped_schema_dir()
# What to do when the SQL files are not where this installation keeps them.
MISSING_SQL = (
    "this installation lacks the SQL files of schema/ (a wheel carries them in"
    " webhook/schema); reinstall the package, or run it from a checkout of the repository"
)
MIGRATION_FILE = re.compile(r"^(?P<version>\d{3})_(?P<name>[\w-]+)\.sql$")
# An arbitrary constant shared by every process that migrates this schema.
ADVISORY_LOCK_KEY = 4_271_552_901

# What a database without this version's migrations answers a statement: a table, column,
# function or schema the code relies on is not there (yet).
SCHEMA_MISSING = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedColumn,
    psycopg.errors.UndefinedFunction,
    psycopg.errors.InvalidSchemaName,
)


@dataclass(frozen=True)
class Migration:
    """One numbered file of schema/."""

    version: str
    name: str
    path: Path

    @cached_property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @cached_property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class MigrationState:
    """A migration as the database sees it."""

    migration: Migration
    applied_at: datetime | None
    checksum_matches: bool

    @property
    def pending(self) -> bool:
        return self.applied_at is None


def discover(schema_dir: Path | None = None) -> list[Migration]:
    """The numbered migrations in `schema_dir` (default SCHEMA_DIR), in version order.

    None at all is an error, not an empty list: an installation without the SQL files
    would otherwise report every database, even an empty one, as up to date.
    """
    schema_dir = SCHEMA_DIR if schema_dir is None else schema_dir
    found = []
    for path in sorted(schema_dir.glob("*.sql")):
        match = MIGRATION_FILE.match(path.name)
        if match:
            found.append(Migration(match["version"], match["name"], path))
    versions = [m.version for m in found]
    duplicates = sorted({v for v in versions if versions.count(v) > 1})
    if duplicates:
        raise MigrationError(f"two migrations share the version number {', '.join(duplicates)}")
    if not found:
        raise MigrationError(f"no migrations in {schema_dir}: {MISSING_SQL}")
    return found


def status(conn: psycopg.Connection, schema_dir: Path | None = None) -> list[MigrationState]:
    """Every known migration with when it was applied (None when pending)."""
    applied = _applied(conn)
    states = []
    for migration in discover(schema_dir):
        row = applied.get(migration.version)
        states.append(
            MigrationState(
                migration=migration,
                applied_at=row[0] if row else None,
                checksum_matches=row is None or row[1] == migration.checksum,
            )
        )
    return states


def unknown(conn: psycopg.Connection, schema_dir: Path | None = None) -> list[str]:
    """Migrations the database has that this code does not ship ("018_name"), oldest
    first: a newer version migrated it, and this one (a rollback, a lagging instance) may
    not know what they changed."""
    known = {migration.version for migration in discover(schema_dir)}
    exists = conn.execute("select to_regclass('webhook_private.schema_migrations')").fetchone()
    if not exists or exists[0] is None:
        return []
    rows = conn.execute(
        "select version, name from webhook_private.schema_migrations order by version"
    ).fetchall()
    return [f"{version}_{name}" for version, name in rows if version not in known]


def pending(conn: psycopg.Connection, schema_dir: Path | None = None) -> list[Migration]:
    """The migrations not applied yet."""
    return [s.migration for s in status(conn, schema_dir) if s.pending]


def migrate(
    conn: psycopg.Connection,
    schema_dir: Path | None = None,
    report: Callable[[str], None] = lambda _line: None,
) -> list[Migration]:
    """Apply every pending migration; return those applied. Re-running applies nothing.

    `conn` must be in autocommit mode: the advisory lock is held across the transactions.
    """
    if not conn.autocommit:
        raise ValueError("migrate() needs an autocommit connection")
    schema_dir = SCHEMA_DIR if schema_dir is None else schema_dir
    discover(schema_dir)  # no SQL files here: say so before touching the database
    conn.execute("select pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
    try:
        _run_file(conn, schema_dir / "bootstrap.sql")
        _run_file(conn, schema_dir / "auth_stub.sql")
        report(f"auth: {describe_auth(conn)}")
        applied = []
        for migration in pending(conn, schema_dir):
            with conn.transaction():
                _run_statements(conn, migration.path.name, migration.sql)
                conn.execute(
                    "insert into webhook_private.schema_migrations (version, name, checksum)"
                    " values (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
            report(f"applied {migration.path.name}")
            applied.append(migration)
        return applied
    finally:
        conn.execute("select pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))


def run_script(conn: psycopg.Connection, path: Path) -> None:
    """Run one SQL file (seed, teardown) in a single transaction; roll back on failure."""
    _run_file(conn, path)


def _run_file(conn: psycopg.Connection, path: Path) -> None:
    try:
        script = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MigrationError(f"{path} is missing: {MISSING_SQL}") from None
    with conn.transaction():
        _run_statements(conn, path.name, script)


def _run_statements(conn: psycopg.Connection, filename: str, script: str) -> None:
    for statement in split_statements(script):
        try:
            conn.execute(statement.text.encode("utf-8"))
        except psycopg.Error as exc:
            reason = exc.diag.message_primary or str(exc).strip()
            raise MigrationError(
                f"{filename}, statement at line {statement.line} ({statement.summary}): "
                f"{reason}; this file was rolled back and nothing of it was applied"
            ) from None


def _applied(conn: psycopg.Connection) -> dict[str, tuple[datetime, str]]:
    exists = conn.execute("select to_regclass('webhook_private.schema_migrations')").fetchone()
    if not exists or exists[0] is None:
        return {}
    rows = conn.execute(
        "select version, applied_at, checksum from webhook_private.schema_migrations"
    ).fetchall()
    return {version: (applied_at, checksum) for version, applied_at, checksum in rows}


def describe_auth(conn: psycopg.Connection) -> str:
    """Whose auth.users the schema is built on: Supabase's or the stand-in."""
    row = conn.execute("select obj_description(to_regclass('auth.users'), 'pg_class')").fetchone()
    if row and row[0] and "stand-in" in row[0]:
        return "plain PostgreSQL, using the stand-in auth schema from schema/auth_stub.sql"
    return "Supabase (or another provider of auth.users); nothing was created in auth"
