"""webhook/database/migrations.py and webhook/database/sqlfile.py against a real PostgreSQL."""

import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from webhook.core.config import DEFAULT_ENTITLED_STATUSES
from webhook.core.errors import MigrationError
from webhook.database import migrations
from webhook.database.sqlfile import split_statements
from webhook.fixtures import BASIL_API, EventFactory
from webhook.pipeline import inbox
from webhook.rules import application_links
from webhook.stripe.payloads import parse_event

# The migrations the project ships; the tests add theirs from 901 on.
SHIPPED = [m.version for m in migrations.discover()]

# pg_locks covers the whole server; count only this database's advisory locks.
ADVISORY_LOCKS = (
    "select count(*) from pg_locks where locktype = 'advisory'"
    " and database = (select oid from pg_database where datname = current_database())"
)


@pytest.fixture
def schema_copy(tmp_path: Path) -> Path:
    """A copy of schema/ that a test may add files to."""
    target = tmp_path / "schema"
    target.mkdir()
    for path in migrations.SCHEMA_DIR.glob("*.sql"):
        shutil.copy(path, target / path.name)
    return target


def snapshot(conn: psycopg.Connection) -> dict:
    """What a migration could change: objects outside the system schemas and our rows."""
    return {
        "relations": conn.execute(
            "select n.nspname, c.relname, c.relkind from pg_class c"
            " join pg_namespace n on n.oid = c.relnamespace"
            " where n.nspname not in ('pg_catalog', 'information_schema', 'pg_toast')"
            " order by 1, 2"
        ).fetchall(),
        "functions": conn.execute(
            "select p.oid::regprocedure::text from pg_proc p"
            " join pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname not in ('pg_catalog', 'information_schema') order by 1"
        ).fetchall(),
        "migrations": conn.execute(
            "select version, name, checksum, applied_at from webhook_private.schema_migrations"
            " order by version"
        ).fetchall(),
        "plans": conn.execute("select * from public.plans order by id").fetchall(),
    }


def applied_versions(conn: psycopg.Connection) -> list[str]:
    return [
        v
        for (v,) in conn.execute(
            "select version from webhook_private.schema_migrations order by version"
        )
    ]


# ---------------------------------------------------------------------------------------
# Applying and re-applying
# ---------------------------------------------------------------------------------------


def test_rerunning_migrate_applies_nothing(conn) -> None:
    before = snapshot(conn)
    lines: list[str] = []
    assert migrations.migrate(conn, report=lines.append) == []
    assert snapshot(conn) == before
    assert lines == [f"auth: {migrations.describe_auth(conn)}"]
    assert conn.execute(ADVISORY_LOCKS).fetchone() == (0,)


def test_status_lists_applied_and_pending(conn, schema_copy) -> None:
    (schema_copy / "901_extra.sql").write_text(
        "create table public.extra_thing (id int primary key);\n", encoding="utf-8"
    )
    states = migrations.status(conn, schema_copy)
    assert [(s.migration.version, s.pending) for s in states] == [
        *((version, False) for version in SHIPPED),
        ("901", True),
    ]
    assert all(s.checksum_matches for s in states)
    assert all(s.applied_at is not None for s in states[:-1])
    assert [m.path.name for m in migrations.pending(conn, schema_copy)] == ["901_extra.sql"]

    applied = migrations.migrate(conn, schema_copy)
    assert [m.version for m in applied] == ["901"]
    assert conn.execute("select to_regclass('public.extra_thing')::text").fetchone() == (
        "extra_thing",
    )
    assert migrations.pending(conn, schema_copy) == []
    assert migrations.migrate(conn, schema_copy) == []


def test_status_flags_a_file_changed_after_it_was_applied(conn, schema_copy) -> None:
    core = schema_copy / "001_core.sql"
    core.write_text(core.read_text(encoding="utf-8") + "\n-- edited\n", encoding="utf-8")
    states = {s.migration.version: s for s in migrations.status(conn, schema_copy)}
    assert states["001"].checksum_matches is False
    assert states["001"].pending is False
    assert states["002"].checksum_matches is True
    assert migrations.migrate(conn, schema_copy) == []  # applied means applied


def test_migrate_needs_an_autocommit_connection(db_url) -> None:
    with psycopg.connect(db_url) as not_autocommit, pytest.raises(ValueError, match="autocommit"):
        migrations.migrate(not_autocommit)


def test_two_migrations_with_the_same_version_are_refused(schema_copy) -> None:
    (schema_copy / "002_other.sql").write_text("select 1;\n", encoding="utf-8")
    with pytest.raises(MigrationError, match="002"):
        migrations.discover(schema_copy)


def test_a_folder_without_migrations_is_an_error(tmp_path, conn) -> None:
    """An installation that lacks the SQL files reported every database as up to date."""
    (tmp_path / "notes.txt").write_text("hello\n", encoding="utf-8")
    for check in (migrations.discover, lambda d: migrations.pending(conn, d),
                  lambda d: migrations.migrate(conn, d)):  # fmt: skip
        with pytest.raises(MigrationError, match=f"no migrations in {tmp_path}"):
            check(tmp_path)


def test_a_missing_script_is_a_migration_error(tmp_path, conn) -> None:
    with pytest.raises(MigrationError, match=r"seed_plans\.sql is missing"):
        migrations.run_script(conn, tmp_path / "seed_plans.sql")


def test_files_that_are_not_numbered_migrations_are_ignored(schema_copy) -> None:
    (schema_copy / "4_not_a_migration.sql").write_text("select 1;\n", encoding="utf-8")
    (schema_copy / "notes.txt").write_text("hello\n", encoding="utf-8")
    names = [m.path.name for m in migrations.discover(schema_copy)]
    assert names == [m.path.name for m in migrations.discover()]


# ---------------------------------------------------------------------------------------
# A failing migration
# ---------------------------------------------------------------------------------------

BROKEN = """\
-- 901: statements that work, then one that does not.
create table public.broken_good (id int primary key);

insert into public.broken_good values (1);

create function public.broken_fn() returns int language plpgsql as $$
begin
  return 1; -- a semicolon inside the body; and a 'quote'
end
$$;

insert into public.plans (name, price)
values ('Sneaky', -5);

create table public.never_reached (id int);
"""


def test_broken_migration_names_file_and_line_and_changes_nothing(conn, schema_copy) -> None:
    conn.execute("insert into public.plans (name, price) values ('Existing', 1)")
    (schema_copy / "901_broken.sql").write_text(BROKEN, encoding="utf-8")
    bad_line = BROKEN.splitlines().index("insert into public.plans (name, price)") + 1
    before = snapshot(conn)

    with pytest.raises(MigrationError) as caught:
        migrations.migrate(conn, schema_copy)

    message = str(caught.value)
    assert "901_broken.sql" in message
    assert f"line {bad_line}" in message
    assert "plans_price_non_negative" in message
    assert "rolled back" in message
    assert "\n" not in message
    assert snapshot(conn) == before
    assert conn.execute("select to_regclass('public.broken_good')").fetchone() == (None,)
    assert conn.execute("select to_regprocedure('public.broken_fn()')").fetchone() == (None,)
    assert conn.execute(ADVISORY_LOCKS).fetchone() == (0,)
    assert applied_versions(conn) == SHIPPED

    # Once the file is fixed, the next run applies it.
    (schema_copy / "901_broken.sql").write_text(BROKEN.replace("-5", "5"), encoding="utf-8")
    assert [m.version for m in migrations.migrate(conn, schema_copy)] == ["901"]
    assert conn.execute("select public.broken_fn()").fetchone() == (1,)


def test_syntax_error_names_its_line(conn, schema_copy) -> None:
    (schema_copy / "901_typo.sql").write_text(
        "create table public.typo_ok (id int);\n\n\n  selec 1;\n", encoding="utf-8"
    )
    with pytest.raises(MigrationError, match=r"901_typo\.sql, statement at line 4 \(selec 1\)"):
        migrations.migrate(conn, schema_copy)
    assert conn.execute("select to_regclass('public.typo_ok')").fetchone() == (None,)


def test_failure_keeps_the_migrations_before_it(conn, schema_copy) -> None:
    (schema_copy / "901_good.sql").write_text(
        "create table public.good_three (id int);\n", encoding="utf-8"
    )
    (schema_copy / "902_bad.sql").write_text(
        "create table public.bad_four (id int);\nselect 1 / 0;\n", encoding="utf-8"
    )
    lines: list[str] = []
    with pytest.raises(
        MigrationError, match=r"902_bad\.sql, statement at line 2.*division by zero"
    ):
        migrations.migrate(conn, schema_copy, report=lines.append)
    assert lines[-1] == "applied 901_good.sql"
    assert applied_versions(conn) == [*SHIPPED, "901"]
    assert conn.execute("select to_regclass('public.good_three')::text").fetchone() == (
        "good_three",
    )
    assert conn.execute("select to_regclass('public.bad_four')").fetchone() == (None,)


# ---------------------------------------------------------------------------------------
# Fresh databases: concurrency and the auth stub
# ---------------------------------------------------------------------------------------


def test_concurrent_migrations_apply_each_file_once(empty_db_url) -> None:
    runners = 3
    barrier = threading.Barrier(runners)

    def run() -> list[str]:
        with psycopg.connect(empty_db_url, autocommit=True) as own:
            barrier.wait(timeout=30)
            return [m.version for m in migrations.migrate(own)]

    with ThreadPoolExecutor(max_workers=runners) as pool:
        results = [f.result() for f in [pool.submit(run) for _ in range(runners)]]

    assert sorted(results) == [[], [], SHIPPED]
    with psycopg.connect(empty_db_url, autocommit=True) as db:
        assert db.execute(
            "select version, count(*) from webhook_private.schema_migrations group by 1 order by 1"
        ).fetchall() == [(version, 1) for version in SHIPPED]
        assert db.execute(ADVISORY_LOCKS).fetchone() == (0,)
        db.execute("insert into auth.users (email) values ('after@example.test')")
        assert db.execute("select email from public.customer").fetchall() == [
            ("after@example.test",)
        ]


def test_auth_stub_creates_auth_on_plain_postgresql(empty_db_url) -> None:
    with psycopg.connect(empty_db_url, autocommit=True) as db:
        lines: list[str] = []
        migrations.migrate(db, report=lines.append)
        assert lines[0].startswith("auth: plain PostgreSQL")
        comment = db.execute("select obj_description('auth.users'::regclass, 'pg_class')")
        assert "stand-in" in comment.fetchone()[0]
        user_id = db.execute("select gen_random_uuid()").fetchone()[0]
        db.execute(
            "select set_config('request.jwt.claims', %s, false)", (f'{{"sub": "{user_id}"}}',)
        )
        assert db.execute("select auth.uid()").fetchone() == (user_id,)
        db.execute("select set_config('request.jwt.claim.sub', %s, false)", (str(user_id),))
        assert db.execute("select auth.uid()").fetchone() == (user_id,)


SUPABASE_AUTH = """
create schema auth;
create table auth.users (
  instance_id uuid,
  id uuid primary key,
  email varchar(255),
  phone text unique,
  raw_user_meta_data jsonb,
  is_anonymous boolean not null default false
);
comment on table auth.users is 'Auth: Stores user login data within a secure schema.';
create function auth.uid() returns uuid language sql stable as $$
  select nullif(current_setting('request.jwt.claim.sub', true), '')::uuid
$$;
insert into auth.users (id, email, phone, raw_user_meta_data)
values ('00000000-0000-0000-0000-00000000000a', 'early@example.test', null, '{"n": 1}'),
       ('00000000-0000-0000-0000-00000000000b', null, '+15550100', null);
"""


def test_auth_stub_leaves_an_existing_auth_schema_alone(empty_db_url) -> None:
    with psycopg.connect(empty_db_url, autocommit=True) as db:
        db.execute(SUPABASE_AUTH)
        columns_before = db.execute(
            "select attname, atttypid::regtype::text from pg_attribute"
            " where attrelid = 'auth.users'::regclass and attnum > 0 and not attisdropped"
            " order by attnum"
        ).fetchall()
        uid_before = db.execute("select prosrc from pg_proc where oid = 'auth.uid()'::regprocedure")
        uid_before = uid_before.fetchone()

        lines: list[str] = []
        assert [m.version for m in migrations.migrate(db, report=lines.append)] == SHIPPED

        assert lines[0].startswith("auth: Supabase")
        assert db.execute(
            "select obj_description('auth.users'::regclass, 'pg_class')"
        ).fetchone() == ("Auth: Stores user login data within a secure schema.",)
        assert (
            db.execute(
                "select attname, atttypid::regtype::text from pg_attribute"
                " where attrelid = 'auth.users'::regclass and attnum > 0 and not attisdropped"
                " order by attnum"
            ).fetchall()
            == columns_before
        )
        assert (
            db.execute(
                "select prosrc from pg_proc where oid = 'auth.uid()'::regprocedure"
            ).fetchone()
            == uid_before
        )
        # Users who were there before the schema get their customer rows.
        assert db.execute(
            "select uuid::text, email, metadata from public.customer order by uuid"
        ).fetchall() == [
            ("00000000-0000-0000-0000-00000000000a", "early@example.test", {"n": 1}),
            ("00000000-0000-0000-0000-00000000000b", None, {}),
        ]
        # And the triggers work on the provider's table.
        db.execute(
            "insert into auth.users (id, phone) values ('00000000-0000-0000-0000-00000000000c',"
            " '+15550101')"
        )
        assert db.execute("select count(*) from public.customer").fetchone() == (3,)


# ---------------------------------------------------------------------------------------
# Splitting scripts into statements
# ---------------------------------------------------------------------------------------


def test_split_statements_skips_quoted_semicolons_and_counts_lines() -> None:
    script = (
        "-- header; with a semicolon\n"  # 1
        "select 'a;b', \"odd;name\" from t;\n"  # 2
        "/* block; comment */\n"  # 3
        "create function f() returns int as $body$\n"  # 4
        "  select 1; -- inside\n"  # 5
        "$body$ language sql;\n"  # 6
        "\n"  # 7
        "select 'it''s; fine'; select $$x;y$$;\n"  # 8
        "-- trailing comment only\n"  # 9
    )
    statements = split_statements(script)
    # The line of each statement's first token, whatever comments come before it.
    assert [s.line for s in statements] == [2, 4, 8, 8]
    assert statements[0].text.endswith("select 'a;b', \"odd;name\" from t")
    assert statements[0].summary == "select 'a;b', \"odd;name\" from t"
    assert statements[1].text.startswith("/* block; comment */")
    assert statements[1].text.endswith("$body$ language sql")
    assert statements[2].text == "select 'it''s; fine'"
    assert statements[3].text == "select $$x;y$$"
    assert statements[1].summary == "create function f() returns int as $body$"


def test_split_statements_of_the_real_schema_runs_every_statement(conn) -> None:
    # Each piece of the split is a complete statement: re-running the idempotent files
    # statement by statement works.
    for name in ("bootstrap.sql", "auth_stub.sql"):
        text = (migrations.SCHEMA_DIR / name).read_text(encoding="utf-8")
        for statement in split_statements(text):
            conn.execute(statement.text)


def test_the_inbox_keeps_payloads_out_of_its_rows(conn) -> None:
    """003: fifty 3 kB payloads leave the heap at one or two pages; inline they take six."""
    payload = json.dumps({"object": "event", "data": {"text": "x" * 1500, "n": list(range(300))}})
    for n in range(50):
        conn.execute(
            "insert into webhook_private.events (id, type, stripe_created, payload)"
            " values (%s, 'charge.succeeded', now(), %s)",
            (f"evt_{n}", payload),
        )
    pages = conn.execute(
        "select pg_relation_size('webhook_private.events') / current_setting('block_size')::int"
    ).fetchone()[0]
    assert pages <= 2
    stored = conn.execute(
        "select payload from webhook_private.events where id = 'evt_7'"
    ).fetchone()
    assert stored[0] == json.loads(payload)


def test_links_made_before_005_survive_it_dated_by_their_event(empty_db_url, schema_copy) -> None:
    """A database migrated up to 003 keeps its links; 005 dates them from the linking event."""
    later_than(schema_copy, "003")
    user = uuid.uuid4()
    with psycopg.connect(empty_db_url, autocommit=True) as db:
        migrations.migrate(db, schema_copy)
        db.execute("insert into auth.users (id, email) values (%s, 'old@example.test')", (user,))
        db.execute(
            "insert into webhook_private.events (id, type, stripe_created, payload)"
            " values ('evt_link', 'checkout.session.completed', '2026-01-02 03:04:05+00', '{}')"
        )
        db.execute(
            "insert into webhook_private.customer_links (stripe_customer_id, customer_uuid,"
            " linked_by_event) values ('cus_linked', %s, 'evt_link'), ('cus_other', %s, null)",
            (user, user),
        )
        assert [m.version for m in migrations.migrate(db)][:2] == ["004", "005"]
        rows = db.execute(
            "select stripe_customer_id, customer_uuid, event_created = '2026-01-02 03:04:05+00',"
            " event_created = linked_at, deleted_at from webhook_private.customer_links order by 1"
        ).fetchall()
        assert rows == [
            ("cus_linked", user, True, False, None),
            ("cus_other", user, False, True, None),
        ]


def test_005_changes_nothing_on_a_table_that_already_has_its_shape(conn) -> None:
    before = conn.execute(
        "select column_name, is_nullable, column_default from information_schema.columns"
        " where table_schema = 'webhook_private' and table_name = 'customer_links' order by 1"
    ).fetchall()
    migrations.run_script(conn, migrations.SCHEMA_DIR / "005_order_safe_customer_links.sql")
    after = conn.execute(
        "select column_name, is_nullable, column_default from information_schema.columns"
        " where table_schema = 'webhook_private' and table_name = 'customer_links' order by 1"
    ).fetchall()
    assert after == before
    assert ("deleted_at", "YES", None) in after


def later_than(schema_copy: Path, version: str) -> None:
    """Remove the migrations after `version` from a schema copy."""
    for migration in migrations.discover(schema_copy):
        if migration.version > version:
            migration.path.unlink()


def previous_version(version: str) -> str:
    """The version numbered just before `version` ("018" -> "017")."""
    return f"{int(version) - 1:03d}"


@contextmanager
def migrated_up_to_before(
    url: str, schema_copy: Path, version: str
) -> Iterator[psycopg.Connection]:
    """An autocommit connection to a database migrated up to the migration before
    `version`, for a test to put old rows in before `migrate_from` applies the rest."""
    later_than(schema_copy, previous_version(version))
    with psycopg.connect(url, autocommit=True) as db:
        migrations.migrate(db, schema_copy)
        yield db


def migrate_from(db: psycopg.Connection, version: str) -> None:
    """Apply the shipped migrations still pending, `version` first."""
    applied = [m.version for m in migrations.migrate(db)]
    assert applied[:1] == [version]


def test_006_gives_plans_that_named_a_product_in_stripe_plan_id_that_product(
    empty_db_url, schema_copy
) -> None:
    """Plans set up as README used to say (a product id in stripe_plan_id) keep working."""
    later_than(schema_copy, "005")
    with psycopg.connect(empty_db_url, autocommit=True) as db:
        migrations.migrate(db, schema_copy)
        db.execute(
            "insert into public.plans (name, price, stripe_price_id, stripe_plan_id)"
            " values ('Pro', 19.99, 'price_pro', 'prod_pro'), ('Gold', 30, null, 'gold_monthly')"
        )
        migrations.migrate(db)
        rows = db.execute(
            "select name, stripe_plan_id, stripe_product_id from public.plans order by name"
        ).fetchall()
    assert rows == [("Gold", "gold_monthly", None), ("Pro", "prod_pro", "prod_pro")]


def test_007_requests_the_links_the_application_wrote_before_it(empty_db_url, schema_copy) -> None:
    later_than(schema_copy, "006")
    user = uuid.uuid4()
    with psycopg.connect(empty_db_url, autocommit=True) as db:
        migrations.migrate(db, schema_copy)
        db.execute("insert into auth.users (id, email) values (%s, 'a@example.test')", (user,))
        db.execute(
            "update public.customer set stripe_customer_id = 'cus_early' where uuid = %s", (user,)
        )
        migrations.migrate(db)
        pending = db.execute(
            "select customer_uuid, stripe_customer_id, status from webhook_private.link_requests"
        ).fetchall()
        assert pending == [(user, "cus_early", "pending")]
        assert application_links.apply_pending(db, DEFAULT_ENTITLED_STATUSES) == 1
        linked = db.execute(
            "select stripe_customer_id, customer_uuid from webhook_private.customer_links"
        ).fetchall()
        assert linked == [("cus_early", user)]


def test_014_moves_the_trigger_functions_and_the_triggers_keep_firing(
    empty_db_url, schema_copy
) -> None:
    later_than(schema_copy, "013")
    before, after = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(empty_db_url, autocommit=True) as db:
        migrations.migrate(db, schema_copy)
        db.execute("insert into auth.users (id, email) values (%s, 'a@example.test')", (before,))
        migrations.migrate(db)
        homes = db.execute(
            "select p.proname, p.pronamespace::regnamespace::text from pg_proc p"
            " where p.proname in ('handle_new_user', 'handle_user_update',"
            " 'log_customer_changes', 'handle_customer_plan_update') order by 1"
        ).fetchall()
        assert {schema for _, schema in homes} == {"webhook_private"} and len(homes) == 4
        # Each trigger still fires: a sign-up, a changed e-mail, a plan change and its audit row.
        db.execute("insert into auth.users (id, email) values (%s, 'b@example.test')", (after,))
        db.execute("update auth.users set email = 'a2@example.test' where id = %s", (before,))
        db.execute(
            "insert into public.plans (name, price, resources) values ('Pro', 19, '{\"n\": 5}')"
        )
        db.execute(
            "update public.customer set plan_id = (select id from public.plans) where uuid = %s",
            (before,),
        )
        customers = db.execute(
            "select uuid, email, remaining_resources from public.customer order by email"
        ).fetchall()
        assert customers == [(before, "a2@example.test", {"n": 5}), (after, "b@example.test", None)]
        audit = db.execute("select customer_uuid, action from public.audit_logs").fetchall()
        assert audit == [(before, "plan_change")]


def test_018_ranks_the_links_earlier_syncs_made_as_restated(empty_db_url, schema_copy) -> None:
    """Links sync made from metadata before 018 are restatements; the others stay new facts."""
    user = uuid.uuid4()
    with migrated_up_to_before(empty_db_url, schema_copy, "018") as db:
        db.execute("insert into auth.users (id, email) values (%s, 'a@example.test')", (user,))
        db.execute(
            "insert into webhook_private.customer_links (stripe_customer_id, customer_uuid,"
            " linked_by_event, event_created) values ('cus_synced', %(u)s, 'sync:7', now()),"
            " ('cus_checkout', %(u)s, 'evt_1', now()), ('cus_app', %(u)s, 'application', now())",
            {"u": user},
        )
        migrate_from(db, "018")
        rows = db.execute(
            "select stripe_customer_id, restated, released_customer"
            " from webhook_private.customer_links order by 1"
        ).fetchall()
    assert rows == [("cus_app", False, None), ("cus_checkout", False, None),
                    ("cus_synced", True, None)]  # fmt: skip


@pytest.mark.parametrize(
    ("version", "holder"),
    [
        # A manual ANALYZE (as VACUUM or an index build) holds what 019's setting needs.
        ("019", "analyze public.customer"),
        # A link-request poller's open transaction holds what 020's default change needs.
        ("020", "select 1 from webhook_private.link_requests"),
        # A drain's open transaction holds what 021's new columns need.
        ("021", "select 1 from webhook_private.customer_links"),
        # A drain's open batch holds what 022's rewrite of the mirror needs.
        ("022", "update webhook_private.subscriptions set status = status"),
    ],
)
def test_a_migration_waits_for_its_lock_at_most_5_s_and_changes_nothing(
    empty_db_url, schema_copy, version, holder
) -> None:
    with migrated_up_to_before(empty_db_url, schema_copy, version) as db:
        unchanged = snapshot(db)
        with psycopg.connect(empty_db_url) as other:
            other.execute(holder)  # its transaction stays open
            started = time.monotonic()
            with pytest.raises(MigrationError, match=rf"{version}_.*lock timeout"):
                migrations.migrate(db)
            waited = time.monotonic() - started
        assert 4 < waited < 15
        assert snapshot(db) == unchanged
        assert applied_versions(db)[-1] == previous_version(version)


def test_021_remembers_the_releases_the_links_show(empty_db_url, schema_copy) -> None:
    user = uuid.uuid4()
    with migrated_up_to_before(empty_db_url, schema_copy, "021") as db:
        db.execute("insert into auth.users (id, email) values (%s, 'r@example.test')", (user,))
        db.execute(
            "insert into webhook_private.customer_links (stripe_customer_id, customer_uuid,"
            " event_created, linked_by_event, released_customer) values"
            " ('cus_released', null, to_timestamp(1750000000), 'application', %(u)s),"
            " ('cus_linked', %(u)s, to_timestamp(1750000000), 'evt_1', null),"
            " ('cus_before_018', null, to_timestamp(1750000000), 'application', null)",
            {"u": user},
        )
        migrate_from(db, "021")
        rows = db.execute(
            "select stripe_customer_id, customer_uuid, extract(epoch from released_at)::int"
            " from webhook_private.customer_link_releases"
        ).fetchall()
    assert rows == [("cus_released", user, 1750000000)]


def test_022_gives_stored_order_keys_the_start_of_their_period(empty_db_url, schema_copy) -> None:
    """Each key gains its state's period start from the event that wrote it (either shape);
    sync's keys gain -1, a state whose event was purged 0."""
    old, basil = EventFactory("2024-06-20"), EventFactory(BASIL_API)
    with migrated_up_to_before(empty_db_url, schema_copy, "022") as db:
        rows = []
        for name, factory, start in (("old", old, 1_760_000_000), ("basil", basil, 1_770_000_000)):
            delivery = factory.subscription(
                "customer.subscription.updated", sub_id=f"sub_{name}", customer=f"cus_{name}",
                status="active", period_start=start, period_end=start + 86_400,
            )  # fmt: skip
            inbox.receive(db, parse_event(json.loads(delivery.body), delivery.body.decode()))
            rows.append((f"sub_{name}", [delivery.event["created"], 0, start + 86_400, 1, 2],
                         delivery.id))  # fmt: skip
        rows.append(("sub_synced", [1_780_000_000, 0, -1, -1, -1], "sync:3"))
        rows.append(("sub_purged", [1_700_000_000, 0, 1_702_000_000, 1, 2], "evt_purged"))
        db.cursor().executemany(
            "insert into webhook_private.subscriptions (id, stripe_customer_id, status,"
            " order_key, event_id) values (%s, 'cus_x', 'active', %s, %s)",
            rows,
        )
        migrate_from(db, "022")
        keys = dict(db.execute("select id, order_key from webhook_private.subscriptions"))
    assert keys == {
        "sub_old": [rows[0][1][0], 0, 1_760_000_000, 1_760_086_400, 1, 2],
        "sub_basil": [rows[1][1][0], 0, 1_770_000_000, 1_770_086_400, 1, 2],
        "sub_synced": [1_780_000_000, 0, -1, -1, -1, -1],
        "sub_purged": [1_700_000_000, 0, 0, 1_702_000_000, 1, 2],
    }
