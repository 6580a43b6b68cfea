"""`python -m webhook migrate | drop | seed-plans`, run through click's CliRunner."""

import psycopg
import pytest
from click.testing import CliRunner, Result

from webhook.cli import cli
from webhook.database import migrations

SHIPPED = [m.path.name for m in migrations.discover()]

PROJECT_OBJECTS = """
    select to_regclass('public.plans'), to_regclass('public.customer'),
           to_regclass('public.audit_logs'), to_regclass('public.usage_analytics'),
           to_regclass('public.customer_plan_history'),
           to_regprocedure('public.consume_resources(uuid, text, integer)'),
           to_regprocedure('webhook_private.handle_new_user()'),
           to_regprocedure('webhook_private.handle_user_update()'),
           to_regprocedure('webhook_private.handle_customer_plan_update()'),
           to_regprocedure('webhook_private.log_customer_changes()'),
           to_regnamespace('webhook_private')
"""


def run(db_url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--database-url", db_url, *args])


def assert_one_line_failure(result: Result) -> str:
    """The command failed with exit status 1 and one line on stderr; return that line."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_migrate_on_a_migrated_database_applies_nothing(db_url) -> None:
    result = run(db_url, "migrate")
    assert result.exit_code == 0, result.output
    assert "auth: plain PostgreSQL" in result.output
    assert "nothing to apply: the schema is up to date" in result.output


def test_migrate_on_an_empty_database_applies_everything(empty_db_url) -> None:
    result = run(empty_db_url, "migrate")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1:] == [f"applied {name}" for name in SHIPPED]
    status = run(empty_db_url, "migrate", "--status")
    assert status.exit_code == 0, status.output
    assert f"{len(SHIPPED)} applied, 0 pending" in status.output


def test_migrate_status_lists_each_file(db_url) -> None:
    result = run(db_url, "migrate", "--status")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for line, name in zip(lines, SHIPPED, strict=False):
        assert line.startswith(f"applied  {name}  ")
    assert lines[-1] == f"{len(SHIPPED)} applied, 0 pending"
    assert "file changed" not in result.output


def test_a_database_migrated_by_a_newer_version_says_so(conn, db_url) -> None:
    """After a rollback of the code, the database has migrations this version lacks:
    `migrate --status`, `migrate` and `doctor` name them."""
    conn.execute(
        "insert into webhook_private.schema_migrations (version, name, checksum)"
        " values ('999', 'from_the_future', 'x')"
    )
    status = run(db_url, "migrate", "--status")
    assert status.exit_code == 0, status.output
    lines = status.output.splitlines()
    assert "unknown  999_from_the_future  (applied by a newer version of this code)" in lines
    assert lines[-1] == f"{len(SHIPPED)} applied, 0 pending, 1 unknown to this version"
    assert "999_from_the_future" in run(db_url, "migrate").stderr
    doctor = CliRunner().invoke(
        cli, ["--database-url", db_url, "doctor"], env={"STRIPE_WEBHOOK_SECRET": "whsec_x"}
    )
    assert doctor.exit_code == 1
    assert "FIX  the database has migrations this code does not know: 999_from_the_future" in (
        doctor.output
    )


def test_an_unmigrated_database(empty_db_url) -> None:
    status = run(empty_db_url, "migrate", "--status")
    assert status.exit_code == 1, status.output  # pending: see the next test
    assert status.stderr == ""
    assert status.output.splitlines() == [
        *(f"pending  {name}" for name in SHIPPED),
        f"0 applied, {len(SHIPPED)} pending",
    ]
    line = assert_one_line_failure(run(empty_db_url, "seed-plans"))
    assert f"{len(SHIPPED)} migration(s) pending" in line
    # Nothing to drop is not an error.
    dropped = run(empty_db_url, "drop", "--yes")
    assert dropped.exit_code == 0, dropped.output


def test_migrate_status_exits_1_while_a_migration_is_pending(conn, db_url) -> None:
    """A deploy script asks `migrate --status` whether the database is ready for this code
    (as `alembic check` or Django's `migrate --check` are asked): 1 while `migrate` has
    something to apply, after the whole listing; 0 once it has run."""
    last = migrations.discover()[-1]
    conn.execute(
        "delete from webhook_private.schema_migrations where version = %s", (last.version,)
    )
    status = run(db_url, "migrate", "--status")
    assert status.exit_code == 1, status.output
    assert isinstance(status.exception, SystemExit)
    assert "Traceback" not in status.output and status.stderr == ""
    lines = status.output.splitlines()
    assert len(lines) == len(SHIPPED) + 1
    assert all(line.startswith("applied  ") for line in lines[:-2])
    assert lines[-2] == f"pending  {last.path.name}"
    assert lines[-1] == f"{len(SHIPPED) - 1} applied, 1 pending"
    conn.execute(
        "insert into webhook_private.schema_migrations (version, name, checksum)"
        " values (%s, %s, %s)",
        (last.version, last.name, last.checksum),
    )
    assert run(db_url, "migrate", "--status").exit_code == 0


def test_migrate_over_a_conflicting_schema_fails_in_one_line(empty_db_url) -> None:
    # A database that still has a table from the source designs.
    with psycopg.connect(empty_db_url, autocommit=True) as db:
        db.execute("create table public.plans (id bigint primary key, name text)")
    line = assert_one_line_failure(run(empty_db_url, "migrate"))
    assert "001_core.sql, statement at line" in line
    assert 'relation "plans" already exists' in line
    with psycopg.connect(empty_db_url, autocommit=True) as db:
        assert db.execute("select to_regclass('public.customer')").fetchone() == (None,)
        assert db.execute("select count(*) from webhook_private.schema_migrations").fetchone() == (
            0,
        )


def test_seed_plans_twice_is_idempotent(conn, db_url) -> None:
    first = run(db_url, "seed-plans")
    assert first.exit_code == 0, first.output
    assert first.output.strip() == "seeded 3 sample plan(s); 3 plan(s) in total"
    second = run(db_url, "seed-plans")
    assert second.exit_code == 0, second.output
    assert second.output.strip() == "seeded 0 sample plan(s); 3 plan(s) in total"
    rows = conn.execute(
        "select name, price::text, price_currency, stripe_price_id, resources"
        " from public.plans order by id"
    ).fetchall()
    # Ids in the listed order (a fresh database gets Basic 1, Pro 2, Enterprise 3).
    assert rows == [
        ("Basic", "9.99", "eur", "price_sample_basic", {"api_calls": 1000, "storage_gb": 10}),
        ("Pro", "19.99", "eur", "price_sample_pro", {"api_calls": 5000, "storage_gb": 50}),
        (
            "Enterprise",
            "49.99",
            "eur",
            "price_sample_enterprise",
            {"api_calls": 20000, "storage_gb": 200},
        ),
    ]


def test_seed_plans_keeps_an_existing_plan_of_the_same_name(conn, db_url) -> None:
    conn.execute("insert into public.plans (name, price) values ('Pro', 25)")
    result = run(db_url, "seed-plans")
    assert result.exit_code == 0, result.output
    assert conn.execute("select count(*) from public.plans").fetchone() == (3,)
    assert conn.execute("select price::text from public.plans where name = 'Pro'").fetchone() == (
        "25.00",
    )


def test_drop_without_yes_refuses_and_changes_nothing(conn, db_url, plans) -> None:
    line = assert_one_line_failure(run(db_url, "drop"))
    assert "--yes" in line
    assert conn.execute("select count(*) from public.plans").fetchone() == (3,)


def test_drop_then_migrate_rebuilds_and_keeps_users(conn, db_url, make_user, plans) -> None:
    phone_user = conn.execute("insert into auth.users (email) values (null) returning id")
    users = [make_user(email="one@example.test", meta={"n": 1}), phone_user.fetchone()[0]]
    conn.execute(
        "update public.customer set plan_id = %s where uuid = %s", (plans["Pro"], users[0])
    )
    conn.execute(
        "insert into webhook_private.events (id, type, stripe_created) values ('evt_1', 't', now())"
    )
    conn.execute(
        "insert into webhook_private.customer_links (stripe_customer_id, customer_uuid)"
        " values ('cus_1', %s)",
        (users[0],),
    )

    result = run(db_url, "drop", "--yes")
    assert result.exit_code == 0, result.output
    assert "dropped" in result.output

    assert set(conn.execute(PROJECT_OBJECTS).fetchone()) == {None}
    triggers = conn.execute(
        "select tgname from pg_trigger where tgrelid = 'auth.users'::regclass and not tgisinternal"
    ).fetchall()
    assert triggers == []
    assert conn.execute("select count(*) from auth.users").fetchone() == (2,)
    # Dropping twice is harmless.
    assert run(db_url, "drop", "--yes").exit_code == 0
    # A sign-up while the schema is gone still works.
    late = make_user(email="late@example.test")

    result = run(db_url, "migrate")
    assert result.exit_code == 0, result.output
    assert all(f"applied {name}" in result.output for name in SHIPPED)
    assert None not in conn.execute(PROJECT_OBJECTS).fetchone()
    customers = conn.execute(
        "select uuid, email, metadata, plan_id from public.customer order by email nulls last"
    ).fetchall()
    assert customers == [
        (late, "late@example.test", {}, None),
        (users[0], "one@example.test", {"n": 1}, None),
        (users[1], None, {}, None),
    ]
    # The triggers are back.
    again = make_user(email="again@example.test")
    assert conn.execute(
        "select email from public.customer where uuid = %s", (again,)
    ).fetchone() == ("again@example.test",)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:s3cret@127.0.0.1:1/x",
        "host=127.0.0.1 port=1 user=u password=s3cret dbname=x",
        "postgresql://u:s3cret#1@127.0.0.1:1/x",  # libpq reads the # as part of the password
    ],
)
@pytest.mark.parametrize(
    "command", [["migrate"], ["migrate", "--status"], ["seed-plans"], ["drop", "--yes"]]
)
def test_unreachable_database_fails_in_one_line_without_the_password(url, command) -> None:
    line = assert_one_line_failure(run(url, *command))
    assert "s3cret" not in line
    assert "***" in line
    assert "127.0.0.1" in line


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:s3cret%zz@127.0.0.1:1/x",  # not a percent-encoding
        "postgresql://u:s3cret/1@127.0.0.1:1/x",  # libpq would read host u, port s3cret
    ],
)
@pytest.mark.parametrize("command", [["migrate"], ["events"], ["replay", "--failed"]])
def test_a_database_url_libpq_would_misread_fails_in_one_line_without_the_password(
    url, command
) -> None:
    line = assert_one_line_failure(run(url, *command))
    assert "s3cret" not in line
    assert "percent-encoded" in line


POOLER = "postgresql://postgres:pw@127.0.0.1:6543/postgres"  # Supabase's transaction pooler
DIRECT = "postgresql://postgres:pw@127.0.0.1:5432/postgres"
# What a project's own variables would add to the tests' environment: none of them.
UNSET = {"DATABASE_URL": None, "MIGRATE_DATABASE_URL": None, "DB_PREPARED_STATEMENTS": None}


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--database-url", POOLER], {}, "--database-url"),
        ([], {"DATABASE_URL": POOLER}, "DATABASE_URL"),
        ([], {"DATABASE_URL": DIRECT, "DB_PREPARED_STATEMENTS": "off"}, "DATABASE_URL"),
        # The setting describes DATABASE_URL, however migrate is given it.
        (
            ["--database-url", DIRECT],
            {"DATABASE_URL": DIRECT, "DB_PREPARED_STATEMENTS": "off"},
            "--database-url",
        ),
        ([], {"DATABASE_URL": DIRECT, "MIGRATE_DATABASE_URL": POOLER}, "MIGRATE_DATABASE_URL"),
        # Port 6543 is refused whatever DB_PREPARED_STATEMENTS says of the web's URL: it let
        # MIGRATE_DATABASE_URL on the pooler through, and named DATABASE_URL.
        (
            [],
            {"MIGRATE_DATABASE_URL": POOLER, "DB_PREPARED_STATEMENTS": "on"},
            "MIGRATE_DATABASE_URL",
        ),
        (["--database-url", POOLER], {"DB_PREPARED_STATEMENTS": "on"}, "--database-url"),
    ],
)
def test_migrate_refuses_a_transaction_pooler_before_connecting(args, env, named) -> None:
    result = CliRunner().invoke(cli, [*args, "migrate"], env={**UNSET, **env})
    line = assert_one_line_failure(result)
    assert f"migrate needs a session connection, and {named} looks like a transaction" in line
    assert "port 5432" in line
    assert ("in MIGRATE_DATABASE_URL if" in line) == (named == "DATABASE_URL")
    assert "pw" not in result.output


def test_migrate_url_beside_a_pgbouncer_database_url_migrates(db_url) -> None:
    """The documented PgBouncer / Supabase set-up: the web's DATABASE_URL on the pooler
    with DB_PREPARED_STATEMENTS=off, the direct URL in MIGRATE_DATABASE_URL. The setting
    says nothing of the direct URL; migrate refused it (a dead end for the release line)."""
    pgbouncer = "postgresql://postgres:pw@127.0.0.1:6432/postgres"
    env = {
        "DATABASE_URL": pgbouncer,
        "DB_PREPARED_STATEMENTS": "off",
        "MIGRATE_DATABASE_URL": db_url,
    }
    result = CliRunner().invoke(cli, ["migrate"], env=env)
    assert result.exit_code == 0, result.output
    assert "nothing to apply: the schema is up to date" in result.output


def test_migrate_url_takes_over_from_database_url_but_not_from_the_option(db_url) -> None:
    pooler = "postgresql://postgres:pw@127.0.0.1:6543/postgres"
    env = {"DATABASE_URL": pooler, "MIGRATE_DATABASE_URL": db_url}
    result = CliRunner().invoke(cli, ["migrate"], env=env)
    assert result.exit_code == 0, result.output
    assert "nothing to apply: the schema is up to date" in result.output
    explicit = CliRunner().invoke(cli, ["--database-url", pooler, "migrate"], env=env)
    assert explicit.exit_code == 1
    assert "transaction pooler" in explicit.output
