"""migrate, drop and seed-plans: putting the schema in place and taking it away."""

import click

from webhook import migrations
from webhook.cli import cli
from webhook.cli.context import database


@cli.command()
@click.option("--status", "show_status", is_flag=True, help="List applied and pending migrations.")
@click.pass_context
def migrate(ctx: click.Context, show_status: bool) -> None:
    """Apply pending migrations from schema/ (a no-op when all are applied)."""
    with database(ctx, autocommit=True) as conn:
        if show_status:
            _print_status(conn)
            return
        applied = migrations.migrate(conn, report=click.echo)
        if not applied:
            click.echo("nothing to apply: the schema is up to date")


def _print_status(conn) -> None:
    states = migrations.status(conn)
    for state in states:
        name = state.migration.path.name
        if state.pending:
            click.echo(f"pending  {name}")
        else:
            note = "" if state.checksum_matches else "  (file changed since it was applied)"
            click.echo(f"applied  {name}  {state.applied_at:%Y-%m-%d %H:%M:%S%z}{note}")
    waiting = sum(s.pending for s in states)
    click.echo(f"{len(states) - waiting} applied, {waiting} pending")


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
        _require_schema(conn)
        before = conn.execute("select count(*) from public.plans").fetchone()[0]
        migrations.run_script(conn, migrations.SCHEMA_DIR / "seed_plans.sql")
        after = conn.execute("select count(*) from public.plans").fetchone()[0]
    click.echo(f"seeded {after - before} sample plan(s); {after} plan(s) in total")


def _require_schema(conn) -> None:
    waiting = migrations.pending(conn)
    if waiting:
        raise click.ClickException(
            f"{len(waiting)} migration(s) pending; run `python -m webhook migrate` first"
        )
