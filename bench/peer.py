"""The peer: @supabase/stripe-sync-engine, installed from npm and run beside the webhook.

A Supabase user's other choice for getting Stripe events into PostgreSQL. It runs behind
node:http (bench/peer/server.mjs) with as many cluster workers as gunicorn has, on its own
database migrated with its own migrations, on the same PostgreSQL server, with every
option that calls Stripe's API off. It applies each event inside the request, so what it
acknowledges is what it applied.
"""

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import psutil
import psycopg
from psycopg.conninfo import conninfo_to_dict

from bench.measure import free_port
from bench.workload import SECRET

PACKAGE = "@supabase/stripe-sync-engine@0.48.5"
HARNESS = Path(__file__).resolve().parent / "peer" / "server.mjs"


def install(folder: Path) -> Path:
    """npm-install the peer into `folder` (once; npm adds the `stripe` it asks for as a
    peer dependency); the harness beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "node_modules" / "@supabase" / "stripe-sync-engine").exists():
        if shutil.which("npm") is None:
            raise RuntimeError("make bench needs node and npm for the peer (stripe-sync-engine)")
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", PACKAGE],
            cwd=folder,
            check=True,
        )
    shutil.copy(HARNESS, folder / "server.mjs")
    return folder


def node_url(conninfo: str) -> str:
    """A libpq conninfo as the URL node-postgres reads (a socket directory as ?host=)."""
    params = conninfo_to_dict(conninfo)
    user = quote(str(params.get("user") or "postgres"))
    password = params.get("password")
    auth = f"{user}:{quote(str(password))}" if password else user
    host = str(params.get("host") or "localhost")
    port = params.get("port") or 5432
    dbname = quote(str(params.get("dbname") or "postgres"))
    if host.startswith("/"):
        return f"postgresql://{auth}@localhost:{port}/{dbname}?host={quote(host)}"
    return f"postgresql://{auth}@{host}:{port}/{dbname}"


class PeerServer:
    """The peer serving on 127.0.0.1 (same shape as measure.Server for run_wrk)."""

    def __init__(self, folder: Path, database_url: str, workers: int, pool: int, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._env = {
            **os.environ,
            "DATABASE_URL": node_url(database_url),
            "STRIPE_WEBHOOK_SECRET": SECRET,
            "PORT": str(self.port),
            "WORKERS": str(workers),
            "POOL": str(pool),
        }
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            ["node", "server.mjs"], cwd=folder, env=self._env, stdout=self.log, stderr=self.log
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the peer exited; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the peer did not start; see {self.log.name}")

    def processes(self) -> list[psutil.Process]:
        primary = psutil.Process(self.process.pid)
        return [primary, *primary.children(recursive=True)]

    def workers(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def migrate(folder: Path, database_url: str) -> None:
    """The peer's own migrations, by the peer's own runMigrations."""
    env = {**os.environ, "DATABASE_URL": node_url(database_url), "MIGRATE": "1"}
    subprocess.run(["node", "server.mjs"], cwd=folder, env=env, check=True)
    with psycopg.connect(database_url) as conn:
        tables = conn.execute(
            "select count(*) from pg_tables where schemaname = 'stripe'"
        ).fetchone()[0]
    if not tables:
        raise RuntimeError("the peer's migrations created no table")


def versions(folder: Path) -> dict[str, str]:
    """The versions npm installed, for the results."""
    found = {}
    for name in ("@supabase/stripe-sync-engine", "stripe"):
        manifest = folder / "node_modules" / name / "package.json"
        found[name] = json.loads(manifest.read_text())["version"] if manifest.exists() else "?"
    return found


def applied(database_url: str) -> int:
    """Rows the peer has written for the benchmark's objects (to check it did the work)."""
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "select (select count(*) from stripe.subscriptions) + (select count(*) from stripe.charges)"
        ).fetchone()[0]
