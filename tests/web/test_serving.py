"""The serving path as an operator runs it: real processes on 127.0.0.1, real HTTP.

- the Procfile's release and web lines, run by hand the way a platform runs them;
- `python -m webhook serve` against a configured database, and `trigger` against it;
- development mode (`make dev`): embedded PostgreSQL, dev secret, demo customer, and the
  embedded server stopped again on Ctrl-C.

Every process is stopped by a finalizer, whatever the test's outcome; every wait is bounded.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psutil
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from servers import (
    HOST,
    ServerProcess,
    base_env,
    closed_port,
    free_port,
    start,
    wait_until_applied,
)
from servers import request as http_request
from stripe_events import ENDIVE_API, Delivery, EventFactory
from webhook_support import SECRET, customer_state, event_status

from webhook.cli.serve_command import DEMO_CUSTOMER
from webhook.web import gunicorn_config

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_SECONDS = 20.0
FIRST_DEV_START_TIMEOUT_SECONDS = 60.0  # initdb on first start
# gunicorn's own bound: past graceful_timeout the master kills a worker that has not exited.
# Usually a stop takes well under a second; under load it has once taken longer than 15 s.
STOP_TIMEOUT_SECONDS = gunicorn_config.graceful_timeout + 10.0
COMMAND_TIMEOUT_SECONDS = 60.0


def procfile() -> dict[str, str]:
    """The Procfile's process types: name -> command."""
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, command = line.split(":", 1)
            entries[name.strip()] = command.strip()
    return entries


def platform_env(**overrides: str | None) -> dict[str, str]:
    """An environment like a platform's: the venv's bin on PATH, no project variables set."""
    return base_env(PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **overrides)


def post_signed(url: str, delivery: Delivery, secret: str = SECRET) -> tuple[int, object]:
    """POST a delivery with a valid signature over urllib; (status, JSON body)."""
    request = urllib.request.Request(
        url, data=delivery.body, headers=delivery.headers(secret), method="POST"
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def cli(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = COMMAND_TIMEOUT_SECONDS
) -> subprocess.CompletedProcess[str]:
    """`python -m webhook ARGS` in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "webhook", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The command exited with `code`, no traceback, and its error on one line, the only
    line on stderr (a usage mistake's too: no usage block)."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def plan_name(conn: psycopg.Connection, customer: uuid.UUID | str) -> str | None:
    row = conn.execute(
        "select plan_name from public.usage_analytics where uuid = %s", (customer,)
    ).fetchone()
    assert row is not None
    return row[0]


def stopped_by(server: ServerProcess, signum: int) -> int:
    """Send `signum` to the server process and return its exit code (bounded wait)."""
    server.send(signum)
    code = server.wait(STOP_TIMEOUT_SECONDS)
    assert code is not None, f"{server.name} still running after {signum!r}:\n{server.tail()}"
    return code


# --- the Procfile -------------------------------------------------------------------------


def test_the_procfile_release_line_migrates_an_empty_database(empty_db_url) -> None:
    release = procfile()["release"]
    result = subprocess.run(
        ["bash", "-c", release],
        cwd=ROOT,
        env=platform_env(DATABASE_URL=empty_db_url),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "applied 001_core.sql" in result.stdout
    with psycopg.connect(empty_db_url) as db:
        tables = db.execute(
            "select to_regclass('public.plans'), to_regclass('webhook_private.events')"
        ).fetchone()
    assert tables == ("plans", "webhook_private.events")


def installed_copy(target: Path, *, with_sql: bool) -> Path:
    """A site-packages holding the package as its wheel installs it: webhook/ alone, away
    from the repository, with the SQL of schema/ as webhook/schema (pyproject's
    package-dir) when `with_sql`; returns the folder to put on PYTHONPATH."""
    site = target / "site-packages"
    shutil.copytree(
        ROOT / "webhook", site / "webhook", ignore=shutil.ignore_patterns("__pycache__")
    )
    if with_sql:
        shutil.copytree(ROOT / "schema", site / "webhook" / "schema")
    return site


def test_the_release_line_migrates_from_an_installed_copy(empty_db_url, tmp_path) -> None:
    """Not only from a checkout: the SQL lived only in the repository's schema/, and an
    installed copy failed with a FileNotFoundError for schema/bootstrap.sql."""
    site = installed_copy(tmp_path, with_sql=True)
    env = platform_env(DATABASE_URL=empty_db_url, PYTHONPATH=str(site))
    release = subprocess.run(
        ["bash", "-c", procfile()["release"]], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=COMMAND_TIMEOUT_SECONDS,
    )  # fmt: skip
    assert release.returncode == 0, (release.stdout, release.stderr)
    assert "applied 001_core.sql" in release.stdout
    status = cli("migrate", "--status", cwd=tmp_path, env=env)
    assert status.returncode == 0, (status.stdout, status.stderr)
    shipped = len(list((ROOT / "schema").glob("[0-9][0-9][0-9]_*.sql")))
    assert status.stdout.splitlines()[-1] == f"{shipped} applied, 0 pending"


@pytest.mark.parametrize(
    "command", [["migrate"], ["migrate", "--status"], ["drain", "--once"], ["web line"]]
)
def test_an_installed_copy_without_its_sql_says_so(empty_db_url, tmp_path, command) -> None:
    """`migrate --status` found no migrations and reported "0 applied, 0 pending", exit 0
    (so /readyz said ready on an empty database); `migrate` failed with a traceback. The
    web line and a drain, which could never find the schema ready, stop at once too."""
    site = installed_copy(tmp_path, with_sql=False)
    env = platform_env(DATABASE_URL=empty_db_url, PYTHONPATH=str(site),
                       STRIPE_WEBHOOK_SECRET=SECRET, PORT=str(free_port()), HOST=HOST)  # fmt: skip
    if command == ["web line"]:
        result = subprocess.run(
            ["bash", "-c", procfile()["web"]], cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=COMMAND_TIMEOUT_SECONDS,
        )  # fmt: skip
        errors = [line for line in (result.stdout + result.stderr).splitlines() if "rror" in line]
        assert result.returncode != 0 and len(errors) == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        line = errors[0]
    else:
        line = one_line_error(cli(*command, cwd=tmp_path, env=env), 1)
    assert f"no migrations in {site / 'webhook' / 'schema'}" in line
    assert "lacks the SQL files of schema/" in line
    with psycopg.connect(empty_db_url) as db:
        assert db.execute("select to_regnamespace('webhook_private')").fetchone() == (None,)


@pytest.mark.parametrize(
    ("worker_class", "worker"), [(None, "asgi"), ("gthread", "gthread")], ids=["asgi", "gthread"]
)
def test_the_procfile_web_line_serves_and_stops_gracefully(
    conn, db_url, plans, make_user, tmp_path, request, worker_class, worker
) -> None:
    """By default the asyncio worker with the ASGI edge; WEB_WORKER_CLASS=gthread the
    threaded worker serving the Flask app itself. Both serve the same way."""
    user = make_user()
    port = free_port()
    env = platform_env(
        PORT=str(port),
        HOST=HOST,
        WEB_CONCURRENCY="2",
        DATABASE_URL=db_url,
        STRIPE_WEBHOOK_SECRET=SECRET,
        WEB_WORKER_CLASS=worker_class,
    )
    server = start(
        "procfile-web", ["bash", "-c", procfile()["web"]], cwd=ROOT, env=env, log_dir=tmp_path
    )
    request.addfinalizer(server.stop)

    assert server.wait_for(port, "/healthz", timeout=STARTUP_TIMEOUT_SECONDS) == {"status": "ok"}
    assert server.wait_for(port, "/readyz", timeout=STARTUP_TIMEOUT_SECONDS)["status"] == "ready"
    delivery = EventFactory(ENDIVE_API).checkout_completed(
        customer="cus_procfile", subscription=None, client_reference_id=str(user)
    )
    status, body = post_signed(f"http://{HOST}:{port}/webhook", delivery)
    assert (status, body) == (
        200,
        {"received": True, "id": delivery.id, "status": "received", "duplicate": False},
    )
    wait_until_applied(conn, [delivery.id])  # by the worker's drain, with no further request
    assert event_status(conn, delivery.id) == ("processed", None)
    assert customer_state(conn, user)["stripe_customer_id"] == "cus_procfile"
    # A forged signature is refused and nothing is stored.
    forged = EventFactory(ENDIVE_API).other("charge.succeeded")
    status, _ = post_signed(f"http://{HOST}:{port}/webhook", forged, secret="whsec_wrong")
    assert status == 400
    assert conn.execute(
        "select count(*) from webhook_private.events where id = %s", (forged.id,)
    ).fetchone() == (0,)

    log = server.output()
    assert f"Listening at: http://{HOST}:{port}" in log  # PORT and HOST were honoured
    assert f"Using worker: {worker}" in log
    assert log.count("Booting worker") == 2  # WEB_CONCURRENCY was honoured
    # Metrics add up both workers' counts, whichever worker answers the scrape.
    processed = 'webhook_events_total{outcome="processed",type="checkout.session.completed"} 1.0'
    forged_count = 'webhook_signature_failures_total{reason="mismatch"} 1.0'
    for _ in range(6):
        status, text = http_request(port, "GET", "/metrics")
        assert status == 200
        assert processed in text
        assert forged_count in text

    server.send(signal.SIGTERM)
    code = server.wait(gunicorn_config.graceful_timeout + 5)
    assert code == 0, server.tail()
    assert "Traceback" not in server.output()
    assert SECRET not in server.output()


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        ({"WEB_WORKER_CLASS": "gevent"}, "WEB_WORKER_CLASS must be asgi or gthread, got 'gevent'"),
        ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY must be at least 1, got 0"),
        # gunicorn reads WEB_CONCURRENCY on import, before the config: not a number, it
        # stopped with a traceback; negative, with a line that did not name the variable.
        ({"WEB_CONCURRENCY": "abc"}, "WEB_CONCURRENCY must be a whole number, got 'abc'"),
        ({"WEB_CONCURRENCY": "-1"}, "WEB_CONCURRENCY must be at least 1, got -1"),
        (
            {"WEB_WORKER_CLASS": "gthread", "WEB_THREADS": "abc"},
            "WEB_THREADS must be a whole number, got 'abc'",
        ),
        ({"WEB_WORKER_CLASS": "gthread", "WEB_THREADS": "0"}, "WEB_THREADS must be at least 1"),
        # gunicorn's own words for these did not name the variable.
        ({"PORT": "abc"}, "PORT must be a whole number, got 'abc'"),
        ({"PORT": "70000"}, "PORT must be a port number up to 65535, got 70000"),
        ({"STRIPE_WEBHOOK_SECRET": None}, "STRIPE_WEBHOOK_SECRET is not set"),
        ({"WEB_STORE_TIMEOUT_MS": "5"}, "WEB_STORE_TIMEOUT_MS must be at least 100"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL must be info or warning or error or debug"),
        # Any word but on meant off.
        ({"WEB_ACCESS_LOG": "yes"}, "WEB_ACCESS_LOG must be off or on, got 'yes'"),
        # Every worker crashed at boot with a FileNotFoundError traceback.
        (
            {"PROMETHEUS_MULTIPROC_DIR": "/nonexistent/metrics"},
            "PROMETHEUS_MULTIPROC_DIR must be an existing folder, got '/nonexistent/metrics'",
        ),
        ({"DATABASE_URL": "postgresql://u:s3cr/et@127.0.0.1:1/x"}, "must be percent-encoded"),
        # No database and no development one: not a throwaway PostgreSQL in the container.
        (
            {"DATABASE_URL": None, "EMBEDDED_PGDATA": "/nonexistent/.pgdata"},
            "DATABASE_URL is not set",
        ),
    ],
)
def test_a_bad_setting_stops_the_web_line_with_one_line(db_url, setting, reason) -> None:
    base = {
        "PORT": str(free_port()),
        "HOST": HOST,
        "DATABASE_URL": db_url,
        "STRIPE_WEBHOOK_SECRET": SECRET,
    }
    env = platform_env(**{**base, **setting})
    done = subprocess.run(
        ["bash", "-c", procfile()["web"]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert reason in output and "s3cr" not in output
    assert "Traceback" not in output and "Worker failed to boot" not in output
    # One line says what is wrong, in the words the CLI would use (gunicorn's own
    # "Starting gunicorn" may precede it).
    errors = [line for line in output.splitlines() if "rror" in line]
    assert len(errors) == 1 and errors[0].startswith("Error: ") and reason in errors[0], output


@pytest.mark.parametrize("command", [["migrate"], ["drain", "--once"], ["events"]])
def test_without_database_url_a_command_uses_no_database_it_would_make(tmp_path, command) -> None:
    """A release step or a worker started without DATABASE_URL fails in one line, rather
    than starting a PostgreSQL of its own that the next deploy throws away; only `make dev`
    (serve) makes the embedded one, which commands in its folder then use."""
    result = cli(*command, cwd=tmp_path, env=base_env(STRIPE_WEBHOOK_SECRET=SECRET))
    line = one_line_error(result, 1)
    assert "DATABASE_URL is not set" in line and "make dev" in line
    assert not (tmp_path / ".pgdata").exists()


@pytest.mark.parametrize("blank", [" ", "\n", " \t\n"])
def test_a_blank_database_url_counts_as_unset(tmp_path, blank) -> None:
    """As the web reads it: not libpq's default server on its local socket."""
    result = cli("events", cwd=tmp_path, env=base_env(DATABASE_URL=blank))
    line = one_line_error(result, 1)
    assert "DATABASE_URL is not set" in line


def as_url(conninfo: str) -> str:
    """The same database as a postgresql:// URL (what a platform's secret holds)."""
    params = conninfo_to_dict(conninfo)
    password = f":{quote(str(params['password']), safe='')}" if params.get("password") else ""
    host = quote(str(params.get("host") or "localhost"), safe="")
    return (
        f"postgresql://{quote(str(params.get('user') or 'postgres'), safe='')}{password}"
        f"@{host}:{params.get('port') or 5432}/{quote(str(params['dbname']), safe='')}"
    )


@pytest.mark.parametrize("written", ["{}\n", "  {}", "\t{} \r\n"])
def test_the_cli_trims_database_url_as_the_web_does(db_url, tmp_path, written) -> None:
    """A secret file's trailing newline, or a stray space, is not part of the URL (it made
    the database name end in a newline, or the URL unreadable)."""
    env = base_env(DATABASE_URL=written.format(as_url(db_url)))
    result = cli("events", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["no events match"]


@pytest.mark.parametrize(
    ("arguments", "command"),
    [
        (["--bogus"], "python -m webhook"),
        (["bogus"], "python -m webhook"),
        (["replay"], "python -m webhook replay"),
        (["events", "--limit", "0"], "python -m webhook events"),
        (["events", "dismiss"], "python -m webhook events dismiss"),
        (["purge"], "python -m webhook purge"),
    ],
)
def test_a_usage_mistake_is_one_line(tmp_path, arguments, command) -> None:
    """Not click's usage block (three or four lines) before it: exit status 2, the line
    ending with where to read more."""
    line = one_line_error(cli(*arguments, cwd=tmp_path, env=base_env()), 2)
    assert line.endswith(f"(see `{command} --help`)")


def test_a_bad_value_from_the_environment_names_the_variable(tmp_path) -> None:
    """Not the option (--metrics-port) the operator never typed: a setting's mistake,
    exit status 1 as for every other setting."""
    result = cli("drain", "--once", cwd=tmp_path, env=base_env(DRAIN_METRICS_PORT="abc"))
    line = one_line_error(result, 1)
    assert (
        line == "Error: Invalid value for DRAIN_METRICS_PORT: 'abc' is not a valid integer range."
    )
    typed = cli("drain", "--once", "--metrics-port", "abc", cwd=tmp_path, env=base_env())
    assert "Invalid value for '--metrics-port'" in one_line_error(typed, 2)


def test_a_bad_web_concurrency_concerns_serving_only(db_url, tmp_path) -> None:
    env = base_env(STRIPE_WEBHOOK_SECRET=SECRET, WEB_CONCURRENCY="abc")
    listed = cli("--database-url", db_url, "events", cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    refused = cli(
        "--database-url", db_url, "serve", "--port", str(free_port()), cwd=tmp_path, env=env
    )
    line = one_line_error(refused, 1)
    assert "WEB_CONCURRENCY must be a whole number, got 'abc'" in line
    # --workers does not make the variable harmless: gunicorn reads it when imported.
    with_workers = cli(
        "--database-url", db_url, "serve", "--port", str(free_port()), "--workers", "1",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    line = one_line_error(with_workers, 1)
    assert "WEB_CONCURRENCY must be a whole number, got 'abc'" in line


def test_a_blank_web_concurrency_is_the_default_on_the_web_line(db_url) -> None:
    """A platform may set the variable empty: two workers, as when it is unset (gunicorn
    itself could not read it)."""
    env = platform_env(DATABASE_URL=db_url, STRIPE_WEBHOOK_SECRET=SECRET, WEB_CONCURRENCY=" ")
    done = subprocess.run(
        ["bash", "-c", f"{procfile()['web']} --check-config --print-config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    settings = dict(
        (name.strip(), value.strip())
        for name, _, value in (line.partition("=") for line in done.stdout.splitlines())
    )
    assert settings["workers"] == "2"


# --- the service's own log lines -----------------------------------------------------------

# An INFO line of the drain: a link request waited for its Stripe customer in vain, and
# link requests rest for a while (the drain goes on). An operator must see it.
LINK_REQUEST_WAITED = "drain: a link request waited in vain"
HELD = "cus_held_elsewhere"


def held_link_request(conn: psycopg.Connection, make_user) -> str:
    """A customer the application linked to HELD (a pending link request); its e-mail."""
    email = f"{uuid.uuid4().hex[:8]}@example.test"
    user = make_user(email)
    conn.execute("update public.customer set stripe_customer_id = %s where uuid = %s", (HELD, user))
    return email


def holding(db_url: str) -> psycopg.Connection:
    """A session that holds HELD's Stripe-customer lock until it is closed."""
    holder = psycopg.connect(db_url)
    holder.execute(
        "select pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"stripe-customer:{HELD}",)
    )
    return holder


def wait_for_output(server: ServerProcess, text: str, timeout: float) -> str:
    """The first line of the process's output that holds `text`; fail with its log if no
    such line comes within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in server.output().splitlines() if text in line]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"{server.name} wrote no line with {text!r}:\n{server.tail()}")


def test_the_web_line_writes_one_json_line_for_a_path_with_a_newline(
    db_url, tmp_path, request
) -> None:
    """The real Procfile line with WEB_ACCESS_LOG=on: `%0a` in a path stays in its line."""
    port = free_port()
    env = platform_env(PORT=str(port), HOST=HOST, WEB_CONCURRENCY="1", DATABASE_URL=db_url,
                       STRIPE_WEBHOOK_SECRET=SECRET, WEB_ACCESS_LOG="on")  # fmt: skip
    server = start("access-log", ["bash", "-c", procfile()["web"]], cwd=ROOT, env=env,
                   log_dir=tmp_path)  # fmt: skip
    request.addfinalizer(server.stop)
    server.wait_for(port, "/healthz", timeout=STARTUP_TIMEOUT_SECONDS)
    status, _ = http_request(port, "GET", '/nl%0A{"log":"forged"}')
    assert status == 404
    line = wait_for_output(server, '"status":404', timeout=10)
    assert json.loads(line)["path"] == '/nl\n{"log":"forged"}'
    assert '"log":"forged"' not in server.output().replace(line, "")


def advisory_waiters(conn: psycopg.Connection) -> int:
    return conn.execute(
        "select count(*) from pg_stat_activity where datname = current_database()"
        " and wait_event_type = 'Lock' and wait_event = 'advisory'"
    ).fetchone()[0]


@pytest.mark.parametrize("line", ["web", "worker"])
def test_the_drains_info_lines_are_shown_by_default(
    conn, db_url, make_user, tmp_path, request, line
) -> None:
    """Under gunicorn (the web line's drain) and `python -m webhook drain` (the worker
    line), with nothing configured, in gunicorn's layout and naming the logger."""
    email = held_link_request(conn, make_user)
    env = platform_env(PORT=str(free_port()), HOST=HOST, WEB_CONCURRENCY="1",
                       DATABASE_URL=db_url, STRIPE_WEBHOOK_SECRET=SECRET)  # fmt: skip
    with holding(db_url):
        server = start(
            f"procfile-{line}", ["bash", "-c", procfile()[line]], cwd=ROOT, env=env,
            log_dir=tmp_path,
        )  # fmt: skip
        request.addfinalizer(server.stop)
        shown = wait_for_output(server, LINK_REQUEST_WAITED, STARTUP_TIMEOUT_SECONDS)
    assert "] [INFO] webhook.pipeline.drain_worker: drain: a link request waited" in shown
    assert "lock timeout" in shown  # why, in the database's words
    output = server.output()
    assert email not in output and SECRET not in output and "Traceback" not in output


def test_log_level_warning_leaves_the_drains_info_lines_out(
    conn, db_url, make_user, tmp_path, request
) -> None:
    held_link_request(conn, make_user)
    env = platform_env(DATABASE_URL=db_url, LOG_LEVEL="WARNING")
    with holding(db_url):
        server = start(
            "procfile-worker", ["bash", "-c", procfile()["worker"]], cwd=ROOT, env=env,
            log_dir=tmp_path,
        )  # fmt: skip
        request.addfinalizer(server.stop)
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not advisory_waiters(conn):  # the drain's link request waits ...
            assert time.monotonic() < deadline, server.tail()
            time.sleep(0.05)
        while advisory_waiters(conn):  # ... and gives up: the line would be written now
            assert time.monotonic() < deadline, server.tail()
            time.sleep(0.05)
    server.send(signal.SIGTERM)
    assert server.wait(STOP_TIMEOUT_SECONDS) == 0, server.tail()
    output = server.output()
    assert "drain: stopped after 0 event(s)" in output
    assert LINK_REQUEST_WAITED not in output
    pending = "select status from webhook_private.link_requests"
    assert conn.execute(pending).fetchall() == [("pending",)]  # it did wait in vain


def test_a_bad_log_level_stops_the_drain_with_one_line(db_url, tmp_path) -> None:
    env = base_env(DATABASE_URL=db_url, LOG_LEVEL="verbose")
    line = one_line_error(cli("drain", "--once", cwd=tmp_path, env=env), 1)
    assert "LOG_LEVEL must be info or warning or error or debug, got 'verbose'" in line


# --- serve and trigger with a configured database -----------------------------------------


@pytest.fixture
def served(db_url, tmp_path, request) -> tuple[ServerProcess, int]:
    """`python -m webhook serve` on a free port, against the test's database (with
    `indirect` parametrisation, extra variables for the server)."""
    port = free_port()
    env = base_env(DATABASE_URL=db_url, STRIPE_WEBHOOK_SECRET=SECRET,
                   **getattr(request, "param", {}))  # fmt: skip
    server = start(
        "serve",
        [sys.executable, "-m", "webhook", "serve", "--port", str(port), "--workers", "1"],
        cwd=tmp_path,
        env=env,
        log_dir=tmp_path,
    )
    request.addfinalizer(server.stop)
    server.wait_for(port, "/healthz", timeout=STARTUP_TIMEOUT_SECONDS)
    return server, port


def test_serve_with_a_database_url_is_ready_and_stops_on_ctrl_c(served, tmp_path) -> None:
    server, port = served
    assert server.wait_for(port, "/readyz", timeout=STARTUP_TIMEOUT_SECONDS)["status"] == "ready"
    banner = server.output()
    assert f"webhook target: http://localhost:{port}/webhook" in banner
    assert "signing secret" not in banner  # no development secret outside development
    assert SECRET not in banner
    assert not (tmp_path / ".dev-secret").exists()
    assert stopped_by(server, signal.SIGINT) == 0
    assert "Traceback" not in server.output()


def trigger_lifecycle(
    port: int, customer: uuid.UUID, tmp_path: Path, *options: str, db_url: str | None = None
):
    """`trigger lifecycle` for `customer` against the server on `port`; with `db_url`, it
    reads the server's database and returns once the events are applied."""
    return cli(
        *(("--database-url", db_url) if db_url else ()),
        "trigger",
        "lifecycle",
        "--url",
        f"http://{HOST}:{port}/webhook",
        "--customer",
        str(customer),
        *options,
        cwd=tmp_path,
        env=base_env(STRIPE_WEBHOOK_SECRET=SECRET),
    )


@pytest.mark.parametrize("served", [{"WEB_DRAIN": "off"}], indirect=True)
def test_trigger_says_when_no_drain_applies_its_events(
    db_url, plans, make_user, served, tmp_path
) -> None:
    _, port = served
    customer = make_user()
    result = cli(
        "--database-url", db_url, "trigger", "invoice.paid", "--url",
        f"http://{HOST}:{port}/webhook", "--customer", str(customer), "--wait", "2",
        cwd=tmp_path, env=base_env(STRIPE_WEBHOOK_SECRET=SECRET),
    )  # fmt: skip
    line = one_line_error(result, 1)
    assert "-> 200 " in result.stdout and "not applied yet" in result.stdout
    assert line.startswith("Error: the server stored the events, but nothing applied them")
    assert "is a drain running" in line


def test_trigger_makes_a_second_subscription_for_an_add_on(
    db_url, conn, plans, make_user, served, tmp_path
) -> None:
    """--subscription names a customer's second subscription: a storage pack (listed as
    an add-on) beside Pro, which stays Pro's until Pro is cancelled."""
    _, port = served
    conn.execute("insert into webhook_private.add_ons (stripe_product_id) values ('prod_storage')")
    customer = make_user()

    def trigger(*args: str) -> str:
        result = cli(
            "--database-url", db_url, "trigger", *args, "--customer", str(customer),
            "--url", f"http://{HOST}:{port}/webhook",
            cwd=tmp_path, env=base_env(STRIPE_WEBHOOK_SECRET=SECRET),
        )  # fmt: skip
        assert result.returncode == 0, (result.stdout, result.stderr)
        return result.stdout

    trigger("checkout.session.completed")
    trigger("customer.subscription.created", "--price", "price_pro")
    storage = ("--subscription", "sub_storage", "--price", "price_storage_monthly",
               "--product", "prod_storage")  # fmt: skip
    assert "applied: processed" in trigger("customer.subscription.created", *storage)
    assert plan_name(conn, customer) == "Pro"
    trigger("customer.subscription.deleted", "--price", "price_pro")
    assert plan_name(conn, customer) is None
    subscriptions = conn.execute(
        "select id, status from webhook_private.subscriptions order by id"
    ).fetchall()
    assert subscriptions == [("sub_dev_" + customer.hex, "canceled"), ("sub_storage", "active")]


def test_trigger_lifecycle_against_a_running_server(
    db_url, conn, plans, make_user, served, tmp_path
) -> None:
    _, port = served
    customer = make_user()
    result = trigger_lifecycle(port, customer, tmp_path, "--price", "price_pro", db_url=db_url)
    assert result.returncode == 0, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert len(lines) == 7, result.stdout
    assert all("-> 200 " in line and "; applied: " in line for line in lines), result.stdout
    assert plan_name(conn, customer) == "Pro"
    assert customer_state(conn, customer)["stripe_customer_id"] == f"cus_dev_{customer.hex}"
    stored = conn.execute(
        "select count(*) from webhook_private.events where status in ('processed', 'ignored')"
    ).fetchone()[0]
    assert stored == 7


def test_trigger_sends_new_events_each_time_it_runs(
    conn, plans, make_user, served, tmp_path
) -> None:
    _, port = served
    customer = make_user()
    for _ in range(2):
        result = trigger_lifecycle(port, customer, tmp_path, "--price", "price_pro")
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert '"duplicate":true' not in result.stdout.replace(" ", ""), result.stdout
        # It reads no database here (no --database-url, no ./.pgdata), and says so.
        assert "note: trigger cannot see these events in a database" in result.stderr
    stored = conn.execute("select count(distinct id) from webhook_private.events").fetchone()[0]
    assert stored == 14


def test_trigger_sends_a_price_that_only_its_product_maps_to_a_plan(
    db_url, conn, plans, make_user, served, tmp_path
) -> None:
    _, port = served
    customer = make_user()
    result = trigger_lifecycle(
        port, customer, tmp_path, "--price", "price_pro_yearly", "--product", "prod_pro",
        db_url=db_url,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert plan_name(conn, customer) == "Pro"
    products = conn.execute("select product_ids from webhook_private.subscriptions").fetchall()
    assert products == [(["prod_pro"],)]


def test_a_running_server_applies_the_applications_link_within_a_second(
    conn, plans, make_user, served
) -> None:
    """No event after the write: the worker's background work applies the link request."""
    _, port = served
    customer = make_user()
    created = EventFactory(ENDIVE_API, start=int(time.time())).subscription(
        "customer.subscription.created",
        sub_id="sub_app",
        customer="cus_app",
        status="active",
        price_ids=["price_pro"],
    )
    status, _ = http_request(port, "POST", "/webhook", created.body, created.headers(SECRET))
    assert status == 200
    assert plan_name(conn, customer) is None
    written = time.monotonic()
    conn.execute(
        "update public.customer set stripe_customer_id = 'cus_app' where uuid = %s", (customer,)
    )
    while plan_name(conn, customer) is None and time.monotonic() - written < 10:
        time.sleep(0.05)
    assert plan_name(conn, customer) == "Pro"


def test_trigger_against_a_closed_port(tmp_path) -> None:
    url = f"http://{HOST}:{closed_port()}/webhook"
    result = cli(
        "trigger",
        "lifecycle",
        "--url",
        url,
        cwd=tmp_path,
        env=base_env(STRIPE_WEBHOOK_SECRET=SECRET),
    )
    line = one_line_error(result, 1)
    assert f"cannot reach {url}" in line


def test_trigger_rejects_a_bad_customer(tmp_path) -> None:
    result = cli(
        "trigger",
        "lifecycle",
        "--customer",
        "not-a-uuid",
        cwd=tmp_path,
        env=base_env(STRIPE_WEBHOOK_SECRET=SECRET),
    )
    line = one_line_error(result, 2)
    assert "--customer" in line
    assert "not-a-uuid" in line


@pytest.mark.parametrize(
    "url",
    [
        "not-a-url",
        # http.client's or urllib's own errors for these were tracebacks.
        "http://localhost:abc/webhook",
        "http://exa mple.com/",
        "http://[::1",
        "http://localhost:99999/webhook",
        "http:///webhook",
        "http://localhost/web hook",
    ],
)
def test_trigger_rejects_a_url_it_cannot_post_to(tmp_path, url) -> None:
    result = cli("trigger", "lifecycle", "--url", url, cwd=tmp_path,
                 env=base_env(STRIPE_WEBHOOK_SECRET=SECRET))  # fmt: skip
    line = one_line_error(result, 2)
    assert "--url" in line and repr(url) in line


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["invoice-paid"], "EVENT_TYPE"),  # a typo: nothing would handle it
        (["invoice.paid", "--api-version", "2026-13-01"], "--api-version"),
        (["invoice.paid", "--api-version", "endive"], "--api-version"),
        # Not one of Stripe's: it took the customer's plan away as "not entitled".
        (["customer.subscription.updated", "--status", "bogus"], "--status"),
    ],
)
def test_trigger_rejects_what_is_not_an_event_type_or_an_api_version(
    tmp_path, arguments, named
) -> None:
    result = cli("trigger", *arguments, "--url", f"http://{HOST}:{closed_port()}/webhook",
                 cwd=tmp_path, env=base_env(STRIPE_WEBHOOK_SECRET=SECRET))  # fmt: skip
    line = one_line_error(result, 2)
    assert named in line


def test_trigger_without_any_secret_says_how_to_get_one(tmp_path) -> None:
    url = f"http://{HOST}:{closed_port()}/webhook"
    result = cli("trigger", "lifecycle", "--url", url, cwd=tmp_path, env=base_env())
    line = one_line_error(result, 1)
    assert "STRIPE_WEBHOOK_SECRET" in line
    assert ".dev-secret" in line


# --- development mode (`make dev`) --------------------------------------------------------


def postmaster_pid(pgdata: Path) -> int | None:
    """The postmaster's pid from pgdata/postmaster.pid, if a postmaster wrote one.

    (initdb's single-user backend writes a negative pid; that is not a server to stop.)
    """
    try:
        pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    return pid if pid > 0 else None


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until_gone(pgdata: Path, pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not (pgdata / "postmaster.pid").exists() and not alive(pid):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def project_dir() -> Iterator[Path]:
    """A fresh directory to run `make dev` in, directly under the system temp directory.

    Not pytest's tmp_path: as root, the embedded server runs as another user, which must be
    able to traverse every parent of its data directory, and each pytest session that starts
    resets /tmp/pytest-of-<user> to mode 0700 (so a concurrent run would lock it out).
    """
    path = Path(tempfile.mkdtemp(prefix="webhook-dev-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def stop_development_server(server: ServerProcess, pgdata: Path) -> None:
    """Stop the server; if its embedded PostgreSQL outlived it, stop that too (fast shutdown)."""
    server.stop()
    pid = postmaster_pid(pgdata)
    if pid is not None and alive(pid):
        os.kill(pid, signal.SIGINT)
        wait_until_gone(pgdata, pid, 15)


def test_development_mode_end_to_end(project_dir, tmp_path, request) -> None:
    pgdata = project_dir / "pgdata"
    port = free_port()
    env = base_env(EMBEDDED_PGDATA=str(pgdata))
    server = start(
        "dev-serve",
        [sys.executable, "-m", "webhook", "serve", "--port", str(port)],
        cwd=project_dir,
        env=env,
        log_dir=tmp_path,
    )
    request.addfinalizer(lambda: stop_development_server(server, pgdata))

    ready = server.wait_for(port, "/readyz", timeout=FIRST_DEV_START_TIMEOUT_SECONDS)
    assert ready["status"] == "ready"
    secret = (project_dir / ".dev-secret").read_text().strip()
    assert secret.startswith("whsec_")
    assert (project_dir / ".dev-secret").stat().st_mode & 0o077 == 0
    banner = server.output()
    assert "signing secret: ./.dev-secret" in banner
    assert secret not in banner  # the banner may end up in a log: it names the file only
    assert f"stripe listen --forward-to localhost:{port}/webhook" in banner
    assert f"embedded PostgreSQL in {pgdata}" in banner
    postgres = postmaster_pid(pgdata)
    assert postgres is not None and alive(postgres), banner

    # trigger finds ./.dev-secret in the working directory, as after `make dev`.
    url = f"http://{HOST}:{port}/webhook"
    triggered = cli("trigger", "lifecycle", "--url", url, cwd=project_dir, env=env)
    assert triggered.returncode == 0, (triggered.stdout, triggered.stderr)
    assert triggered.stdout.count("-> 200 ") == 7, triggered.stdout

    shown = cli("customer", DEMO_CUSTOMER, cwd=project_dir, env=env)
    assert shown.returncode == 0, (shown.stdout, shown.stderr)
    assert shown.stdout.splitlines()[0].split()[:2] == ["plan:", "Pro"], shown.stdout

    # doctor takes the development secret for the missing signing secret, and still checks
    # every other setting as the web process would.
    healthy = cli("doctor", cwd=project_dir, env=env)
    assert "ok   configuration: development secret in ./.dev-secret" in healthy.stdout, (
        healthy.stdout
    )
    misset = cli("doctor", cwd=project_dir, env={**env, "WEB_STORE_TIMEOUT_MS": "5"})
    assert misset.returncode == 1, (misset.stdout, misset.stderr)
    assert "FIX  configuration: WEB_STORE_TIMEOUT_MS must be at least 100" in misset.stdout

    # Ctrl-C: gunicorn stops, then the exit handlers stop the embedded PostgreSQL.
    assert stopped_by(server, signal.SIGINT) == 0
    assert wait_until_gone(pgdata, postgres, STOP_TIMEOUT_SECONDS), (
        f"the embedded PostgreSQL (pid {postgres}) still runs:\n{server.tail()}"
    )
    assert "Traceback" not in server.output()


def test_a_usr2_upgrade_starts_the_web_line_again_as_it_was_started(
    db_url, tmp_path, request
) -> None:
    """gunicorn's binary upgrade runs the master's command again: the launcher's module,
    not its file's path (which would leave the working directory off the import path)."""
    port = free_port()
    env = platform_env(PORT=str(port), HOST=HOST, WEB_CONCURRENCY="1", DATABASE_URL=db_url,
                       STRIPE_WEBHOOK_SECRET=SECRET)  # fmt: skip
    server = start(
        "procfile-web", ["bash", "-c", f"exec {procfile()['web']}"], cwd=ROOT, env=env,
        log_dir=tmp_path,
    )  # fmt: skip
    request.addfinalizer(server.stop)
    assert server.wait_for(port, "/healthz", timeout=STARTUP_TIMEOUT_SECONDS) == {"status": "ok"}
    old_master = psutil.Process(server.pid)
    old_workers = {child.pid for child in old_master.children()}
    os.kill(server.pid, signal.SIGUSR2)  # the master alone, not its process group
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while not (new := [c for c in old_master.children() if c.pid not in old_workers]):
        assert time.monotonic() < deadline, server.tail()
        time.sleep(0.05)
    new_master = new[0]
    request.addfinalizer(lambda: new_master.is_running() and new_master.terminate())
    assert new_master.cmdline()[1:3] == ["-m", "webhook.web.gunicorn_run"]
    os.kill(server.pid, signal.SIGTERM)  # the old master leaves; the new one serves on
    assert server.wait(STOP_TIMEOUT_SECONDS) == 0, server.tail()
    assert "Master has been promoted" in wait_for_output(server, "promoted", STOP_TIMEOUT_SECONDS)
    status, body = http_request(port, "GET", "/healthz")
    assert (status, body) == (200, {"status": "ok"})
    new_master.terminate()
    new_master.wait(STOP_TIMEOUT_SECONDS)
    assert "Traceback" not in server.output()
