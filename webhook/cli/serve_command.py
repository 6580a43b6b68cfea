"""serve: what `make dev` runs; the same gunicorn set-up as the Procfile's web line.

Without DATABASE_URL it is a development server: it starts the embedded PostgreSQL in
./.pgdata ($EMBEDDED_PGDATA), applies the migrations, seeds the sample plans and a demo
customer once, and signs with a local secret kept in ./.dev-secret (besides any
STRIPE_WEBHOOK_SECRET, so `stripe listen` and `webhook trigger` both work). Ctrl-C stops
gunicorn and then, from the exit handlers, the embedded PostgreSQL.
"""

import os

import click

from webhook.cli import cli
from webhook.cli.devsecret import dev_secret
from webhook.core.config import load_settings
from webhook.database import migrations
from webhook.database.connect import connect, mask_url
from webhook.database.embedded import DEFAULT_PGDATA, embedded_database_url
from webhook.web.gunicorn_run import settle_web_concurrency

DEMO_CUSTOMER = "00000000-0000-4000-8000-00000000d3e0"
DEMO_EMAIL = "demo@example.test"


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--workers", default=None, type=click.IntRange(1, 64), help="Default: $WEB_CONCURRENCY or 2."
)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, workers: int | None) -> None:
    """Serve the webhook (development set-up when DATABASE_URL is unset)."""
    url = ctx.obj.get("database_url")
    development = url is None
    if development:
        url = embedded_database_url()
        _prepare_development_database(url)
        secrets = [s for s in os.environ.get("STRIPE_WEBHOOK_SECRET", "").split(",") if s.strip()]
        os.environ["STRIPE_WEBHOOK_SECRET"] = ",".join([*secrets, dev_secret()])
    else:
        _warn_if_pending(url)
    os.environ["DATABASE_URL"] = url
    load_settings()  # refuse to start on bad configuration, before forking workers
    # Checked even with --workers: gunicorn reads the variable when it is imported.
    from_environment = settle_web_concurrency(os.environ)
    worker_count = workers or from_environment
    _banner(url, host, port, development)
    from webhook.web.gunicorn_app import GunicornServer

    GunicornServer({"bind": f"{host}:{port}", "workers": worker_count}).run()


def _prepare_development_database(url: str) -> None:
    with connect(url, autocommit=True) as conn:
        migrations.migrate(conn, report=lambda line: click.echo(f"migrate: {line}"))
        if conn.execute("select not exists (select from public.plans)").fetchone()[0]:
            migrations.run_script(conn, migrations.SCHEMA_DIR / "seed_plans.sql")
            click.echo("seeded the sample plans Basic, Pro and Enterprise")
        stand_in = "stand-in" in (migrations.describe_auth(conn) or "")
        if stand_in:
            conn.execute(
                "insert into auth.users (id, email) values (%s, %s) on conflict (id) do nothing",
                (DEMO_CUSTOMER, DEMO_EMAIL),
            )


def _warn_if_pending(url: str) -> None:
    with connect(url, autocommit=True) as conn:
        waiting = migrations.pending(conn)
    if waiting:
        click.echo(
            f"warning: {len(waiting)} migration(s) pending; run `python -m webhook migrate`"
            " (/readyz answers 503 until then)",
            err=True,
        )


def _banner(url: str, host: str, port: int, development: bool) -> None:
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
    target = f"{shown}:{port}/webhook"
    click.echo(f"\nwebhook target: http://{target}")
    pgdata = os.environ.get("EMBEDDED_PGDATA") or f"./{DEFAULT_PGDATA}"
    click.echo(
        f"database:       {f'embedded PostgreSQL in {pgdata}' if development else mask_url(url)}"
    )
    if development:
        # The path, not the value: this banner goes wherever the server's output is kept.
        click.echo("signing secret: ./.dev-secret  (development only; `trigger` signs with it)")
        click.echo("\nnext steps:")
        click.echo(f"  stripe listen --forward-to {target}")
        click.echo("    then restart with STRIPE_WEBHOOK_SECRET=<the whsec_ it prints> make dev")
        click.echo(f"  .venv/bin/python -m webhook trigger lifecycle --url http://{target}")
        click.echo(
            f"    then see the demo customer's plan: .venv/bin/python -m webhook customer {DEMO_CUSTOMER}"
        )
    click.echo("")
