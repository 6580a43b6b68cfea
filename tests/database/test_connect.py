"""webhook/database/connect.py: the options every connection of the service gets for
noticing a database host that vanished (tests/faults/test_fault_database_vanishes.py
shows what they are for)."""

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from webhook.core.config import DEFAULT_ENTITLED_STATUSES
from webhook.database.connect import DEAD_PEER_OPTIONS, connect, dead_peer_options
from webhook.database.pool import Database
from webhook.pipeline.drain_worker import DrainWorker
from webhook.pipeline.processor import ProcessingRules


def options_of(conn: psycopg.Connection) -> dict[str, str]:
    """The connection's libpq options, as libpq itself reports them."""
    given = conninfo_to_dict(conn.info.dsn)
    return {key: given.get(key, "") for key in DEAD_PEER_OPTIONS}


def test_a_url_without_them_gets_them_all() -> None:
    assert dead_peer_options("postgresql://u@db.example.test/app") == DEAD_PEER_OPTIONS
    assert dead_peer_options("host=db.example.test dbname=app") == DEAD_PEER_OPTIONS


def test_a_url_keeps_its_own_values() -> None:
    url = "postgresql://u@db.example.test/app?keepalives_idle=60&tcp_user_timeout=0"
    added = dead_peer_options(url)
    assert "keepalives_idle" not in added and "tcp_user_timeout" not in added
    assert added["keepalives_count"] == "3"


def test_a_url_libpq_cannot_read_gets_none() -> None:
    # Connecting then fails with libpq's own message about the URL.
    assert dead_peer_options("postgresql://u@db.example.test/app?no_such_option=1") == {}


def test_every_kind_of_connection_carries_them(db_url) -> None:
    own = make_conninfo(db_url, keepalives_idle="42")
    expected = {**DEAD_PEER_OPTIONS, "keepalives_idle": "42"}
    with connect(own) as conn:
        assert options_of(conn) == expected
    database = Database(own, min_size=1, max_size=1, timeout=5)
    try:
        with database.connection() as conn:
            assert options_of(conn) == expected
    finally:
        database.close()
    rules = ProcessingRules(entitled_statuses=frozenset(DEFAULT_ENTITLED_STATUSES))
    drain = DrainWorker(own, rules)
    try:
        drain.until_empty()
        assert drain._conn is not None
        assert options_of(drain._conn) == expected
    finally:
        drain.stop()


def test_a_url_that_turns_them_off_or_names_a_service_gets_none() -> None:
    assert dead_peer_options("postgresql://u@db.example.test/app?keepalives=0") == {}
    assert dead_peer_options("service=billing") == {}
