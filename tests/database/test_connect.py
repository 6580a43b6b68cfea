"""webhook/database/connect.py: the options every connection of the service gets for
noticing a database host that vanished (tests/faults/test_fault_database_vanishes.py
shows what they are for), and how a URL is shown without its password."""

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from webhook.core.config import DEFAULT_ENTITLED_STATUSES
from webhook.core.errors import ConfigError
from webhook.database.connect import (
    DEAD_PEER_OPTIONS,
    MISREAD_URL,
    check_readable,
    connect,
    dead_peer_options,
    mask_url,
    resolve_database_url,
)
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


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:s3cret@db.example.test:5432/app", "postgresql://u:***@db.example.test:5432/app"),
        ("postgresql://u:a%2Fb@db.example.test/app", "postgresql://u:***@db.example.test/app"),
        ("postgresql://u:pw@[::1]:5433/app", "postgresql://u:***@[::1]:5433/app"),
        ("postgresql://u:pw@h1:5432,h2:5433/app", "postgresql://u:***@h1:5432,h2:5433/app"),
        ("postgresql://u@db.example.test/app", "postgresql://u@db.example.test/app"),
        # libpq reads an unencoded # or ? as part of the password; urllib would cut there.
        ("postgresql://u:s3cr#et@db.example.test/app", "user=u password=*** dbname=app host=db.example.test"),
        ("postgresql://u:s3cr?et@db.example.test/app", "user=u password=*** dbname=app host=db.example.test"),
        ("postgresql:///app?host=/tmp&password=s3cr%23et", "password=*** dbname=app host=/tmp"),
        ("postgresql://u:pw@h/app?sslpassword=k3y", "user=u password=*** dbname=app host=h sslpassword=***"),
        ("host=h user=u password='s3 cret' dbname=app", "user=u password=*** dbname=app host=h"),
        ("postgresql://u@h/app?password=s3cret", "user=u password=*** dbname=app host=h"),
        ("postgresql://u:pw@h:notaport/app", "postgresql://u:***@h:notaport/app"),
        ("postgresql://u:pw@h]:5/app", "user=u password=*** dbname=app host=h] port=5"),
    ],
)  # fmt: skip
def test_a_url_is_shown_without_what_libpq_reads_as_its_secrets(url: str, shown: str) -> None:
    check_readable(url)
    assert mask_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:s3cr%et@db.example.test/app",  # not a percent-encoding libpq accepts
        "postgresql://u:s3cr/et@db.example.test:5432/app",  # libpq: host u, port s3cr
        "postgresql://u:s3cr@et@db.example.test/app",  # libpq: password s3cr, host et@…
        "postgresql://u:s3cr@[::1:5432/app",  # libpq's own message would quote it whole
    ],
)
def test_a_url_libpq_misreads_is_refused_and_never_shown(url: str, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="percent-encoded") as refused:
        check_readable(url)
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(ConfigError):
        resolve_database_url()
    assert mask_url(url) == MISREAD_URL
    for text in (str(refused.value), mask_url(url)):
        assert "s3cr" not in text and "et@" not in text
