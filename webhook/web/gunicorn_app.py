"""gunicorn run in-process (`python -m webhook serve`) with the project's config module.

Imported only to serve: gunicorn reads WEB_CONCURRENCY when it is imported, and every
other command must work (or fail in one line) whatever that variable holds.
"""

from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from webhook.web import gunicorn_config

# The settings of gunicorn_config that `serve` takes over as they are.
_TAKEN_OVER = (
    "worker_class", "threads", "timeout", "graceful_timeout", "keepalive",
    "control_socket_disable", "accesslog", "access_log_format", "child_exit",
    "post_worker_init", "worker_exit", "on_starting", "on_exit",
)  # fmt: skip


class GunicornServer(BaseApplication):
    """gunicorn with the project's config module and the app factory; `options` (bind,
    workers) on top."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key in _TAKEN_OVER:
            self.cfg.set(key, getattr(gunicorn_config, key))
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        from webhook.web.app import create_app

        return create_app()
