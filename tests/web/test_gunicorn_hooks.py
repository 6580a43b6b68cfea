"""gunicorn's worker hooks, called as gunicorn calls them."""

import gc
from types import SimpleNamespace

from webhook.web import gunicorn_config


def test_a_worker_keeps_what_it_loaded_out_of_full_collections() -> None:
    """Under load a full collection ran every few seconds and walked every module, class
    and function the worker had loaded (up to 100 ms with all request threads waiting);
    post_worker_init freezes them, so a full collection walks only what requests made."""
    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        worker = SimpleNamespace(wsgi=SimpleNamespace(extensions={}))  # no service: no drain

        gunicorn_config.post_worker_init(worker)

        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
