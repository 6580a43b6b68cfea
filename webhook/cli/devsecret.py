"""The development signing secret: made once, kept in ./.dev-secret (git-ignored).

`make dev` without STRIPE_WEBHOOK_SECRET uses it, and `python -m webhook trigger` signs
with it, so offline test events verify against the local server across restarts.
"""

import os
import secrets
from pathlib import Path

DEV_SECRET_FILE = Path(".dev-secret")


def dev_secret(path: Path = DEV_SECRET_FILE) -> str:
    """The local development secret, created on first use."""
    try:
        value = path.read_text().strip()
        if value:
            return value
    except FileNotFoundError:
        pass
    value = "whsec_dev_" + secrets.token_hex(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def existing_dev_secret(path: Path = DEV_SECRET_FILE) -> str | None:
    """The local development secret if one was made, else None."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None
