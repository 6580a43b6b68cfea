"""The database host vanishes without a word while Stripe keeps delivering.

Unlike a stopped PostgreSQL, which closes its connections, a host that goes away leaves
the service's connections open and silent: the store's insert waits for an answer that
never comes. The delivery still gets 503 in time (WEB_STORE_TIMEOUT_MS), but without TCP
keepalives and a user timeout the stuck insert, the drain's connection and every idle
pooled connection would wait for the system's two hours, and the worker would refuse
every delivery until then. With them (connect.DEAD_PEER_OPTIONS, shortened here through
the URL, which is also how an operator tunes them), TCP gives the connections up, and
once the database answers at its address again, Stripe's retries are accepted and the
end is the in-order one.
"""

from __future__ import annotations

import time

import psycopg
import pytest
from blackhole import Relay, available
from faultkit import (
    all_deliveries,
    check_invariant,
    histories,
    post,
    prepare,
    redeliver_until_accepted,
    shuffled,
)
from psycopg.conninfo import conninfo_to_dict, make_conninfo

STORE_TIMEOUT_MS = 500
# Probes after 1 s of silence, one a second; given up once 2 s pass without an answer to
# data or probes (on Linux the user timeout decides, keepalives_count elsewhere).
FAST_DEAD_PEER = {
    "keepalives_idle": "1",
    "keepalives_interval": "1",
    "keepalives_count": "2",
    "tcp_user_timeout": "2000",
}
CUT_SECONDS = 6.0  # longer than any connection through the relay takes to be given up


def through(relay: Relay, url: str, options: dict[str, str]) -> str:
    """`url` with the relay as its host and `options` added."""
    params = conninfo_to_dict(url)
    params.update(host="127.0.0.1", port=str(relay.port), **options)
    return make_conninfo(**params)


def upstream_of(conn: psycopg.Connection) -> str | tuple[str, int]:
    """Where the test server listens: its Unix socket, or its TCP address."""
    host, port = conn.info.host, conn.info.port
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)


def test_a_vanished_host_is_given_up_and_deliveries_resume_when_it_answers_again(
    db_url, conn, gunicorn, in_order
) -> None:
    reason = available()
    if reason:
        pytest.skip(reason)
    hs = histories(3, seed=71)
    expected = in_order(hs)
    prepare(db_url, hs)
    order = shuffled(all_deliveries(hs), seed=5)
    relay = Relay(upstream_of(conn))
    try:
        web = gunicorn(
            through(relay, db_url, FAST_DEAD_PEER),
            workers=1,
            WEB_STORE_TIMEOUT_MS=str(STORE_TIMEOUT_MS),
        )
        before = order[: len(order) // 2]
        cut, *after = order[len(order) // 2 :]
        assert {post(web.port, d).status for d in before} == {200}

        with relay.vanished():
            started = time.monotonic()
            first = post(web.port, cut)
            waited = time.monotonic() - started
            time.sleep(CUT_SECONDS)

        assert first.status == 503, first
        assert waited < 3  # the store's timeout, not TCP's
        # The host answers again: the next connections reach it, the dead ones are gone.
        redeliver_until_accepted([web.port], [cut, *after], within=30)
        check_invariant(conn, hs, expected)
    finally:
        relay.close()
