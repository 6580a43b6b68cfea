"""Where one event's time goes: statements per event type and a pyinstrument profile.

Runs the real app in-process (Flask's test client) on a freshly seeded database and counts
every statement psycopg sends, per event type. `python bench/profile.py [events]`.
"""

import collections
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from bench.run import _fresh_database  # noqa: E402
from bench.workload import SECRET, deliveries  # noqa: E402
from webhook.database.embedded import embedded_server  # noqa: E402
from webhook.web.app import create_app  # noqa: E402

STATEMENTS: collections.Counter = collections.Counter()


_execute = psycopg.Connection.execute


def counting_execute(self, query, params=None, **kwargs):
    """Connection.execute, counting: every call is one statement sent to the server."""
    STATEMENTS["n"] += 1
    return _execute(self, query, params, **kwargs)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    server = embedded_server(ROOT / ".pgdata-bench")
    url = _fresh_database(server.get_uri(), "webhook_bench_profile", 1000, 0)
    psycopg.Connection.execute = counting_execute
    app = create_app(
        {
            "DATABASE_URL": url,
            "STRIPE_WEBHOOK_SECRET": SECRET,
            "STRIPE_WEBHOOK_TOLERANCE": "10000000",
        }
    )
    client = app.test_client()
    logging.getLogger("webhook.events").disabled = True  # the profile, not one line per event
    items = list(deliveries(count, 1000, seed_value=11))
    per_type: dict[str, list[int]] = collections.defaultdict(list)
    from pyinstrument import Profiler

    profiler = Profiler()
    started = time.perf_counter()
    profiler.start()
    for signature, body in items:
        before = STATEMENTS["n"]
        response = client.post("/webhook", data=body, headers={"Stripe-Signature": signature})
        assert response.status_code == 200, response.get_json()
        per_type[json.loads(body)["type"]].append(STATEMENTS["n"] - before)
    profiler.stop()
    elapsed = time.perf_counter() - started
    print(f"{count} events in {elapsed:.1f} s: {count / elapsed:.0f}/s on one thread")
    for kind, counts in sorted(per_type.items()):
        print(
            f"  {kind:<32} {sum(counts) / len(counts):5.1f} statements per event ({len(counts)} events)"
        )
    print(profiler.output_text(unicode=False, color=False, show_all=False))


if __name__ == "__main__":
    main()
