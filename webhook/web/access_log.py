"""gunicorn's access line (WEB_ACCESS_LOG=on) as one valid JSON object per request.

gunicorn only escapes double quotes in what it puts in the line, and its asyncio worker
hands over the path percent-decoded: `/x%0a{...}` wrote a raw newline, so one request made
two lines, the second of the client's choosing. Every text in the line is JSON-escaped
here instead.
"""

import json
from typing import Any

from gunicorn.glogging import Logger, SafeAtoms


class JsonSafeAtoms(SafeAtoms):
    """gunicorn's atoms, each text escaped as inside a JSON string."""

    def __init__(self, atoms: dict[str, Any]) -> None:
        dict.__init__(self)
        for key, value in atoms.items():
            self[key] = json.dumps(value)[1:-1] if isinstance(value, str) else value


class AccessLogger(Logger):
    """gunicorn's logger, with the access line's values escaped for JSON."""

    atoms_wrapper_class = JsonSafeAtoms
