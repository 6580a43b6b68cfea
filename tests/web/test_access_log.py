"""webhook/web/access_log.py: one JSON line per request, whatever the path holds."""

import json

import pytest

from webhook.web import gunicorn_config
from webhook.web.access_log import JsonSafeAtoms


@pytest.mark.parametrize(
    "path", ["/webhook", '/nl\n{"log":"stripe_event"}', '/quote"back\\slash', "/tab\tbell\x07"]
)
def test_the_access_line_is_one_json_object_with_the_path_as_it_came(path: str) -> None:
    """A percent-decoded path (`/nl%0a...`) used to break the line in two."""
    atoms = JsonSafeAtoms({"m": "GET", "U": path, "s": "404", "M": 3})
    line = gunicorn_config.access_log_format % atoms
    assert "\n" not in line
    assert json.loads(line) == {"log": "access", "method": "GET", "path": path,
                                "status": 404, "ms": 3}  # fmt: skip


def test_the_web_line_uses_it() -> None:
    assert gunicorn_config.logger_class == "webhook.web.access_log.AccessLogger"
