"""The click group behind `python -m webhook`, one module per family of commands.

Every command fails the same way on bad input: one line on stderr, exit status 1, never
a traceback. Expected failures are ProjectError subclasses; the group turns them into
click errors so each command can simply let them rise.

May use: webhook.web, webhook.sync, webhook.pipeline, webhook.stripe, webhook.database,
webhook.core, webhook.fixtures.
"""

from typing import Any

import click
import psycopg

from webhook.core.errors import ProjectError
from webhook.database.connect import first_line
from webhook.database.migrations import SCHEMA_MISSING


class _Group(click.Group):
    """A click group that shows ProjectError, and any database error, as a one-line error."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ProjectError as exc:
            raise click.ClickException(str(exc)) from None
        except SCHEMA_MISSING as exc:
            raise click.ClickException(
                f"the database lacks this version's schema ({first_line(exc)});"
                " run `python -m webhook migrate` first"
            ) from None
        except psycopg.Error as exc:  # the server's own words, first line only (no DETAIL)
            raise click.ClickException(f"database error: {first_line(exc)}") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database-url",
    envvar="DATABASE_URL",
    default=None,
    metavar="URL",
    help="PostgreSQL URL. Default: $DATABASE_URL, else the embedded server `make dev` made"
    " in ./.pgdata.",
)
@click.pass_context
def cli(ctx: click.Context, database_url: str | None) -> None:
    """Stripe webhooks mapped onto customer plans: serve, migrate and operate."""
    # Trimmed, and blank counts as unset, as the web reads DATABASE_URL (load_settings):
    # a secret file's trailing newline or a stray space is not part of the URL.
    ctx.obj = {"database_url": (database_url or "").strip() or None}


def main() -> None:
    """Entry point for `python -m webhook` and the console script."""
    cli(prog_name="python -m webhook")


# Importing the command modules registers their commands on `cli`.
from webhook.cli import (  # noqa: E402,F401
    drain_command,
    inspect_commands,
    repair_commands,
    schema_commands,
    serve_command,
    sync_command,
    trigger_command,
)
