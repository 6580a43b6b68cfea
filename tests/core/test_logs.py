"""webhook/core/logs.py: what an unexpected error's log line may carry."""

import logging

import psycopg
import pytest

from webhook.core.logs import log_unexpected

log = logging.getLogger("webhook.tests")


def test_a_database_error_is_logged_without_the_data_it_quotes(conn, caplog) -> None:
    """PostgreSQL's context line quotes the JSON it could not read, e-mail and all."""
    with pytest.raises(psycopg.DataError) as raised:
        conn.execute("select %s::json", ('{"email": "quoted@example.com", "n": NaN}',))
    assert "example.com" in str(raised.value)  # what log.exception would have written
    with caplog.at_level(logging.ERROR, logger="webhook"):
        try:
            raise raised.value
        except psycopg.Error:
            log_unexpected(log, "unexpected error")
    assert "database error 22P02: invalid input syntax for type json" in caplog.text
    assert "example.com" not in caplog.text


def test_any_other_error_is_logged_with_its_traceback(caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="webhook"):
        try:
            raise KeyError("missing")
        except KeyError:
            log_unexpected(log, "unexpected error")
    assert "Traceback" in caplog.text and "KeyError" in caplog.text
