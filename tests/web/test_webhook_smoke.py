"""One signed checkout and subscription through the real app."""

from stripe_events import EventFactory
from webhook_support import StripeSender, customer_state


def test_a_subscription_gives_the_plan(
    conn, plans, user, stripe: StripeSender, factory: EventFactory
) -> None:
    stripe.send_all(
        [
            factory.checkout_completed(
                customer="cus_1", subscription="sub_1", client_reference_id=str(user)
            ),
            factory.subscription(
                "customer.subscription.created",
                sub_id="sub_1",
                customer="cus_1",
                status="active",
                price_ids=["price_pro"],
            ),
        ]
    )
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]
