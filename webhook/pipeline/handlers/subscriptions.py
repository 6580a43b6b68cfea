"""customer.subscription.*: link the customer its metadata names, then apply the event.

`metadata.customer_uuid` links as a new fact where the event sets it (the subscription's
creation, an update that changed it); any other event only restates it (accounts.link).

The decision itself (does the state replace the mirrored one, what plan follows) is made
in one place for every path, pipeline/subscription_batch.py; here the event is a batch of
one. A subscription whose Stripe customer is not linked yet (the subscription event beat
the checkout event) is kept in the mirror and applied the moment the link arrives.
"""

import dataclasses

from webhook.pipeline import subscription_batch
from webhook.pipeline.handlers.base import Context, Outcome
from webhook.rules import accounts
from webhook.stripe.payloads import metadata_customer_uuid, sets_customer_uuid


def handle_subscription(ctx: Context) -> Outcome:
    candidate = subscription_batch.candidate(ctx.event, ctx)
    stripe_customer = candidate.state.customer
    accounts.lock_stripe_customer(ctx.conn, stripe_customer)
    if (customer := metadata_customer_uuid(ctx.event.object)) is not None:
        linked = accounts.link(
            ctx.conn, stripe_customer, customer, ctx.event.id, ctx.event.created,
            restated=not sets_customer_uuid(ctx.event),
        )  # fmt: skip
        candidate = dataclasses.replace(candidate, linked=frozenset(linked))
    return subscription_batch.apply_one(ctx.conn, candidate, ctx)
