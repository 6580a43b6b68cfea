"""Fixtures for the pipeline tests."""

from collections import Counter
from typing import Any

import pytest

from webhook.pipeline import replay
from webhook.pipeline.subscription_batch import replay_subscription_run


@pytest.fixture
def batched_events(monkeypatch) -> Counter:
    """Counts the events the batch path applied (it still does all the work)."""
    counts: Counter = Counter()

    def counting(*args: Any, **kwargs: Any):
        results = replay_subscription_run(*args, **kwargs)
        counts["events"] += len(results or [])
        counts["failed"] += sum(r.outcome.status == "failed" for r in results or [])
        return results

    monkeypatch.setattr(replay, "replay_subscription_run", counting)
    return counts
