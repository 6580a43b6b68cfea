"""Reading a subscription back from Stripe: only to break a tie the events cannot.

Two events of one subscription in the same second, with the same period, type and status
progress, cannot be ordered from their payloads. With STRIPE_API_KEY set, the processor
asks Stripe for the subscription's current state instead of guessing. Any failure falls
back to the deterministic tie-break, so an unreachable API never blocks a delivery.
"""

import logging
from collections.abc import Mapping
from typing import Any

import stripe

log = logging.getLogger(__name__)
REQUEST_TIMEOUT_SECONDS = 5


def fetch_subscription(
    api_key: str, subscription_id: str, api_base: str | None = None
) -> Mapping[str, Any] | None:
    """The subscription as Stripe has it now, or None when it cannot be had."""
    client = stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base} if api_base else None,
        max_network_retries=1,
        http_client=stripe.new_default_http_client(timeout=REQUEST_TIMEOUT_SECONDS),
    )
    try:
        return client.v1.subscriptions.retrieve(subscription_id).to_dict()
    except stripe.StripeError as exc:
        log.warning(
            "could not re-fetch subscription %s from Stripe: %s",
            subscription_id,
            type(exc).__name__,
        )
        return None
