"""The Procfile's web line: the `gunicorn` command, once what gunicorn reads on import is sound.

gunicorn reads WEB_CONCURRENCY when it is imported, before it loads any config: a value
that is not a number (or is blank) stopped it with a traceback, and a negative one with
"Value must be positive" (no variable named). Here the variable is checked first, by the
rule every setting follows (one line naming it, exit status 1); then gunicorn gets the
command line exactly as the `gunicorn` command would. Every other setting is checked by
gunicorn_config.
"""

import os
import sys
from collections.abc import MutableMapping

from webhook.core.config import web_concurrency
from webhook.core.errors import ConfigError


def settle_web_concurrency(env: MutableMapping[str, str]) -> int:
    """WEB_CONCURRENCY as this service reads it (raises ConfigError), left in `env` in a
    form gunicorn's import can read: call it before gunicorn is imported."""
    workers = web_concurrency(env)
    if "WEB_CONCURRENCY" in env and not env["WEB_CONCURRENCY"].strip():
        del env["WEB_CONCURRENCY"]  # blank: the default here, a ValueError to gunicorn
    return workers


def restart_command() -> list[str] | None:
    """The command gunicorn should run again on USR2 (its binary upgrade), when this module
    started it: gunicorn repeats the interpreter and `sys.argv`, whose first item is this
    file's path, and running the file by path leaves the working directory off the import
    path, so a project that is not pip-installed would not find `webhook` there."""
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    if spec is None or spec.name != __name__:
        return None
    return [sys.executable, "-m", __name__, *sys.argv[1:]]


def main() -> None:
    """Check WEB_CONCURRENCY, then run gunicorn with this process's arguments."""
    try:
        settle_web_concurrency(os.environ)
    except ConfigError as exc:
        sys.exit(f"Error: {exc}")
    from gunicorn.app.wsgiapp import run

    run(prog="gunicorn")


if __name__ == "__main__":
    main()
