"""Privileges, row-level security and the catalog-level rules of the schema.

Queries run as Supabase's API roles through `as_role` (conftest's `acting_as`), which
does what PostgREST does per request: `set local role` and the JWT claims document.
"""

import re
import uuid

import psycopg
import pytest
from psycopg.errors import InsufficientPrivilege

from webhook.database import migrations

API_ROLES = ("anon", "authenticated")


@pytest.fixture
def two_users(conn, make_user, plans) -> tuple[uuid.UUID, uuid.UUID]:
    """Users A (Basic) and B (Pro), each with one consumption logged."""
    a = make_user(email="a@example.test")
    b = make_user(email="b@example.test")
    conn.execute("update public.customer set plan_id = %s where uuid = %s", (plans["Basic"], a))
    conn.execute("update public.customer set plan_id = %s where uuid = %s", (plans["Pro"], b))
    conn.execute("select public.consume_resources(%s, 'api_calls', 1)", (a,))
    conn.execute("select public.consume_resources(%s, 'api_calls', 2)", (b,))
    return a, b


def column(conn: psycopg.Connection, sql: str, params: tuple = ()) -> list:
    return [row[0] for row in conn.execute(sql, params)]


# ---------------------------------------------------------------------------------------
# Functions
# ---------------------------------------------------------------------------------------

FUNCTIONS_IN_OUR_SCHEMAS = """
    select p.oid::regprocedure::text, p.prosecdef, p.proconfig, p.prorettype = 'trigger'::regtype
    from pg_proc p
    where p.pronamespace in ('public'::regnamespace, 'webhook_private'::regnamespace,
                             'webhook_definer'::regnamespace)
"""


def test_security_definer_functions_have_empty_search_path(catalog_db) -> None:
    # Both designs used `set search_path = public`: a definer function resolving names
    # through a schema others can create objects in.
    definer = {
        name: config
        for name, secdef, config, _ in catalog_db.execute(FUNCTIONS_IN_OUR_SCHEMAS)
        if secdef
    }
    assert set(definer) >= {
        "webhook_private.handle_new_user()",
        "webhook_private.handle_user_update()",
        "webhook_private.log_customer_changes()",
        "webhook_definer.consume_resources(uuid,text,integer)",
        "webhook_private.request_application_link()",
    }
    for name, config in definer.items():
        assert config is not None and 'search_path=""' in config, name


def test_every_function_pins_its_search_path(catalog_db) -> None:
    for name, _, config, _ in catalog_db.execute(FUNCTIONS_IN_OUR_SCHEMAS):
        assert config is not None and any(c.startswith("search_path=") for c in config), name


def test_no_function_is_executable_by_the_api_roles_except_consume_resources(catalog_db) -> None:
    rows = catalog_db.execute(
        """
        select p.oid::regprocedure::text,
               has_function_privilege('anon', p.oid, 'execute'),
               has_function_privilege('authenticated', p.oid, 'execute'),
               has_function_privilege('service_role', p.oid, 'execute'),
               exists (select from aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                       where a.grantee = 0)
        from pg_proc p
        where p.pronamespace in ('public'::regnamespace, 'webhook_private'::regnamespace,
                                 'webhook_definer'::regnamespace)
        """
    ).fetchall()
    assert len(rows) >= 6
    by_name = {name: (anon, auth, service, public) for name, anon, auth, service, public in rows}
    assert by_name.pop("consume_resources(uuid,text,integer)") == (False, True, True, False)
    assert by_name.pop("webhook_definer.consume_resources(uuid,text,integer)") == (
        False,
        True,
        True,
        False,
    )
    for name, (anon, auth, _service, public) in by_name.items():
        assert (anon, auth, public) == (False, False, False), name


# Supabase's linter, lints 0028 and 0029: a SECURITY DEFINER function that anon or
# authenticated may execute, in a schema PostgREST exposes (pgrst.db_schemas).
SPLINTER_DEFINER_EXECUTABLE = """
select n.nspname || '.' || p.proname
  from pg_proc p join pg_namespace n on n.oid = p.pronamespace
 where p.prosecdef
   and pg_catalog.has_function_privilege(%s, p.oid, 'EXECUTE')
   and n.nspname = any(array(select trim(unnest(string_to_array(
         current_setting('pgrst.db_schemas', 't'), ',')))))
"""


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_supabases_linter_finds_no_executable_definer_function(conn, role) -> None:
    with conn.transaction(force_rollback=True):
        # Supabase's default exposed schemas.
        conn.execute("select set_config('pgrst.db_schemas', 'public, graphql_public', true)")
        assert conn.execute(SPLINTER_DEFINER_EXECUTABLE, (role,)).fetchall() == []
        # The lint would see the definer function if its schema were exposed: it is the one
        # schema not to expose.
        conn.execute("select set_config('pgrst.db_schemas', 'public, webhook_definer', true)")
        found = conn.execute(SPLINTER_DEFINER_EXECUTABLE, (role,)).fetchall()
        assert found == (
            [("webhook_definer.consume_resources",)] if role == "authenticated" else []
        )


def test_public_consume_resources_is_an_invoker_wrapper(catalog_db) -> None:
    row = catalog_db.execute(
        "select p.prosecdef, l.lanname from pg_proc p join pg_language l on l.oid = p.prolang"
        " where p.oid = 'public.consume_resources(uuid,text,integer)'::regprocedure"
    ).fetchone()
    assert row == (False, "sql")


def test_the_definer_schema_holds_nothing_else(catalog_db) -> None:
    objects = catalog_db.execute(
        "select count(*) from pg_class where relnamespace = 'webhook_definer'::regnamespace"
    ).fetchone()[0]
    functions = catalog_db.execute(
        "select p.oid::regprocedure::text from pg_proc p"
        " where p.pronamespace = 'webhook_definer'::regnamespace"
    ).fetchall()
    assert objects == 0
    assert functions == [("webhook_definer.consume_resources(uuid,text,integer)",)]


def test_authenticated_cannot_call_trigger_functions_directly(as_role, conn, make_user) -> None:
    user_id = make_user()
    with as_role("authenticated", user_id), pytest.raises(InsufficientPrivilege):
        conn.execute("select webhook_private.handle_new_user()")


def test_no_definer_function_in_the_schema_the_api_exposes(catalog_db) -> None:
    # Public holds what the API is meant to reach (an extension may add functions of its
    # own there). Trigger functions, definer or not, live in webhook_private (014).
    definer_or_trigger = catalog_db.execute(
        "select p.oid::regprocedure::text from pg_proc p"
        " where p.pronamespace = 'public'::regnamespace"
        " and (p.prosecdef or p.prorettype = 'trigger'::regtype)"
    ).fetchall()
    assert definer_or_trigger == []


def test_consuming_own_resources_writes_audit_row_through_rls(
    as_role, conn, make_user, plans
) -> None:
    # Design 2's audit function ran as the caller: the INSERT into audit_logs hit RLS (no
    # insert policy for authenticated) and the whole consumption failed.
    user_id = make_user()
    conn.execute(
        "update public.customer set plan_id = %s where uuid = %s", (plans["Basic"], user_id)
    )
    with as_role("authenticated", user_id):
        result = conn.execute(
            "select public.consume_resources(%s, 'api_calls', 3)", (user_id,)
        ).fetchone()[0]
        assert result["remaining"] == 997
        seen = conn.execute(
            "select action, new_value -> 'remaining_resources' ->> 'api_calls'"
            " from public.audit_logs order by id"
        ).fetchall()
        assert seen == [("plan_change", "1000"), ("resource_update", "997")]


def test_audit_trigger_writes_for_a_caller_subject_to_rls(as_role, conn, make_user, plans) -> None:
    # A project may let signed-in users update their own customer row (their metadata, say).
    # The audit row their update causes must still be written: audit_logs has no insert
    # policy for them. Design 2's audit function ran as the caller and failed here with
    # "new row violates row-level security policy".
    user_id = make_user()
    conn.execute(
        "update public.customer set plan_id = %s where uuid = %s", (plans["Basic"], user_id)
    )
    conn.execute("grant update (metadata, remaining_resources) on public.customer to authenticated")
    conn.execute(
        "create policy customer_updates_own_row on public.customer for update to authenticated"
        " using (uuid = (select auth.uid())) with check (uuid = (select auth.uid()))"
    )
    with as_role("authenticated", user_id):
        conn.execute(
            'update public.customer set remaining_resources = \'{"api_calls": 1, "storage_gb": 1}\''
            " where uuid = %s",
            (user_id,),
        )
        actions = column(conn, "select action from public.audit_logs order by id")
        assert actions == ["plan_change", "resource_update"]


# ---------------------------------------------------------------------------------------
# Row-level security: catalog
# ---------------------------------------------------------------------------------------


def test_every_public_table_has_rls_and_a_policy(catalog_db) -> None:
    rows = catalog_db.execute(
        """
        select c.relname, c.relrowsecurity,
               (select count(*) from pg_policies p
                where p.schemaname = 'public' and p.tablename = c.relname)
        from pg_class c
        where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'p')
        """
    ).fetchall()
    assert {name for name, _, _ in rows} >= {"plans", "customer", "audit_logs"}
    for name, rls, policies in rows:
        assert rls, f"{name} has row-level security off"
        assert policies >= 1, f"{name} has no policy"


def test_policies_name_their_roles_and_wrap_auth_uid_in_a_select(catalog_db) -> None:
    rows = catalog_db.execute(
        "select tablename, policyname, roles::text[], coalesce(qual, '') || ' '"
        " || coalesce(with_check, '') from pg_policies where schemaname = 'public'"
    ).fetchall()
    wrapped = re.compile(r"\(\s*select\s+auth\.uid\(\)(\s+as\s+uid)?\s*\)", re.IGNORECASE)
    uses_uid = 0
    for table, name, roles, text in rows:
        assert "public" not in roles, f"{table}.{name} applies to every role"
        if "auth.uid()" in text:
            uses_uid += 1
            # Evaluated once per statement instead of once per row.
            assert wrapped.search(text), f"{table}.{name}: {text}"
            assert "auth.uid()" not in wrapped.sub("", text), f"{table}.{name}: {text}"
    assert uses_uid >= 2  # customer and audit_logs


def test_views_are_security_invoker(catalog_db) -> None:
    # Design 2's usage_analytics ran as its owner and showed every customer to anyone.
    rows = catalog_db.execute(
        "select relname, coalesce(reloptions, '{}') from pg_class"
        " where relnamespace = 'public'::regnamespace and relkind = 'v'"
    ).fetchall()
    views = dict(rows)
    assert set(views) >= {"usage_analytics", "customer_plan_history"}
    for name, options in views.items():
        assert "security_invoker=true" in options, name


def test_every_foreign_key_has_an_index_leading_with_its_columns(catalog_db) -> None:
    rows = catalog_db.execute(
        """
        select c.conrelid::regclass::text, c.conname,
               exists (
                 select from pg_index i
                 where i.indrelid = c.conrelid
                   and (string_to_array(i.indkey::text, ' ')::int2[])[1:cardinality(c.conkey)]
                       @> c.conkey
                   and (string_to_array(i.indkey::text, ' ')::int2[])[1:cardinality(c.conkey)]
                       <@ c.conkey
               )
        from pg_constraint c
        where c.contype = 'f'
          and c.connamespace in ('public'::regnamespace, 'webhook_private'::regnamespace)
        """
    ).fetchall()
    names = {name for _, name, _ in rows}
    assert {"customer_uuid_fkey", "customer_plan_id_fkey", "audit_logs_customer_uuid_fkey"} <= names
    assert len(rows) >= 6
    missing = [f"{table}.{name}" for table, name, indexed in rows if not indexed]
    assert missing == []


# ---------------------------------------------------------------------------------------
# Row-level security: behaviour
# ---------------------------------------------------------------------------------------


def test_authenticated_sees_only_own_customer_row(as_role, conn, two_users) -> None:
    a, b = two_users
    with as_role("authenticated", a):
        assert column(conn, "select uuid from public.customer") == [a]
        assert conn.execute("select * from public.customer where uuid = %s", (b,)).fetchall() == []
    with as_role("authenticated", b):
        assert column(conn, "select uuid from public.customer") == [b]


def test_authenticated_without_claims_sees_nothing(as_role, conn, two_users) -> None:
    with as_role("authenticated"):
        assert conn.execute("select count(*) from public.customer").fetchone() == (0,)
        assert conn.execute("select count(*) from public.audit_logs").fetchone() == (0,)


def test_anon_cannot_read_customers_or_audit_logs(as_role, conn, two_users) -> None:
    for table in ("public.customer", "public.audit_logs"):
        with as_role("anon"), pytest.raises(InsufficientPrivilege):
            conn.execute(f"select * from {table}")


WRITES = {
    "plans": [
        "insert into public.plans (name, price) values ('Hack', 0)",
        "update public.plans set price = 0",
        "delete from public.plans",
        "truncate public.plans cascade",
    ],
    "customer": [
        "insert into public.customer (uuid) values ({me})",
        "update public.customer set plan_id = null where uuid = {me}",
        "update public.customer set remaining_resources = '{{\"api_calls\": 1000000}}'"
        " where uuid = {me}",
        "delete from public.customer where uuid = {me}",
        "truncate public.customer cascade",
    ],
    "audit_logs": [
        "insert into public.audit_logs (customer_uuid, action) values ({me}, 'resource_reset')",
        "update public.audit_logs set source = 'forged'",
        "delete from public.audit_logs",
        "truncate public.audit_logs",
    ],
}


def test_api_roles_cannot_write(as_role, conn, two_users) -> None:
    a, _ = two_users
    fingerprint = "select count(*), md5(string_agg(t::text, ',' order by t::text)) from public.{} t"
    before = {table: conn.execute(fingerprint.format(table)).fetchone() for table in WRITES}
    for role in API_ROLES:
        for statements in WRITES.values():
            for template in statements:
                sql = template.format(me=f"'{a}'")
                with as_role(role, a), pytest.raises(InsufficientPrivilege) as caught:
                    conn.execute(sql)
                assert caught.value.sqlstate == "42501", (role, sql)
    after = {table: conn.execute(fingerprint.format(table)).fetchone() for table in WRITES}
    assert after == before


def test_everyone_reads_plans(as_role, conn, plans) -> None:
    for role in API_ROLES:
        with as_role(role):
            names = column(conn, "select name from public.plans order by price")
        assert names == ["Basic", "Pro", "Enterprise"], role


def test_usage_analytics_shows_only_the_callers_row(as_role, conn, two_users, plans) -> None:
    a, _ = two_users
    with as_role("authenticated", a):
        rows = conn.execute(
            "select uuid, plan_name, remaining_resources ->> 'api_calls', total_resources"
            " from public.usage_analytics"
        ).fetchall()
    assert rows == [(a, "Basic", "999", {"api_calls": 1000, "storage_gb": 10})]
    # As the owner (no RLS) the view shows both; the restriction above is RLS, not data.
    assert len(column(conn, "select uuid from public.usage_analytics")) == 2


def test_anon_cannot_read_the_views(as_role, conn, two_users) -> None:
    for view in ("public.usage_analytics", "public.customer_plan_history"):
        with as_role("anon"), pytest.raises(InsufficientPrivilege):
            conn.execute(f"select * from {view}")


def test_audit_logs_and_history_show_only_the_callers_rows(as_role, conn, two_users, plans) -> None:
    _, b = two_users
    with as_role("authenticated", b):
        owners = set(column(conn, "select customer_uuid from public.audit_logs"))
        actions = column(conn, "select action from public.audit_logs order by id")
        history = conn.execute(
            "select customer_uuid, plan_name, ended_at from public.customer_plan_history"
        ).fetchall()
    assert owners == {b}
    assert actions == ["plan_change", "resource_update"]
    assert history == [(b, "Pro", None)]


def test_service_role_reads_and_writes_everything(as_role, conn, two_users, plans) -> None:
    a, b = two_users
    with as_role("service_role"):
        assert set(column(conn, "select uuid from public.customer")) == {a, b}
        assert set(column(conn, "select customer_uuid from public.audit_logs")) == {a, b}
        assert len(column(conn, "select uuid from public.usage_analytics")) == 2
        conn.execute("insert into public.plans (name, price) values ('Team', 29)")
        conn.execute(
            "update public.customer set plan_id = %s where uuid = %s", (plans["Enterprise"], a)
        )
        remaining = conn.execute(
            "select remaining_resources ->> 'api_calls' from public.customer where uuid = %s",
            (a,),
        ).fetchone()
        assert remaining == ("20000",)


# ---------------------------------------------------------------------------------------
# webhook_private
# ---------------------------------------------------------------------------------------


def test_webhook_private_is_closed_to_the_api_roles(catalog_db) -> None:
    for role in API_ROLES:
        assert catalog_db.execute(
            "select has_schema_privilege(%s, 'webhook_private', 'usage')", (role,)
        ).fetchone() == (False,)
    rows = catalog_db.execute(
        """
        select c.oid::regclass::text, r.role,
               case when c.relkind = 'S'
                    then has_sequence_privilege(r.role, c.oid, 'usage, select, update')
                    else has_table_privilege(r.role, c.oid,
                      'select, insert, update, delete, truncate, references, trigger')
               end
        from pg_class c
        cross join (values ('anon'), ('authenticated')) r(role)
        where c.relnamespace = 'webhook_private'::regnamespace and c.relkind in ('r', 'p', 'v', 'S')
        """
    ).fetchall()
    tables = {name for name, _, _ in rows}
    assert {"webhook_private.events", "webhook_private.schema_migrations"} <= tables
    assert [(name, role) for name, role, granted in rows if granted] == []


def test_api_roles_cannot_query_webhook_private(as_role, conn) -> None:
    conn.execute(
        "insert into webhook_private.events (id, type, stripe_created) values ('evt_1', 't', now())"
    )
    for role in API_ROLES:
        with as_role(role, uuid.uuid4()), pytest.raises(InsufficientPrivilege):
            conn.execute("select * from webhook_private.events")


# ---------------------------------------------------------------------------------------
# On Supabase: default privileges grant everything in public to the API roles
# ---------------------------------------------------------------------------------------


def test_grants_are_exact_even_with_supabases_default_privileges(empty_db_url) -> None:
    # Supabase runs `alter default privileges in schema public grant all on tables,
    # functions, sequences to anon, authenticated, service_role`. The schema must take that
    # back, or every new table, view, sequence and function is open to the API.
    with psycopg.connect(empty_db_url, autocommit=True) as db:
        for kind in ("tables", "functions", "sequences"):
            db.execute(
                f"alter default privileges in schema public grant all on {kind}"
                " to anon, authenticated, service_role"
            )
        migrations.migrate(db)

        granted = db.execute(
            """
            select c.relname, r.role, p.privilege
            from pg_class c
            cross join (values ('anon'), ('authenticated')) r(role)
            cross join (values ('select'), ('insert'), ('update'), ('delete'), ('truncate'),
                               ('references'), ('trigger')) p(privilege)
            where c.relnamespace = 'public'::regnamespace and c.relkind in ('r', 'v', 'p')
              and has_table_privilege(r.role, c.oid, p.privilege)
            order by 1, 2, 3
            """
        ).fetchall()
        assert granted == [
            ("audit_logs", "authenticated", "select"),
            ("customer", "authenticated", "select"),
            ("customer_plan_history", "authenticated", "select"),
            ("plans", "anon", "select"),
            ("plans", "authenticated", "select"),
            ("usage_analytics", "authenticated", "select"),
        ]
        sequences = db.execute(
            """
            select c.relname, r.role
            from pg_class c cross join (values ('anon'), ('authenticated')) r(role)
            where c.relnamespace = 'public'::regnamespace and c.relkind = 'S'
              and has_sequence_privilege(r.role, c.oid, 'usage, select, update')
            """
        ).fetchall()
        assert sequences == []
        functions = db.execute(
            """
            select p.proname, r.role
            from pg_proc p cross join (values ('anon'), ('authenticated')) r(role)
            where p.pronamespace = 'public'::regnamespace
              and has_function_privilege(r.role, p.oid, 'execute')
            order by 1, 2
            """
        ).fetchall()
        assert functions == [("consume_resources", "authenticated")]

        # service_role still writes, identity columns included.
        with db.transaction(force_rollback=True):
            db.execute("set local role service_role")
            db.execute("insert into public.plans (name, price) values ('Team', 29)")
