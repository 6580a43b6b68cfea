"""bench/results/results.md and chart.png from the numbers run.py collected."""

from pathlib import Path

TARGETS = {
    "ratio": 0.6,
    "peer_speedup": 2.0,
    "p99_ms": 10.0,
    "applied_p99_ms": 1000.0,
    "burst_p99_ms": 25.0,
    "scale_ratio": 0.9,
    "rss_drift": 0.10,
    "operator_rate": 5000.0,
    "sync_ratio": 0.9,
    "backlog_ratio": 0.9,
}


def _mark(ok: bool) -> str:
    return "met" if ok else "**not met**"


def rss_drift(memory: dict) -> tuple[float, float, float]:
    """Summed worker RSS after warm-up (10% of the events) and at the end, and the change."""
    samples = [(sent, sum(sizes)) for sent, sizes in memory["samples"] if sizes]
    if len(samples) < 2:
        return 0.0, 0.0, 0.0
    warm = next((rss for sent, rss in samples if sent >= memory["events"] * 0.1), samples[0][1])
    last = samples[-1][1]
    return warm, last, (last - warm) / warm if warm else 0.0


def write_markdown(results: dict, path: Path) -> None:
    small, large, ops = results["small"], results["large"], results["operators"]
    fixed = small["fixed_rate"]
    machine = results["machine"]
    scale = large["best_rate"] / small["best_rate"]
    warm, last, drift = rss_drift(results["memory"])
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {machine['cpus']} cores ({machine['cpu_model']}), {machine['memory_gb']} GiB,"
        f" {machine['platform']}, Python {machine['python']}; PostgreSQL on the same host.",
        f"Workload: {results['mix']}; every event unique and signed. Whole run: {results['seconds']} s.",
        "Events/s are events *applied*, from the first request until the queue was empty.",
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    if "peer_speedup" in small:
        lines.append(
            f"| applied events/s ≥ 2 x @supabase/stripe-sync-engine in the same run |"
            f" {small['best_rate']:.0f} / {small['peer_best_rate']:.0f} = {small['peer_speedup']:.2f}"
            f" | {_mark(small['peer_speedup'] >= TARGETS['peer_speedup'])} |"
        )
    lines += [
        f"| applied events/s ≥ 0.6 x pgbench floor | {small['best_rate']:.0f} / {small['pgbench_tps']:.0f}"
        f" = {small['ratio']:.2f} | {_mark(small['ratio'] >= TARGETS['ratio'])} |",
        f"| p99 of the 200 ≤ 10 ms at 70% of max | {fixed['rate']:.0f} events/s over {fixed['connections']}"
        f" connections: p50 {fixed['p50_ms']:.1f}, p95 {fixed['p95_ms']:.1f}, p99 {fixed['p99_ms']:.1f} ms"
        f" | {_mark(fixed['p99_ms'] <= TARGETS['p99_ms'])} |",
        f"| received→applied p99 ≤ 1 s at that rate | p50 {fixed['applied_p50_ms']:.0f},"
        f" p99 {fixed['applied_p99_ms']:.0f} ms | {_mark(fixed['applied_p99_ms'] <= TARGETS['applied_p99_ms'])} |",
        *_burst_rows(results.get("burst"), small["best_rate"]),
        *_backlog_rows(results.get("backlog")),
        f"| ≥ 0.9 x throughput at {large['customers']:,} vs {small['customers']:,} customers |"
        f" {large['best_rate']:.0f} / {small['best_rate']:.0f} = {scale:.2f} | {_mark(scale >= TARGETS['scale_ratio'])} |",
        f"| worker RSS flat (±10%) across {results['memory']['events']:,} events | {warm:.0f} → {last:.0f} MiB"
        f" ({drift:+.1%}) | {_mark(abs(drift) <= TARGETS['rss_drift'])} |",
        f"| reconcile ≥ 5 000 rows/s over {ops['rows']:,} rows | {ops['reconcile_rate']:.0f} rows/s |"
        f" {_mark(ops['reconcile_rate'] >= TARGETS['operator_rate'])} |",
        f"| replay --failed ≥ 5 000 rows/s over {ops['rows']:,} rows | {ops['replay_rate']:.0f} rows/s |"
        f" {_mark(ops['replay_rate'] >= TARGETS['operator_rate'])} |",
        *_sync_rows(results.get("sync")),
        "",
        "## Throughput, latency and CPU per event by concurrency",
        "",
        "| customers | connections | applied/s | answered/s | p50 ms | p99 ms | app CPU ms/event |"
        " PostgreSQL CPU ms/event | peer events/s | peer p99 ms | peer CPU ms/event | peer PostgreSQL CPU ms/event |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    peer_by_connections = {r["connections"]: r for r in small.get("peer_runs", [])}
    for phase in (small, large):
        for run in phase["runs"]:
            theirs = peer_by_connections.get(run["connections"]) if phase is small else None
            peer_cells = (
                f"{theirs['rate']:.0f} | {theirs['p99_ms']:.1f} |"
                f" {1000 * theirs['app_cpu'] / max(theirs['requests'], 1):.2f} |"
                f" {1000 * theirs['postgres_cpu'] / max(theirs['requests'], 1):.2f}"
                if theirs
                else "- | - | - | -"
            )
            lines.append(
                f"| {phase['customers']:,} | {run['connections']} | {run['applied_rate']:.0f} |"
                f" {run['rate']:.0f} | {run['p50_ms']:.1f} | {run['p99_ms']:.1f} |"
                f" {run['app_cpu_ms']:.2f} | {run['postgres_cpu_ms']:.2f} | {peer_cells} |"
            )
    lines += [
        "",
        f"pgbench floor (store the event, update the customer's plan, triggers fire) at"
        f" {small['pgbench_connections']} connections: {small['pgbench_tps']:.0f} tps with"
        f" {small['customers']:,} customers, {large['pgbench_tps']:.0f} tps with {large['customers']:,}.",
        f"Worker RSS at the end of the load runs: {', '.join(f'{r:.0f}' for r in small['worker_rss_mb'])} MiB.",
        *_ingest_only_lines(results.get("ingest_only"), small),
        "",
        "![throughput and latency](chart.png)",
        "",
    ]
    path.write_text("\n".join(lines))


def _ingest_only_lines(ingest: dict | None, small: dict) -> list[str]:
    """The ceiling requests alone set: receiving and storing, with no drain running."""
    if not ingest:
        return []
    requests = max(ingest["requests"], 1)
    line = (
        f"Requests alone (WEB_DRAIN=off, nothing applied) at {ingest['connections']} connections:"
        f" {ingest['rate']:.0f} answered/s, p99 {ingest['p99_ms']:.1f} ms, app CPU"
        f" {1000 * ingest['app_cpu'] / requests:.2f} ms and PostgreSQL CPU"
        f" {1000 * ingest['postgres_cpu'] / requests:.2f} ms per request. No applied rate can"
        " exceed this"
    )
    if "peer_best_rate" in small:
        line += f" (2 x the peer would be {2 * small['peer_best_rate']:.0f}/s)"
    return ["", line + "."]


def _burst_rows(burst: dict | None, steady: float) -> list[str]:
    if not burst:
        return []
    before, after = sum(burst["rss_before_mb"]), sum(burst["rss_after_mb"])
    drift = (after - before) / before if before else 0.0
    answered = burst["non_2xx"] == 0 and burst["socket_errors"] == 0
    return [
        f"| burst of {burst['requests']:,} month-start events offered at {burst['offered_rate']:.0f}/s"
        f" (2 x the steady rate): every request 200, p99 ≤ 25 ms | answered at {burst['stored_rate']:.0f}/s,"
        f" {burst['non_2xx'] + burst['socket_errors']} not 200, p99 {burst['p99_ms']:.1f} ms |"
        f" {_mark(answered and burst['p99_ms'] <= TARGETS['burst_p99_ms'])} |",
        f"| after the burst the queue drains at ≥ the steady rate ({steady:.0f}/s), worker RSS flat |"
        + (
            f" {burst['queued_at_end']:,} queued at the end, drained at {burst['tail_rate']:.0f}/s;"
            if burst["queued_at_end"]
            else " the drains kept pace with what was stored: nothing queued at the end;"
        )
        + f" RSS {before:.0f} → {after:.0f} MiB ({drift:+.1%}) |"
        f" {_mark((not burst['queued_at_end'] or burst['tail_rate'] >= steady) and abs(drift) <= TARGETS['rss_drift'])} |",
    ]


def _backlog_rows(backlog: dict | None) -> list[str]:
    """A backlog must not slow storing: requests alone with it waiting against an empty
    queue; the monitors' reads and a run with the drains working through it, for context."""
    if not backlog:
        return []
    empty, full, drains = backlog["empty"], backlog["full"], backlog["with_drains"]
    gauge = full.get("received_gauge")
    counted = f"counted {gauge:,.0f} received" if gauge is not None else "had no received gauge"
    return [
        f"| a backlog of {backlog['backlog_events']:,} stored events does not slow ingest:"
        f" requests alone (WEB_DRAIN=off, {backlog['connections']} connections) with it waiting"
        f" ≥ 0.9 x on an empty queue | {full['rate']:.0f} / {empty['rate']:.0f} ="
        f" {backlog['ratio']:.2f} (p99 {full['p99_ms']:.1f} vs {empty['p99_ms']:.1f} ms); with it"
        f" waiting /metrics took {full['metrics_ms']:.0f} ms and {counted}, /readyz"
        f" {full['readyz_ms']:.0f} ms; drains on: {drains['rate']:.0f} answered/s, p99"
        f" {drains['p99_ms']:.1f} ms, while they applied the backlog at {drains['backlog_rate']:.0f}/s"
        f" | {_mark(backlog['ratio'] >= TARGETS['backlog_ratio'])} |",
    ]


def _sync_rows(sync: dict | None) -> list[str]:
    if not sync:
        return []
    return [
        f"| sync ≥ 0.9 x what Stripe's limit allows ({sync['rate_limit']:g} requests/s x 100 rows"
        f" = {sync['allowed_rate']:,.0f}/s) over {sync['subscriptions']:,} subscriptions |"
        f" {sync['import_rate']:,.0f}/s = {sync['ratio']:.2f} ({sync['rate_limited']} of"
        f" {sync['requests']} requests rate-limited; whole run incl. recomputing"
        f" {sync['plans_changed']:,} changed plans: {sync['seconds']:.1f} s;"
        f" sync RSS {sync['rss_warm_mb']:.0f} MiB after warm-up, {sync['rss_end_mb']:.0f} at the end)"
        f" | {_mark(sync['ratio'] >= TARGETS['sync_ratio'])} |",
    ]


def write_chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["small"]["runs"]
    connections = [r["connections"] for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    small, large = results["small"], results["large"]
    left.plot(connections, [r["applied_rate"] for r in runs], marker="o",
              label=f"webhook, {small['customers']:,} customers")  # fmt: skip
    left.plot([r["connections"] for r in large["runs"]],
              [r["applied_rate"] for r in large["runs"]],
              marker="s", label=f"webhook, {large['customers']:,} customers")  # fmt: skip
    peer_runs = small.get("peer_runs", [])
    if peer_runs:
        left.plot([r["connections"] for r in peer_runs], [r["rate"] for r in peer_runs],
                  marker="^", label="stripe-sync-engine")  # fmt: skip
    left.axhline(
        results["small"]["pgbench_tps"], color="grey", linestyle="--", label="pgbench floor"
    )
    left.set_xscale("log", base=2)
    left.set_xlabel("concurrent connections")
    left.set_ylabel("events applied/s")
    left.set_title("Throughput")
    left.legend()
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
        right.plot(connections, [r[key] for r in runs], marker="o", label=f"webhook {label}")
        if peer_runs:
            right.plot([r["connections"] for r in peer_runs], [r[key] for r in peer_runs],
                       marker="^", linestyle=":", label=f"peer {label}")  # fmt: skip
    right.set_xscale("log", base=2)
    right.set_xlabel("concurrent connections")
    right.set_ylabel("latency of the 200, ms")
    right.set_title("Latency")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
