"""`make bench`: the webhook's production path under load, against PostgreSQL's own floor
and against the peer a Supabase user would pick instead, @supabase/stripe-sync-engine.

Phases, each on a freshly seeded database:
1. 1 000 customers: a concurrency sweep with wrk. Each step measures events *applied* per
   second, from the first request until the queue is empty, with the CPU each event cost
   the app (requests and drains) and PostgreSQL; the peer gets the same request file, on
   its own database on the same server. Then the pgbench floor at the app's connection
   count, and a fixed-rate run at 70% of the best rate for the latency of the 200s and of
   received→applied. Then requests alone (no drain): the ceiling of any applied rate.
2. 1 000 000 customers and 1 000 000 old inbox events: the same sweep, without the peer.
3. Memory: worker RSS sampled across a long run (200 000 events by default).
4. A month-start burst: 100 000 renewal-mix events offered at twice the drain rate.
5. A backlog: requests alone on an empty queue and with 1 000 000 events waiting, the
   monitors read meanwhile, then the drains working through it under load.
6. Operator commands: `reconcile` and `replay --failed` over 100 000 rows each.
7. `sync` of 100 000 subscriptions from the Stripe stand-in at Stripe's rate limit.
Results go to bench/results/ as results.md, results.json and chart.png.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import measure, peer, report  # noqa: E402
from bench.backlog_phase import BacklogRun, measure_backlog  # noqa: E402
from bench.operators import measure_operators  # noqa: E402
from bench.sync_phase import measure_sync  # noqa: E402
from bench.workload import Mix, deliveries, seed, write_wrk_files  # noqa: E402

# The comparison with the peer: nine in ten subscription updates, one in ten charges.
STEADY = Mix(updates=0.9, renewals=0.0)
# The start of a month: renewals (invoice.paid) and subscription updates, some charges.
MONTH_START = Mix(updates=0.45, renewals=0.45)
from webhook.database import migrations  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WORK = RESULTS / "work"
PGBENCH_SCRIPT = WORK / "pgbench_event.sql"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="Short runs and small data (a smoke test)."
    )
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")))
    parser.add_argument("--pool", type=int, default=4, help="Pool connections per worker.")
    parser.add_argument(
        "--threads", type=int, default=int(os.environ.get("WEB_THREADS", "8")),
        help="Request threads per worker (the gunicorn config's default).",
    )  # fmt: skip
    args = parser.parse_args()
    plan = Plan.quick() if args.quick else Plan.full()
    WORK.mkdir(parents=True, exist_ok=True)
    _write_pgbench_script()
    admin_url, postmaster_pid = _database()
    results: dict = {
        "machine": _machine(),
        "plan": asdict(plan),
        "mix": STEADY.describe(),
        "burst_mix": MONTH_START.describe(),
    }
    started = time.monotonic()

    folder = peer.install(WORK / "peer")
    results["peer_versions"] = peer.versions(folder)
    peer_url = _empty_database(admin_url, "webhook_bench_peer")
    peer.migrate(folder, peer_url)
    small = _fresh_database(admin_url, "webhook_bench_small", plan.small_customers, 0)
    results["small"] = _load_phase(
        small, postmaster_pid, plan, args, sweep=plan.sweep, label="small",
        peer_at=(folder, peer_url),
    )  # fmt: skip
    large = _fresh_database(admin_url, "webhook_bench_large", plan.large_customers, plan.old_events)
    results["large"] = _load_phase(
        large, postmaster_pid, plan, args, sweep=plan.sweep, label="large", fixed_rate=False
    )
    best = results["small"]["best_connections"]
    results["ingest_only"] = _ingest_only(small, postmaster_pid, plan, args, best)
    results["memory"] = _memory_phase(small, postmaster_pid, plan, args, best)
    burst = _fresh_database(admin_url, "webhook_bench_burst", plan.small_customers, 0)
    best_answered = max(r["rate"] for r in results["small"]["runs"])
    results["burst"] = _burst_phase(
        burst, postmaster_pid, plan, args, 2 * results["small"]["best_rate"], best_answered
    )
    results["backlog"] = _backlog_phase(admin_url, postmaster_pid, plan, args, best)
    ops = _fresh_database(admin_url, "webhook_bench_ops", plan.operator_rows, 0)
    results["operators"] = measure_operators(ops, plan.operator_rows)
    synced = _fresh_database(admin_url, "webhook_bench_sync", plan.sync_subscriptions, 0)
    results["sync"] = measure_sync(synced, plan.sync_subscriptions, WORK)
    results["seconds"] = round(time.monotonic() - started)

    (RESULTS / "results.json").write_text(json.dumps(results, indent=2))
    report.write_markdown(results, RESULTS / "results.md")
    report.write_chart(results, RESULTS / "chart.png")
    print((RESULTS / "results.md").read_text())


class Plan:
    """How big and how long: the full benchmark, or a quick smoke run."""

    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)

    @classmethod
    def full(cls) -> "Plan":
        return cls(sweep=(1, 2, 4, 8, 16, 32, 64), seconds=12, small_customers=1_000, large_customers=1_000_000,
                   old_events=1_000_000, memory_events=200_000, operator_rows=100_000,
                   sync_subscriptions=100_000, burst_events=100_000,
                   backlog_events=1_000_000)  # fmt: skip

    @classmethod
    def quick(cls) -> "Plan":
        return cls(sweep=(1, 4, 8), seconds=4, small_customers=1_000, large_customers=20_000,
                   old_events=20_000, memory_events=6_000, operator_rows=2_000,
                   sync_subscriptions=5_000, burst_events=5_000,
                   backlog_events=20_000)  # fmt: skip


def asdict(plan: Plan) -> dict:
    return dict(plan.__dict__)


def _database() -> tuple[str, int | None]:
    """The server to benchmark on: BENCH_DATABASE_URL, else the embedded one in .pgdata-bench."""
    url = os.environ.get("BENCH_DATABASE_URL", "").strip()
    if url:
        return url, None
    from webhook.database.embedded import embedded_server

    server = embedded_server(ROOT / ".pgdata-bench")
    return server.get_uri(), server.get_pid()


def _empty_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')
        admin.execute(f'create database "{name}"')
    params = conninfo_to_dict(admin_url)
    params["dbname"] = name
    return make_conninfo(**params)


def _fresh_database(admin_url: str, name: str, customers: int, old_events: int) -> str:
    print(f"seeding {name}: {customers:,} customers, {old_events:,} old events", flush=True)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')
        admin.execute(f'create database "{name}"')
    params = conninfo_to_dict(admin_url)
    params["dbname"] = name
    url = make_conninfo(**params)
    with psycopg.connect(url, autocommit=True) as conn:
        migrations.migrate(conn)
    seed(url, customers, old_events)
    return url


def _deliveries_file(
    name: str, count: int, customers: int, seed_value: int, threads: int = 2, mix: Mix = STEADY
) -> Path:
    """Deliveries for one wrk run, signed now, one file per wrk thread."""
    prefix = WORK / name
    items = deliveries(count, customers, seed_value=seed_value, mix=mix)
    write_wrk_files(prefix, items, threads=threads)
    return prefix


def _load_phase(
    url: str,
    postmaster_pid,
    plan: Plan,
    args,
    *,
    sweep,
    label: str,
    fixed_rate: bool = True,
    peer_at: tuple[Path, str] | None = None,
) -> dict:
    customers = plan.small_customers if label == "small" else plan.large_customers
    server = measure.Server(
        url, args.workers, WORK / f"gunicorn-{label}.log", args.pool, threads=args.threads
    )
    rival = (
        peer.PeerServer(peer_at[0], peer_at[1], args.workers, args.pool, WORK / "peer.log")
        if peer_at
        else None
    )
    runs, peer_runs = [], []
    try:
        for index, connections in enumerate(sweep):
            budget = int(measure.UNIQUE_EVENTS_PER_SECOND * plan.seconds * 1.3)
            threads = min(2, connections)
            prefix = _deliveries_file(
                f"{label}-c{connections}", budget, customers, 100 * index + 7, threads
            )
            run = measure.run_applied(server, url, prefix, connections=connections,
                                      seconds=plan.seconds, postmaster_pid=postmaster_pid,
                                      threads=threads)  # fmt: skip
            runs.append(run)
            line = (
                f"{label}: {connections} connections -> {run['applied_rate']:.0f} applied/s"
                f" ({run['rate']:.0f} answered/s, p99 {run['p99_ms']:.1f} ms)"
            )
            if rival is not None:  # the same file: the peer's database is its own
                theirs = measure.run_wrk(rival, prefix, connections=connections,
                                         seconds=plan.seconds, postmaster_pid=postmaster_pid,
                                         threads=threads)  # fmt: skip
                peer_runs.append(asdict_result(theirs))
                line += f"; peer {theirs.rate:.0f}/s (p99 {theirs.p99_ms:.1f} ms)"
            print(line, flush=True)
        best = max(runs, key=lambda r: r["applied_rate"])
        phase = {
            "customers": customers,
            "runs": runs,
            "best_connections": best["connections"],
            "best_rate": best["applied_rate"],
        }
        if peer_runs:
            peer_best = max(peer_runs, key=lambda r: r["rate"])
            phase["peer_runs"] = peer_runs
            phase["peer_best_rate"] = peer_best["rate"]
            phase["peer_best_connections"] = peer_best["connections"]
            phase["peer_speedup"] = best["applied_rate"] / peer_best["rate"]
            phase["peer_rows"] = peer.applied(peer_at[1]) if peer_at else 0
        if fixed_rate:
            phase["fixed_rate"] = _fixed_rate(
                server, url, postmaster_pid, plan, customers, runs, label
            )
        phase["worker_rss_mb"] = measure.rss_mb(server.workers())
    finally:
        server.stop()
        if rival is not None:
            rival.stop()
    pool_total = args.workers * args.pool
    phase["pgbench_connections"] = pool_total
    phase["pgbench_tps"] = measure.run_pgbench(url, PGBENCH_SCRIPT, connections=pool_total,
                                               seconds=plan.seconds, customers=customers)  # fmt: skip
    phase["ratio"] = phase["best_rate"] / phase["pgbench_tps"]
    print(
        f"{label}: pgbench floor {phase['pgbench_tps']:.0f} tps; ratio {phase['ratio']:.2f}"
        + (f"; {phase['peer_speedup']:.2f} x the peer" if "peer_speedup" in phase else ""),
        flush=True,
    )
    return phase


def _ingest_only(url: str, postmaster_pid, plan: Plan, args, connections: int) -> dict:
    """Requests alone, with no drain anywhere (WEB_DRAIN=off): the most events per second
    this machine can even receive and store, which no applied rate can exceed.

    The queue it leaves is applied afterwards by `python -m webhook drain --once`.
    """
    server = measure.Server(url, args.workers, WORK / "gunicorn-ingest.log", args.pool,
                            settings={"WEB_DRAIN": "off"}, threads=args.threads)  # fmt: skip
    try:
        threads = min(2, connections)
        budget = int(measure.UNIQUE_EVENTS_PER_SECOND * plan.seconds * 1.3)
        prefix = _deliveries_file("ingest", budget, plan.small_customers, 4242, threads)
        result = measure.run_wrk(server, prefix, connections=connections, seconds=plan.seconds,
                                 postmaster_pid=postmaster_pid, threads=threads)  # fmt: skip
    finally:
        server.stop()
    measure.apply_queue(url)
    print(
        f"ingest only: {result.rate:.0f} answered/s at {connections} connections,"
        f" p99 {result.p99_ms:.1f} ms",
        flush=True,
    )
    return asdict_result(result)


def _fixed_rate(server, url, postmaster_pid, plan, customers, runs, label) -> dict:
    """70% of the best applied rate, paced: latency of the 200s and of received→applied."""
    best = max(runs, key=lambda r: r["applied_rate"])
    target = 0.7 * best["applied_rate"]
    connections = _pacing_connections(runs, target)
    delay = _calibrate_delay(server, postmaster_pid, customers, connections, target, best["p50_ms"])
    prefix = _deliveries_file(
        f"{label}-fixed", int(target * plan.seconds * 1.5) + 1000, customers, seed_value=991
    )
    fixed = measure.run_applied(server, url, prefix, connections=connections, seconds=plan.seconds,
                                postmaster_pid=postmaster_pid, delay_ms=delay)  # fmt: skip
    if abs(fixed["rate"] - target) > 0.1 * target:  # the short trials were off: once more
        delay = _corrected_delay(connections, target, fixed["rate"], delay)
        prefix = _deliveries_file(f"{label}-fixed-again", int(target * plan.seconds * 1.5) + 1000,
                                  customers, seed_value=992)  # fmt: skip
        fixed = measure.run_applied(server, url, prefix, connections=connections,
                                    seconds=plan.seconds, postmaster_pid=postmaster_pid,
                                    delay_ms=delay)  # fmt: skip
    print(
        f"{label}: fixed rate {fixed['rate']:.0f}/s (target {target:.0f}) -> p99 {fixed['p99_ms']:.1f} ms,"
        f" received->applied p99 {fixed['applied_p99_ms']:.0f} ms",
        flush=True,
    )
    return {**fixed, "target_rate": target, "delay_ms": delay}


def _burst_phase(
    url: str, postmaster_pid, plan: Plan, args, offered_rate: float, ingest_rate: float
) -> dict:
    """A month-start burst: `burst_events` renewal-mix events offered at `offered_rate`.

    Every request must be answered 200 quickly while the queue grows; afterwards the queue
    must drain at no less than the steady rate, with worker memory flat.
    """
    server = measure.Server(
        url, args.workers, WORK / "gunicorn-burst.log", args.pool, threads=args.threads
    )
    try:
        connections = 16
        # Long enough to send every event even at the rate ingest reaches (below the offer
        # when the two cores are busy); wrk stops at the end of the file's events either way.
        seconds = max(2, round(plan.burst_events / min(offered_rate, ingest_rate)))
        delay = _calibrate_delay(server, postmaster_pid, plan.small_customers, connections,
                                 offered_rate, 5.0)  # fmt: skip
        measure.wait_drained(url)
        prefix = _deliveries_file("burst", plan.burst_events, plan.small_customers,
                                  seed_value=777, mix=MONTH_START)  # fmt: skip
        rss_before = measure.rss_mb(server.workers())
        run = measure.run_applied(server, url, prefix, connections=connections,
                                  seconds=seconds * 2, postmaster_pid=postmaster_pid,
                                  delay_ms=delay, once=True)  # fmt: skip
        rss_after = measure.rss_mb(server.workers())
    finally:
        server.stop()
    result = {**run, "offered_rate": offered_rate, "rss_before_mb": rss_before,
              "rss_after_mb": rss_after}  # fmt: skip
    print(
        f"burst: {run['requests']:,} events answered at {run['stored_rate']:.0f}/s (offered"
        f" {offered_rate:.0f}/s), p99 {run['p99_ms']:.1f} ms, {run['non_2xx']} not 200;"
        f" queue {run['queued_at_end']:,} at the end, drained at {run['tail_rate']:.0f}/s",
        flush=True,
    )
    return result


def _backlog_phase(admin_url: str, postmaster_pid, plan: Plan, args, connections: int) -> dict:
    """Ingest with `backlog_events` waiting (backlog_phase.py), on a database of its own
    that is dropped afterwards."""
    name = "webhook_bench_backlog"
    url = _fresh_database(admin_url, name, plan.small_customers, 0)
    run = BacklogRun(url=url, postmaster_pid=postmaster_pid, workers=args.workers,
                     pool=args.pool, threads=args.threads, connections=connections,
                     seconds=plan.seconds, customers=plan.small_customers, work=WORK)  # fmt: skip
    try:
        return measure_backlog(run, plan.backlog_events, STEADY)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')


def _pacing_connections(runs: list[dict], target: float) -> int:
    """The fewest connections that reached the target rate with 20% to spare, unpaced.

    A fixed rate offered over more connections than it needs only adds queueing inside
    the server: at 70% of the peak, the peak's own connection count measures the queue.
    """
    enough = [r["connections"] for r in runs if r["rate"] >= 1.2 * target]
    return min(enough) if enough else max(runs, key=lambda r: r["rate"])["connections"]


def _calibrate_delay(
    server, postmaster_pid, customers: int, connections: int, target: float, p50_ms: float
) -> float:
    """The per-request pause that makes `connections` paced connections offer `target`/s.

    wrk paces each connection (send, wait for the answer, pause); the answer time depends
    on the load, so the pause is corrected from up to three short trial runs.
    """
    cycle_ms = 1000 * connections / target  # each connection's time per request at the target
    delay = max(0.0, cycle_ms - p50_ms)
    for attempt in range(3):
        prefix = _deliveries_file(
            f"calibrate-{attempt}", int(target * 4 * 1.5) + 500, customers, 500 + attempt
        )
        trial = measure.run_wrk(server, prefix, connections=connections, seconds=3,
                                postmaster_pid=postmaster_pid, delay_ms=delay)  # fmt: skip
        if abs(trial.rate - target) <= 0.05 * target:
            break
        delay = _corrected_delay(connections, target, trial.rate, delay)
    return delay


def _corrected_delay(connections: int, target: float, measured: float, delay: float) -> float:
    """The pause that would have hit `target`, given the rate `delay` actually gave."""
    answer_ms = 1000 * connections / measured - delay  # what the server took per request
    return max(0.0, 1000 * connections / target - answer_ms)


def _memory_phase(url: str, postmaster_pid, plan: Plan, args, connections: int) -> dict:
    """Summed worker RSS, sampled every 2 s while `memory_events` unique events go through."""
    prefix = _deliveries_file("memory", plan.memory_events, plan.small_customers, seed_value=4242)
    server = measure.Server(
        url, args.workers, WORK / "gunicorn-memory.log", args.pool, threads=args.threads
    )
    samples: list[tuple[int, list[float]]] = []
    command = ["wrk", "-t", "2", "-c", str(connections), "-d", "3600s", "-s", str(measure.LUA),
               f"{server.url}/webhook", "--", str(prefix)]  # fmt: skip
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            count = "select count(*) from webhook_private.events"
            before = conn.execute(count).fetchone()[0]
            load = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                # wrk would repeat the file once it ran out, so stop it on the stored count.
                while load.poll() is None:
                    stored = conn.execute(count).fetchone()[0] - before
                    samples.append((stored, measure.rss_mb(server.workers())))
                    if stored >= plan.memory_events:
                        break
                    time.sleep(2)
            finally:
                load.terminate()
                load.wait()
    finally:
        server.stop()
    print(
        f"memory: {len(samples)} samples over {samples[-1][0] if samples else 0} events", flush=True
    )
    return {"events": plan.memory_events, "samples": samples}


def _write_pgbench_script() -> None:
    """The minimal SQL per event: store it (a real payload), update the customer's plan."""
    _, body = next(deliveries(1, 1, seed_value=3))
    # ": " after each key, so that pgbench does not read `:name` inside the JSON as a variable.
    payload = json.dumps(json.loads(body), separators=(", ", ": ")).replace("'", "''")
    PGBENCH_SCRIPT.write_text(
        "\\set c random(1, :customers)\n"
        "\\set p random(1, 3)\n"
        "BEGIN;\n"
        "INSERT INTO webhook_private.events (id, type, stripe_created, object_id, payload, status)"
        f" VALUES ('evt_pgb_' || gen_random_uuid(), 'customer.subscription.updated', now(),"
        f" 'sub_b' || :c, '{payload}', 'processed');\n"
        "UPDATE public.customer SET plan_id = :p WHERE uuid = md5('bench-' || :c)::uuid;\n"
        "COMMIT;\n"
    )


def asdict_result(result: measure.LoadResult) -> dict:
    return {**result.__dict__, "rate": result.rate}


def _machine() -> dict:
    import psutil

    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
