"""The click group behind `python -m webhook`, one module per family of commands.

Every command fails the same way on bad input: one line on stderr (`Error: ...`), never
a traceback; exit status 2 for a mistake in the command line (an unknown option, a
missing argument, a value an option does not take), 1 for everything else, including a
bad value in an environment variable, which the line names. Expected failures are
ProjectError subclasses; the group turns them into click errors so each command can
simply let them rise, and shows click's usage errors without its usage block.

May use: webhook.web, webhook.sync, webhook.pipeline, webhook.stripe, webhook.database,
webhook.core, webhook.fixtures.
"""

import os
from collections.abc import Sequence
from typing import Any

import click
import psycopg
from click.core import ParameterSource

from webhook.core.errors import ProjectError
from webhook.database.connect import first_line
from webhook.database.migrations import SCHEMA_MISSING

# click 8.2+ answers a bare `python -m webhook` with the help, as a usage error: kept.
_SHOWS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _UsageLine(click.ClickException):
    """A mistake in the command line, shown on one line with click's exit status for it."""

    exit_code = 2


def one_line(exc: click.UsageError) -> click.ClickException:
    """`exc` without click's usage block (3-4 lines before the error), so that usage
    mistakes read like every other failure: `Error: <what> (see `<command> --help`)`.

    A bad value that came from an environment variable (DRAIN_METRICS_PORT for
    --metrics-port) is a configuration mistake: the line names the variable, not the
    option the operator never typed, and the exit status is 1 as for every setting.
    """
    param = getattr(exc, "param", None)
    ctx = exc.ctx
    if (
        ctx is not None
        and param is not None
        and param.name is not None
        and ctx.get_parameter_source(param.name) is ParameterSource.ENVIRONMENT
    ):
        return click.ClickException(f"Invalid value for {_variable(param)}: {exc.message}")
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return _UsageLine(exc.format_message() + hint)


def _variable(param: click.Parameter) -> str:
    """The environment variable that gave `param` its value (the first one set)."""
    names: Sequence[str | None] = (
        [param.envvar] if isinstance(param.envvar, str) or param.envvar is None else param.envvar
    )
    given = [name for name in names if name]
    return next((name for name in given if os.environ.get(name)), given[0] if given else "?")


class _Group(click.Group):
    """A click group that shows ProjectError, any database error and click's usage errors
    as a one-line error."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except _SHOWS_HELP:
            raise
        except click.UsageError as exc:  # the group's own options: --bogus
            raise one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _SHOWS_HELP:
            raise
        except click.UsageError as exc:  # a command's: unknown, or its options and arguments
            raise one_line(exc) from None
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
