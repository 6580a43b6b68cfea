"""What replaying one event did, whichever path applied it."""

from dataclasses import dataclass

from webhook.pipeline.handlers.base import Outcome


@dataclass(frozen=True)
class ReplayResult:
    """One replayed event and the plan of its customer before and after."""

    event_id: str
    event_type: str
    outcome: Outcome
    plan_before: int | None
    plan_after: int | None
