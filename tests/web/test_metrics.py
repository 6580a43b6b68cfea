"""GET /metrics: Prometheus text with event, signature and inbox figures."""

import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import psycopg
from servers import base_env, free_port
from stripe_events import sign
from webhook_support import SECRET, StripeSender

from webhook.pipeline import inbox
from webhook.pipeline.drain import queued
from webhook.stripe.payloads import parse_event


def scrape(client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return response.get_data(as_text=True)


def value(text: str, name: str, **labels: str) -> float:
    """One sample's value (0 when absent: counters start unseen)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if match and match[1] == name and ",".join(sorted((match[2] or "").split(","))) == wanted:
            return float(match[3])
    return 0.0


def test_events_are_counted_by_type_and_outcome(client, stripe, factory) -> None:
    before = scrape(client)
    delivery = factory.other("charge.succeeded")
    stripe.send_all([delivery, delivery])
    after = scrape(client)
    for outcome in ("ignored", "duplicate"):
        labels = {"type": "charge.succeeded", "outcome": outcome}
        assert (
            value(after, "webhook_events_total", **labels)
            == value(before, "webhook_events_total", **labels) + 1
        )
    count = "webhook_processing_seconds_count"
    assert value(after, count) == value(before, count) + 2


def test_signature_failures_are_counted_by_reason(client, factory) -> None:
    before = scrape(client)
    body = factory.other().body
    client.post("/webhook", data=body, headers={"Stripe-Signature": sign(body, "whsec_wrong")})
    client.post("/webhook", data=body)
    after = scrape(client)
    for reason in ("mismatch", "missing"):
        assert value(after, "webhook_signature_failures_total", reason=reason) == (
            value(before, "webhook_signature_failures_total", reason=reason) + 1
        )


def test_the_oldest_failed_event_age_comes_from_the_inbox(
    conn, client, stripe, factory, plans
) -> None:
    assert value(scrape(client), "webhook_oldest_failed_event_age_seconds") == 0
    failing = factory.checkout_completed(
        customer="cus_1", subscription=None, client_reference_id=None
    )
    stripe.send_all([failing])
    conn.execute("update webhook_private.events set received_at = now() - interval '1 hour'")
    text = scrape(client)
    assert value(text, "webhook_oldest_failed_event_age_seconds") >= 3600
    assert value(text, "webhook_inbox_events", status="failed") == 1
    assert "webhook_db_pool_connections_in_use" in text
    assert SECRET not in text


def test_monitors_give_up_in_time_while_a_migration_holds_the_inbox(db_url, client) -> None:
    """A migration holding the inbox must not keep /readyz and /metrics (and with them the
    pool's connections) waiting for as long as it runs."""
    answers: dict[str, object] = {}

    def probe() -> None:
        answers["ready"] = client.get("/readyz")
        answers["metrics"] = client.get("/metrics")

    with psycopg.connect(db_url) as migration:
        migration.execute("lock table webhook_private.events in access exclusive mode")
        prober = threading.Thread(target=probe)
        prober.start()
        prober.join(timeout=30)
        assert not prober.is_alive(), "the monitors waited for the migration"
    ready, metrics = answers["ready"], answers["metrics"]
    assert ready.status_code == 503
    assert ready.get_json() == {"status": "unavailable", "reason": "database unavailable"}
    assert metrics.status_code == 200 and b"webhook_inbox_events{" not in metrics.data
    assert client.get("/readyz").status_code == 200  # the migration is over


def test_the_queue_is_seen_in_metrics_and_readyz(conn, app, client, factory) -> None:
    """webhook_inbox_events{status="received"} is the queue; its lag and the wait are shown."""
    stripe = StripeSender(client, drain=False)
    stripe.send_all([factory.other("charge.succeeded") for _ in range(3)])
    conn.execute("update webhook_private.events set received_at = now() - interval '2 minutes'")
    before = scrape(client)
    assert value(before, "webhook_inbox_events", status="received") == 3
    assert value(before, "webhook_queue_lag_seconds") >= 120
    ready = client.get("/readyz")
    assert ready.status_code == 200  # a lag never takes the instance out of the balancer
    assert ready.get_json()["queue_lag_seconds"] >= 120

    app.extensions["webhook"].drain.until_empty()
    after = scrape(client)
    assert value(after, "webhook_inbox_events", status="received") == 0
    assert value(after, "webhook_queue_lag_seconds") == 0
    waited = "webhook_received_to_applied_seconds_count"
    assert value(after, waited) == value(before, waited) + 3
    slow = "webhook_received_to_applied_seconds_bucket"
    assert value(after, slow, le="60.0") == value(before, slow, le="60.0")  # all waited >60 s
    assert value(after, "webhook_events_received_total", type="charge.succeeded") >= 3


def test_a_drain_of_its_own_serves_what_it_applied(db_url, conn, factory) -> None:
    """With WEB_DRAIN=off and a `worker:` line, the web workers count none of the applying;
    `drain --metrics-port` shows it: outcomes by type, received→applied time, the inbox."""
    port = free_port()
    env = base_env(DATABASE_URL=db_url, STRIPE_WEBHOOK_SECRET=SECRET, HOST="127.0.0.1")
    drain = subprocess.Popen(
        [sys.executable, "-m", "webhook", "drain", "--metrics-port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for _ in range(3):
            delivery = factory.other("charge.succeeded")
            inbox.receive(conn, parse_event(delivery.event, delivery.body.decode()))
        deadline = time.monotonic() + 30
        while queued(conn) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not queued(conn)
        text = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
                if value(text, "webhook_events_total", type="charge.succeeded", outcome="ignored"):
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert value(text, "webhook_events_total", type="charge.succeeded", outcome="ignored") == 3
        assert value(text, "webhook_received_to_applied_seconds_count") == 3
        assert value(text, "webhook_inbox_events", status="received") == 0
        assert value(text, "process_resident_memory_bytes") > 0
        assert "webhook_processing_seconds" not in text  # request metrics: the web's alone
    finally:
        drain.send_signal(signal.SIGTERM)
        _, errors = drain.communicate(timeout=30)
    assert drain.returncode == 0, errors
    assert "Traceback" not in errors


def test_a_drain_whose_metrics_port_is_taken_says_so_in_one_line(db_url) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = base_env(DATABASE_URL=db_url, HOST="127.0.0.1")
        done = subprocess.run(
            [sys.executable, "-m", "webhook", "drain", "--metrics-port", str(port)],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"Error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    ]


def test_a_drain_whose_metrics_folder_is_missing_says_so_in_one_line(db_url, tmp_path) -> None:
    """prometheus_client's first count in a missing PROMETHEUS_MULTIPROC_DIR was a
    FileNotFoundError traceback."""
    missing = tmp_path / "missing"
    env = base_env(DATABASE_URL=db_url, HOST="127.0.0.1", PROMETHEUS_MULTIPROC_DIR=str(missing))
    done = subprocess.run(
        [sys.executable, "-m", "webhook", "drain", "--once", "--metrics-port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(
        f"Error: PROMETHEUS_MULTIPROC_DIR must be an existing folder, got '{missing}'"
    )


def test_loading_the_cli_leaves_prometheus_unimported() -> None:
    """prometheus_client fixes in-memory or multiprocess values when first imported, and
    `serve` sets PROMETHEUS_MULTIPROC_DIR in gunicorn's master after loading the CLI: were
    the CLI to import it, each worker of `make dev` would count on its own, and /metrics
    would show one worker's counts per scrape."""
    check = "import sys, webhook.cli; print('prometheus_client' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
