"""The tests' name for the event builder, which lives in webhook.fixtures (trigger uses it)."""

from webhook.fixtures import *  # noqa: F403
from webhook.fixtures import (  # noqa: F401  (names star-import would skip or tests use)
    API_VERSIONS,
    BASIL_API,
    DAY,
    ENDIVE_API,
    MONTH,
    OLD_API,
    Delivery,
    EventFactory,
    encode,
    is_basil_or_later,
    lifecycle,
    sign,
)
