"""Ingest with a backlog: a million stored events waiting, as after the drains were down.

The issue's bar: a backlog of a million events does not slow ingest. Storing a delivery
is one insert into the inbox; what could make it slower with a long queue is the queue's
own index (every received event has an entry), the table and its other indexes growing,
and the monitors (`/metrics`, `/readyz`) that read the queue on every scrape.

Three runs on one database, each `seconds` long at the same connection count, with the
steady mix:
1. requests alone (WEB_DRAIN=off) on an empty queue;
2. the same after `queue_backlog` has stored `count` waiting events: the ratio of the two
   is the figure; with the backlog still waiting, /metrics and /readyz are read and timed;
3. the drains on, working through the backlog while deliveries keep arriving: how fast
   deliveries are answered meanwhile and how many backlog events the drains applied.
The database is dropped afterwards (a million payloads are a few GiB).
"""

import re
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench import measure
from bench.workload import Mix, deliveries, queue_backlog, write_wrk_files

_RECEIVED_GAUGE = re.compile(r'^webhook_inbox_events\{status="received"\} (\S+)$', re.M)


@dataclass(frozen=True)
class BacklogRun:
    """Where and how the three runs go."""

    url: str
    postmaster_pid: int | None
    workers: int
    pool: int
    threads: int
    connections: int
    seconds: int
    customers: int
    work: Path


def measure_backlog(run: BacklogRun, count: int, mix: Mix) -> dict:
    """The three runs; a dict for results.json (rates, p99s, monitor timings)."""
    # A freshly seeded database answers its first seconds slower (its pages are not yet
    # cached, autovacuum looks at the new tables): a run that is not counted goes first.
    _requests_alone(run, "backlog-warm-up", seed_value=6100, mix=mix)
    empty = _requests_alone(run, "backlog-empty", seed_value=6101, mix=mix)
    measure.apply_queue(run.url)
    started = time.monotonic()
    queue_backlog(run.url, count, run.customers, mix)
    seeded_seconds = time.monotonic() - started
    full = _requests_alone(run, "backlog-full", seed_value=6102, mix=mix, read_monitors=True)
    drains = _with_drains(run, seed_value=6103, mix=mix)
    result = {
        "backlog_events": count,
        "seed_seconds": round(seeded_seconds, 1),
        "connections": run.connections,
        "empty": empty,
        "full": full,
        "ratio": full["rate"] / empty["rate"],
        "with_drains": drains,
    }
    print(
        f"backlog: requests alone {empty['rate']:.0f}/s on an empty queue, {full['rate']:.0f}/s"
        f" with {count:,} waiting (ratio {result['ratio']:.2f}; p99 {empty['p99_ms']:.1f} vs"
        f" {full['p99_ms']:.1f} ms); /metrics {full['metrics_ms']:.0f} ms, /readyz"
        f" {full['readyz_ms']:.0f} ms; drains on: {drains['rate']:.0f} answered/s, p99"
        f" {drains['p99_ms']:.1f} ms, backlog applied at {drains['backlog_rate']:.0f}/s",
        flush=True,
    )
    return result


def _requests_alone(
    run: BacklogRun, name: str, *, seed_value: int, mix: Mix, read_monitors: bool = False
) -> dict:
    prefix = _deliveries(run, name, seed_value, mix)
    server = measure.Server(run.url, run.workers, run.work / f"gunicorn-{name}.log", run.pool,
                            settings={"WEB_DRAIN": "off"}, threads=run.threads)  # fmt: skip
    try:
        result = _wrk(run, server, prefix)
        if read_monitors:
            result |= _monitors(server)
    finally:
        server.stop()
    return result


def _with_drains(run: BacklogRun, *, seed_value: int, mix: Mix) -> dict:
    waiting = "select count(*) from webhook_private.events where status = 'received'"
    prefix = _deliveries(run, "backlog-drains", seed_value, mix)
    with psycopg.connect(run.url, autocommit=True) as conn:
        server = measure.Server(
            run.url, run.workers, run.work / "gunicorn-backlog-drains.log", run.pool,
            threads=run.threads,
        )  # fmt: skip
        try:
            before = conn.execute(waiting).fetchone()[0]
            started = time.monotonic()
            result = _wrk(run, server, prefix)
            elapsed = time.monotonic() - started
            after = conn.execute(waiting).fetchone()[0]
        finally:
            server.stop()
    # What the drains applied while the run stored `requests` more: the backlog's oldest
    # events, since new ones queue behind it.
    applied = before + result["requests"] - after
    return {**result, "backlog_applied": applied, "backlog_rate": applied / elapsed}


def _deliveries(run: BacklogRun, name: str, seed_value: int, mix: Mix) -> Path:
    """A run's signed deliveries, written before its server starts (so that the drains'
    rate covers only the time deliveries arrive)."""
    prefix = run.work / name
    budget = int(measure.UNIQUE_EVENTS_PER_SECOND * run.seconds * 1.3)
    write_wrk_files(prefix, deliveries(budget, run.customers, seed_value=seed_value, mix=mix), 2)
    return prefix


def _wrk(run: BacklogRun, server: measure.Server, prefix: Path) -> dict:
    result = measure.run_wrk(server, prefix, connections=run.connections, seconds=run.seconds,
                             postmaster_pid=run.postmaster_pid)  # fmt: skip
    return {**result.__dict__, "rate": result.rate}


def _monitors(server: measure.Server) -> dict:
    """What a monitor reads with the backlog waiting, and how long each read takes."""
    started = time.perf_counter()
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    metrics_ms = 1000 * (time.perf_counter() - started)
    started = time.perf_counter()
    with urllib.request.urlopen(f"{server.url}/readyz", timeout=30) as answer:
        answer.read()
        readyz_status = answer.status
    readyz_ms = 1000 * (time.perf_counter() - started)
    gauge = _RECEIVED_GAUGE.search(text)
    return {
        "metrics_ms": metrics_ms,
        "readyz_ms": readyz_ms,
        "readyz_status": readyz_status,
        "received_gauge": float(gauge[1]) if gauge else None,
    }
