"""What the web app is made of, built once from the settings (see app.create_app)."""

from dataclasses import dataclass

from webhook.core.config import Settings
from webhook.database.pool import Database
from webhook.pipeline.drain_worker import DrainWorker
from webhook.pipeline.processor import ProcessingRules
from webhook.stripe.signature import SignatureVerifier
from webhook.web.grouped_store import GroupedStore


@dataclass(frozen=True)
class Service:
    """Everything the endpoints need."""

    settings: Settings
    verifier: SignatureVerifier
    database: Database
    # Stores queued-mode deliveries, several concurrent ones per insert (see grouped_store).
    store: GroupedStore
    rules: ProcessingRules
    # Started by the gunicorn config in each worker (see gunicorn_config.post_worker_init).
    drain: DrainWorker

    def close(self) -> None:
        """Stop the drain and close the pool (tests; gunicorn's exit handlers otherwise)."""
        self.drain.stop()
        self.database.close()
