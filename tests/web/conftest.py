"""Fixtures of the web tests."""

from collections.abc import Iterator

import pytest

from webhook.database.pool import Database


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    """A small pool on this test's database, as a web worker has."""
    database = Database(db_url, min_size=1, max_size=4, timeout=5)
    yield database
    database.close()
