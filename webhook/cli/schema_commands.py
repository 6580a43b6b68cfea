"""migrate, drop and seed-plans: putting the schema in place and taking it away."""

import os

import click
from click.core import ParameterSource

from webhook.cli import cli
from webhook.cli.context import database, require_schema
from webhook.core.config import on_transaction_pooler_port, prepared_statements_setting
from webhook.database import migrations


@cli.command()
@click.option(
    "--status",
    "show_status",
    is_flag=True,
    help="List applied and pending migrations; exit 1 while any is pending.",
)
@click.pass_context
def migrate(ctx: click.Context, show_status: bool) -> None:
    """Apply pending migrations from schema/ (a no-op when all are applied).

    MIGRATE_DATABASE_URL, when set, is used instead of DATABASE_URL (but not instead of
    --database-url): the web service may sit behind a transaction pooler that migrate
    cannot use, and platforms run the Procfile's release line with the web's environment.
    """
    url, source = _migrate_url(ctx)
    ctx.obj["database_url"] = url
    if not show_status:
        _refuse_a_transaction_pooler(url, source)
    if show_status:
        with database(ctx, autocommit=True) as conn:
            waiting = _print_status(conn)
        if waiting:
            ctx.exit(1)
        return
    with database(ctx, autocommit=True) as conn:
        applied = migrations.migrate(conn, report=click.echo)
        if not applied:
            click.echo("nothing to apply: the schema is up to date")
        newer = migrations.unknown(conn)
        if newer:
            click.echo(
                f"note: the database also has migrations this version does not know"
                f" ({', '.join(newer)}): a newer version migrated it",
                err=True,
            )


def _migrate_url(ctx: click.Context) -> tuple[str | None, str | None]:
    """The URL migrate uses and the option or variable it came from: --database-url, else
    MIGRATE_DATABASE_URL, else DATABASE_URL; (None, None) for the embedded server of
    `make dev` (or, where there is none, the one-line error of any command)."""
    given = ctx.obj.get("database_url")
    typed = ctx.parent is not None and (
        ctx.parent.get_parameter_source("database_url") is ParameterSource.COMMANDLINE
    )
    if given and typed:
        return given, "--database-url"
    migrate_url = os.environ.get("MIGRATE_DATABASE_URL", "").strip()
    if migrate_url:
        return migrate_url, "MIGRATE_DATABASE_URL"
    if given:
        return given, "DATABASE_URL"
    return None, None


def _refuse_a_transaction_pooler(url: str | None, source: str | None) -> None:
    """Stop before migrating through a pooler in transaction mode, naming where the URL
    came from.

    The migrator holds a session advisory lock across its transactions; behind such a
    pooler the lock and its release can land on different server connections, and a
    lock left behind would block every later migrate. Port 6543 (Supabase's transaction
    pooler) is refused whatever the URL's source. DB_PREPARED_STATEMENTS=off says so of
    the web's DATABASE_URL only: it counts when migrate uses that very URL, and not
    against the direct URL in MIGRATE_DATABASE_URL, which the documented PgBouncer and
    Supabase set-up puts beside it.
    """
    if url is None:
        return
    if on_transaction_pooler_port(url):
        why = "port 6543"
    elif url == _web_database_url() and prepared_statements_setting(os.environ) is False:
        why = "DB_PREPARED_STATEMENTS=off says the service's DATABASE_URL is one"
    else:
        return
    advice = (
        ", in MIGRATE_DATABASE_URL if the service needs DATABASE_URL for the pooler"
        if source == "DATABASE_URL"
        else ""
    )
    raise click.ClickException(
        f"migrate needs a session connection, and {source} looks like a transaction pooler"
        f" ({why}): use the direct connection or the session pooler (port 5432){advice}"
    )


def _web_database_url() -> str | None:
    """DATABASE_URL as the web reads it (trimmed; blank is unset)."""
    return os.environ.get("DATABASE_URL", "").strip() or None


def _print_status(conn) -> int:
    """List every migration and a summary; return how many are pending.

    The count becomes the exit status (1 while any is pending), so that a deploy script
    can ask `migrate --status` whether the database is ready for this code, as it would
    ask `alembic check`. Migrations a newer version applied, or files changed since they
    were applied, are listed but leave it at 0: `migrate` has nothing to do about them
    (`doctor` reports them as needing a fix).
    """
    states = migrations.status(conn)
    for state in states:
        name = state.migration.path.name
        if state.pending:
            click.echo(f"pending  {name}")
        else:
            note = "" if state.checksum_matches else "  (file changed since it was applied)"
            click.echo(f"applied  {name}  {state.applied_at:%Y-%m-%d %H:%M:%S%z}{note}")
    newer = migrations.unknown(conn)
    for name in newer:
        click.echo(f"unknown  {name}  (applied by a newer version of this code)")
    waiting = sum(s.pending for s in states)
    click.echo(
        f"{len(states) - waiting} applied, {waiting} pending"
        + (f", {len(newer)} unknown to this version" if newer else "")
    )
    return waiting


@cli.command()
@click.option("--yes", is_flag=True, help="Confirm: remove every object the project created.")
@click.pass_context
def drop(ctx: click.Context, yes: bool) -> None:
    """Remove everything the migrations created. Rows of auth.users are never deleted."""
    if not yes:
        raise click.ClickException(
            "drop removes the plans, customers, audit log and processor tables;"
            " run it again with --yes to confirm"
        )
    with database(ctx, autocommit=True) as conn:
        migrations.run_script(conn, migrations.SCHEMA_DIR / "drop.sql")
    click.echo("dropped the project's tables, views, functions and the webhook_private schema")


@cli.command("seed-plans")
@click.pass_context
def seed_plans(ctx: click.Context) -> None:
    """Insert the three sample plans (Basic, Pro, Enterprise) if they are missing."""
    with database(ctx, autocommit=True) as conn:
        require_schema(conn)
        before = conn.execute("select count(*) from public.plans").fetchone()[0]
        migrations.run_script(conn, migrations.SCHEMA_DIR / "seed_plans.sql")
        after = conn.execute("select count(*) from public.plans").fetchone()[0]
    click.echo(f"seeded {after - before} sample plan(s); {after} plan(s) in total")
