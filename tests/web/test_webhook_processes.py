"""Two real app processes (gunicorn) against one database.

Stripe may deliver an event to two hosts at once (a retry overlapping a slow first attempt,
two replicas behind a load balancer). Locks in the database, not in a process, must make
each event count once and keep the in-order result; each process runs its own drain, and
the two share the queue. Each server is a separate gunicorn
process on 127.0.0.1 with its own connection pool; requests are real HTTP with real HMAC
signatures.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from servers import wait_until_applied
from stripe_events import API_VERSIONS, Delivery, EventFactory
from test_webhook_lifecycles import (
    Scenario,
    check_invariants,
    plan_name,
    reset,
    scenario_lifecycle,
)
from webhook_support import SECRET, outcome_rows

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
STARTUP_TIMEOUT_SECONDS = 20.0
REQUEST_TIMEOUT_SECONDS = 15.0


@dataclass
class Server:
    """One gunicorn process serving the app."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=REQUEST_TIMEOUT_SECONDS)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            conn.close()

    def post(self, delivery: Delivery) -> tuple[int, Any]:
        return self.request("POST", "/webhook", delivery.body, delivery.headers(SECRET))

    def log(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log_file.close()


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (all held until every one is chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_until_healthy(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(
                f"{server.name} exited with {server.process.returncode} before serving"
                f" /healthz:\n{server.log()}"
            )
        try:
            status, body = server.request("GET", "/healthz")
            if status == 200 and body == {"status": "ok"}:
                return
            last_error = AssertionError(f"/healthz answered {status} {body}")
        except OSError as exc:
            last_error = exc
        time.sleep(0.1)
    pytest.fail(
        f"{server.name} on port {server.port} not healthy within {STARTUP_TIMEOUT_SECONDS:g}s"
        f" ({last_error!r}):\n{server.log()}"
    )


@pytest.fixture
def servers(db_url: str, tmp_path: Path) -> Iterator[list[Server]]:
    """Two gunicorn processes (one worker each) on the test's database; always stopped."""
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "DB_POOL_MAX_SIZE": "4",
    }
    started: list[Server] = []
    try:
        for index, port in enumerate(free_ports(2)):
            log_path = tmp_path / f"gunicorn-{index}.log"
            log_file = log_path.open("wb")
            command = [
                sys.executable, "-m", "gunicorn", "--workers", "1", "--bind", f"{HOST}:{port}",
                "--graceful-timeout", "3", "webhook.web.app:create_app()",
            ]  # fmt: skip
            try:
                process = subprocess.Popen(
                    command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
                )
            except BaseException:
                log_file.close()
                raise
            started.append(Server(f"server {index}", port, process, log_path, log_file))
        for server in started:
            wait_until_healthy(server)
        yield started
    finally:
        for server in started:
            server.stop()


def post_all(server: Server, deliveries: Sequence[Delivery], start: threading.Barrier) -> list:
    """Post the deliveries one after another; (event id, status, body) for each."""
    start.wait(timeout=30)
    return [(d.id, *server.post(d)) for d in deliveries]


def two_lifecycles(user_ids: Sequence[Any]) -> list[Scenario]:
    """One lifecycle per API shape, for two users with their own Stripe customers."""
    return [
        scenario_lifecycle(EventFactory(api_version, seed=40 + i), str(user_id), f"cus_proc{i}")
        for i, (api_version, user_id) in enumerate(zip(API_VERSIONS, user_ids, strict=True))
    ]


def check_each_event_counted_once(results: list, scenario: Scenario, conn) -> None:
    """All answered 200, each event applied by exactly one process, stored once, no audit
    row written twice."""
    assert all(status == 200 for _, status, _ in results), [
        (event_id, status, body) for event_id, status, body in results if status != 200
    ]
    flags: dict[str, list[bool]] = {}
    for event_id, _, body in results:
        flags.setdefault(event_id, []).append(body["duplicate"])
    assert {e: sorted(f) for e, f in flags.items()} == {
        d.id: [False, True] for d in scenario.deliveries
    }
    wait_until_applied(conn, [d.id for d in scenario.deliveries])  # by the servers' drains
    check_invariants(conn, scenario, Counter({d.id: 2 for d in scenario.deliveries}))


def test_two_processes_apply_each_event_once_and_end_in_the_in_order_state(
    conn, plans, make_user, stripe, servers
) -> None:
    users = [make_user(), make_user()]
    scenarios = two_lifecycles(users)
    both = Scenario("two lifecycles", [step for s in scenarios for step in s.steps])
    events = both.deliveries

    # The expected rows: each lifecycle delivered once, in order, through the in-process app.
    for scenario, user in zip(scenarios, users, strict=True):
        for delivery, plan in scenario.steps:
            stripe.send_all([delivery])
            assert plan_name(conn, user, plans) == plan, delivery.type
    check_invariants(conn, both, Counter(d.id for d in events))
    expected = outcome_rows(conn)
    assert [row[1] for row in expected["customers"]] == [None, None]  # both ended cancelled
    assert sorted(row[2] for row in expected["subscriptions"]) == ["canceled", "canceled"]
    assert len(expected["links"]) == 2

    # One process gets everything in order, the other in reverse, at the same time.
    reset(conn)
    start = threading.Barrier(2)
    with ThreadPoolExecutor(max_workers=2) as pool:
        forward = pool.submit(post_all, servers[0], events, start)
        backward = pool.submit(post_all, servers[1], events[::-1], start)
        results = forward.result() + backward.result()
    check_each_event_counted_once(results, both, conn)
    assert outcome_rows(conn) == expected

    # Every event posted to both processes at the same instant, in Stripe's order.
    reset(conn)
    results = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for delivery in events:
            pair = threading.Barrier(2)
            futures = [pool.submit(post_all, server, [delivery], pair) for server in servers]
            results += [row for future in futures for row in future.result()]
    check_each_event_counted_once(results, both, conn)
    assert outcome_rows(conn) == expected
