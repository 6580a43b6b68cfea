"""The table of handled event types. Anything not listed is stored and marked ignored."""

from collections.abc import Callable

from webhook.pipeline.handlers.base import Context, Outcome
from webhook.pipeline.handlers.catalog import handle_price, handle_product
from webhook.pipeline.handlers.checkout import handle_checkout
from webhook.pipeline.handlers.customers import handle_customer, handle_customer_deleted
from webhook.pipeline.handlers.invoices import handle_invoice_paid, handle_payment_failed
from webhook.pipeline.handlers.subscriptions import handle_subscription
from webhook.stripe.payloads import Event

Handler = Callable[[Context], Outcome]

HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": handle_checkout,
    "checkout.session.async_payment_succeeded": handle_checkout,
    "customer.subscription.created": handle_subscription,
    "customer.subscription.updated": handle_subscription,
    "customer.subscription.deleted": handle_subscription,
    "customer.subscription.paused": handle_subscription,
    "customer.subscription.resumed": handle_subscription,
    "customer.subscription.trial_will_end": handle_subscription,
    "invoice.paid": handle_invoice_paid,
    "invoice.payment_succeeded": handle_invoice_paid,
    "invoice.payment_failed": handle_payment_failed,
    "customer.created": handle_customer,
    "customer.updated": handle_customer,
    "customer.deleted": handle_customer_deleted,
    "price.created": handle_price,
    "price.updated": handle_price,
    "price.deleted": handle_price,
    "product.created": handle_product,
    "product.updated": handle_product,
    "product.deleted": handle_product,
}


def handler_for(event: Event) -> Handler | None:
    """The handler that applies `event`, or None to settle it as ignored: a type this
    service does not handle, or an event of a connected account. A Connect endpoint
    receives its connected accounts' events (with `account` set, in test mode too): their
    customers, checkouts and subscriptions are those accounts' business, and a platform's
    customer must not be linked or given a plan by them."""
    if event.account is not None:
        return None
    return HANDLERS.get(event.type)


__all__ = ["HANDLERS", "Context", "Handler", "Outcome", "handler_for"]
