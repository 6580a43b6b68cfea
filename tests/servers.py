"""Real server processes for tests: a free port on 127.0.0.1, bounded waits, always stopped.

Each process runs in its own session (so a stray worker can be stopped with the group),
writes stdout and stderr to a log file the test can read, and is stopped by `stop()`:
SIGTERM to the group, then SIGKILL if it does not go within a few seconds.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

HOST = "127.0.0.1"
REQUEST_TIMEOUT_SECONDS = 10.0

# What the Procfile's web line runs (gunicorn, once WEB_CONCURRENCY is checked), with this
# interpreter.
GUNICORN_COMMAND = (
    sys.executable, "-m", "webhook.web.gunicorn_run",
    "--config", "python:webhook.web.gunicorn_config", "webhook.web.app:create_app()",
)  # fmt: skip


def free_port() -> int:
    """A port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def closed_port() -> int:
    """A port nothing listens on (free_port, never bound again by this test)."""
    return free_port()


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any]:
    """One HTTP request to 127.0.0.1:port; (status, decoded JSON body or raw text)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_SECONDS)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw or b"null")
        except ValueError:
            return response.status, raw.decode("utf-8", "replace")
    finally:
        conn.close()


@dataclass
class ServerProcess:
    """A started process with its log; `stop()` is safe to call any number of times."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        """Everything the process wrote so far."""
        if not self.log_file.closed:
            self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def tail(self, chars: int = 4000) -> str:
        return self.output()[-chars:]

    def send(self, signum: int) -> None:
        """Signal the process itself (not its group), as a supervisor would."""
        if self.running():
            self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int | None:
        """The exit code once it exits within `timeout` seconds, else None."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def wait_for(self, port: int, path: str, *, status: int = 200, timeout: float) -> Any:
        """Poll GET path until it answers `status`; fail with the log if it does not in time."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(
                    f"{self.name} exited with {self.popen.returncode} before {path} answered"
                    f" {status}:\n{self.tail()}"
                )
            try:
                got, body = request(port, "GET", path)
                if got == status:
                    return body
                last = (got, body)
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        raise AssertionError(
            f"{self.name}: {path} did not answer {status} within {timeout:g}s (last: {last!r})"
            f":\n{self.tail()}"
        )

    def stop(self) -> None:
        """Stop the whole process group (TERM, then KILL) and close the log."""
        for signum, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            if self.running():
                _signal_group(self.pid, signum)
                self.wait(grace)
        # Workers left behind by a leader that is already gone.
        _signal_group(self.pid, signal.SIGKILL)
        if not self.log_file.closed:
            self.log_file.close()


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def start(
    name: str,
    command: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_dir: Path,
) -> ServerProcess:
    """Start `command` in its own session with its output going to log_dir/<name>.log."""
    log_path = log_dir / f"{name.replace(' ', '-')}.log"
    log_file = log_path.open("wb")
    try:
        popen = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except BaseException:
        log_file.close()
        raise
    return ServerProcess(name, popen, log_path, log_file)


def base_env(**overrides: str | None) -> dict[str, str]:
    """This environment without the project's variables, plus `overrides` (None removes)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "STRIPE_WEBHOOK_SECRET", "EMBEDDED_PGDATA", "PORT")
    }
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def wait_until_applied(conn: Any, event_ids: Sequence[str], timeout: float = 15.0) -> None:
    """Wait (bounded) until a running server's drain has applied these events."""
    deadline = time.monotonic() + timeout
    while True:
        waiting = conn.execute(
            "select count(*) from webhook_private.events where id = any(%s)"
            " and status = 'received'",
            (list(event_ids),),
        ).fetchone()[0]
        stored = conn.execute(
            "select count(*) from webhook_private.events where id = any(%s)", (list(event_ids),)
        ).fetchone()[0]
        if waiting == 0 and stored == len(set(event_ids)):
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{waiting} of {len(event_ids)} event(s) still queued after {timeout}s"
            )
        time.sleep(0.02)
