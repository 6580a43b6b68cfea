"""A real PgBouncer in transaction mode in front of the test server, as Supabase's pooler is.

Debian's `pgbouncer` (.ci/run installs it). It refuses to run as root, so as root it runs
as the system user the embedded PostgreSQL already runs as (which can also reach that
server's Unix socket). Transaction mode: every transaction may land on another server
connection, so nothing may rely on session state (prepared statements, session advisory
locks, SET, temporary tables across transactions, LISTEN).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from servers import free_port

RUN_AS = "embedded_postgres"
MISSING = "pgbouncer is not installed (apt-get install pgbouncer; .ci/run installs it)"


def available() -> str | None:
    """The pgbouncer binary, or None."""
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )


@dataclass
class PgBouncer:
    """A running PgBouncer; `url(dbname)` reaches that database through it."""

    port: int
    process: subprocess.Popen[bytes]
    folder: Path
    user: str

    def url(self, direct_url: str) -> str:
        """The URL of the same database and user as `direct_url`, through the pooler."""
        params = conninfo_to_dict(direct_url)
        return make_conninfo(
            host="127.0.0.1",
            port=self.port,
            dbname=params.get("dbname"),
            user=params.get("user") or self.user,
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.folder, ignore_errors=True)

    def log(self) -> str:
        path = self.folder / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""


def start(server_url: str) -> PgBouncer:
    """PgBouncer on a free port of 127.0.0.1, forwarding every database to `server_url`'s server."""
    binary = available()
    if binary is None:
        raise RuntimeError(MISSING)
    params = conninfo_to_dict(server_url)
    user = str(params.get("user") or "postgres")
    folder = Path(tempfile.mkdtemp(prefix="webhook-pgbouncer-"))
    port = free_port()
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "\n".join(
            [
                "[databases]",
                f"* = host={params.get('host') or 'localhost'} port={params.get('port') or 5432}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {folder / 'users.txt'}",
                "pool_mode = transaction",
                "max_client_conn = 500",
                "default_pool_size = 20",
                "ignore_startup_parameters = extra_float_digits,options",
                f"logfile = {folder / 'pgbouncer.log'}",
                f"pidfile = {folder / 'pgbouncer.pid'}",
                "",
            ]
        )
    )
    command = [binary, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:
        account = pwd.getpwnam(RUN_AS)
        os.chown(folder, account.pw_uid, account.pw_gid)
        for path in folder.iterdir():
            os.chown(path, account.pw_uid, account.pw_gid)
        command = ["runuser", "-u", RUN_AS, "--", *command]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    bouncer = PgBouncer(port, process, folder, user)
    deadline = time.monotonic() + 15
    while True:
        try:
            with psycopg.connect(
                bouncer.url(server_url), connect_timeout=2, prepare_threshold=None
            ):
                return bouncer
        except psycopg.OperationalError:
            if process.poll() is not None or time.monotonic() > deadline:
                log = bouncer.log()
                bouncer.stop()
                raise RuntimeError(f"pgbouncer did not start:\n{log}") from None
            time.sleep(0.1)
