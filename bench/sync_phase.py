"""The sync phase: `python -m webhook sync` against the Stripe stand-in, at Stripe's limit.

The account: one subscription per seeded customer (the database has each on Basic),
of which a tenth were canceled and a tenth upgraded to Enterprise without the webhook
hearing of it. The stand-in enforces 25 requests/s (Stripe's test-mode limit; 429 past
it) and the sync runs at that rate, so what the limit allows is 100 rows per page x 25
pages per second = 2,500 subscriptions/s: the target is 0.9 x that, i.e. Stripe, not this
service, is the bottleneck. The sync is a separate process, as an operator runs it; its
RSS is sampled throughout to show memory stays flat over 100,000 subscriptions.
"""

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from stripe_standin import API_KEY, StripeStandIn  # noqa: E402

from webhook.fixtures import EventFactory  # noqa: E402

RATE_LIMIT = 25.0
PAGE = 100


def account(customers: int) -> list[dict]:
    """What Stripe holds for the seeded customers (see bench/workload.seed)."""
    factory = EventFactory(start=int(time.time()) - 86_400)
    template = json.dumps(
        factory.subscription(
            "customer.subscription.updated", sub_id="sub_TEMPLATE", customer="cus_TEMPLATE",
            status="active", price_ids=["price_basic"],
        ).object
    )  # fmt: skip
    created = json.loads(template)["created"]
    subscriptions = []
    for i in range(1, customers + 1):
        price = "price_enterprise" if i % 10 == 5 else "price_basic"
        text = template.replace("sub_TEMPLATE", f"sub_b{i}").replace("cus_TEMPLATE", f"cus_b{i}")
        obj = json.loads(text.replace("price_basic", price))
        obj["status"] = "canceled" if i % 10 == 0 else "active"
        obj["created"] = created - i
        subscriptions.append(obj)
    return subscriptions


def measure_sync(url: str, customers: int, work: Path) -> dict:
    """One full sync over `customers` subscriptions; throughput, plans changed, memory."""
    standin = StripeStandIn(rate_limit=RATE_LIMIT)
    try:
        standin.add("subscription", account(customers))
        env = {**os.environ, "STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": standin.url}
        command = [sys.executable, "-m", "webhook", "--database-url", url, "sync",
                   "--rate", f"{RATE_LIMIT:g}"]  # fmt: skip
        log = work / "sync.log"
        started = time.monotonic()
        with log.open("w") as out:
            process = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
            )
            rss = _sample_rss(process)
            process.wait()
        seconds = time.monotonic() - started
        rss.join()
        output = log.read_text()
        if process.returncode != 0:
            raise RuntimeError(f"sync failed:\n{output[-2000:]}")
        rate_limited = sum(1 for entry in standin.answered() if entry.status == 429)
        requests = len(standin.answered())
    finally:
        standin.close()
    read = int(_find(r"subscriptions read: (\d+) \(", output))
    phase_rate = float(_find(r"subscriptions read: \d+ \(([\d,]+)/s\)", output).replace(",", ""))
    changed = int(_find(r"plans changed: (\d+)", output))
    allowed = RATE_LIMIT * PAGE
    samples = rss.samples or [0.0]
    warm = samples[len(samples) // 4]  # past start-up: imports loaded, pages flowing
    result = {
        "subscriptions": read,
        "rate_limit": RATE_LIMIT,
        "allowed_rate": allowed,
        "import_rate": phase_rate,
        "ratio": phase_rate / allowed,
        "seconds": seconds,
        "overall_rate": read / seconds,
        "plans_changed": changed,
        "requests": requests,
        "rate_limited": rate_limited,
        "rss_mb": samples,
        "rss_warm_mb": warm,
        "rss_end_mb": samples[-1],
        "rss_max_mb": max(samples),
    }
    print(
        f"sync: {read:,} subscriptions, import {phase_rate:,.0f}/s = {result['ratio']:.2f} x the"
        f" {allowed:,.0f}/s the limit allows; whole run {seconds:.1f}s; {changed:,} plans changed;"
        f" RSS {warm:.0f} MiB after warm-up, {samples[-1]:.0f} at the end, {max(samples):.0f} at most",
        flush=True,
    )
    return result


class _Sampler(threading.Thread):
    def __init__(self, process: subprocess.Popen) -> None:
        super().__init__(daemon=True)
        self.process = process
        self.samples: list[float] = []

    def run(self) -> None:
        try:
            handle = psutil.Process(self.process.pid)
            while self.process.poll() is None:
                self.samples.append(handle.memory_info().rss / 2**20)
                time.sleep(0.5)
        except psutil.Error:
            return


def _sample_rss(process: subprocess.Popen) -> _Sampler:
    sampler = _Sampler(process)
    sampler.start()
    return sampler


def _find(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"sync output lacks {pattern!r}:\n{text[-2000:]}")
    return match.group(1)
