"""Plans by product: every price of a product grants its plan; the exact price wins.

Deliveries go through the app as Stripe sends them, in both payload shapes; plans are the
`plans` fixture (Basic, Pro, Enterprise, each with a price and a product) plus what each
test adds.
"""

import uuid

import psycopg
import pytest
from stripe_events import API_VERSIONS, EventFactory
from webhook_support import StripeSender, customer_state, event_status

from webhook.core.config import DEFAULT_ENTITLED_STATUSES
from webhook.pipeline.reconcile import reconcile


@pytest.fixture(params=API_VERSIONS)
def factory(request: pytest.FixtureRequest) -> EventFactory:
    return EventFactory(request.param)


def sign_up(stripe: StripeSender, factory: EventFactory, user: uuid.UUID, price: str) -> str:
    """Checkout, then an active subscription to `price`; returns the subscription event id."""
    created = factory.subscription(
        "customer.subscription.created",
        sub_id=f"sub_{price}",
        customer="cus_1",
        status="active",
        price_ids=[price],
    )
    stripe.send_all(
        [
            factory.checkout_completed(
                customer="cus_1", subscription=f"sub_{price}", client_reference_id=str(user)
            ),
            created,
        ]
    )
    return created.id


@pytest.mark.parametrize(
    "price", ["price_pro_monthly", "price_pro_yearly", "price_pro_usd", "price_pro_jpy"]
)
def test_every_price_of_a_plans_product_grants_that_plan(
    conn, plans, user, stripe, factory, price
) -> None:
    factory.known_price(price, product="prod_pro")
    event_id = sign_up(stripe, factory, user, price)
    assert customer_state(conn, user)["plan_id"] == plans["Pro"]
    assert event_status(conn, event_id) == ("processed", None)
    mirrored = conn.execute("select price_ids, product_ids from webhook_private.subscriptions")
    assert mirrored.fetchall() == [([price], ["prod_pro"])]


def test_the_exact_price_wins_over_the_product(conn, plans, user, stripe, factory) -> None:
    # A discounted Pro price that the operator sells as its own plan.
    promo = conn.execute(
        "insert into public.plans (name, price, resources, stripe_price_id)"
        " values ('Pro promo', 9.00, '{\"api_calls\": 5000}', 'price_pro_promo') returning id"
    ).fetchone()[0]
    factory.known_price("price_pro_promo", product="prod_pro")
    sign_up(stripe, factory, user, "price_pro_promo")
    assert customer_state(conn, user)["plan_id"] == promo


def test_a_legacy_plan_id_is_matched_as_a_price_id(conn, plans, user, stripe, factory) -> None:
    gold = conn.execute(
        "insert into public.plans (name, price, resources, stripe_plan_id)"
        " values ('Gold', 30, '{\"api_calls\": 7000}', 'gold_monthly') returning id"
    ).fetchone()[0]
    factory.known_price("gold_monthly", product="prod_gold_legacy")
    sign_up(stripe, factory, user, "gold_monthly")
    assert customer_state(conn, user)["plan_id"] == gold


def test_a_price_of_no_known_product_fails_and_a_product_plan_then_repairs_it(
    conn, plans, user, stripe, factory
) -> None:
    factory.known_price("price_team_yearly", product="prod_team")
    event_id = sign_up(stripe, factory, user, "price_team_yearly")
    status, error = event_status(conn, event_id)
    assert status == "failed"
    assert "price_team_yearly" in error and "stripe_product_id" in error
    assert customer_state(conn, user)["plan_id"] is None

    team = conn.execute(
        "insert into public.plans (name, price, resources, stripe_product_id)"
        " values ('Team', 29, '{\"api_calls\": 9000}', 'prod_team') returning id"
    ).fetchone()[0]
    report = reconcile(conn, DEFAULT_ENTITLED_STATUSES)
    assert report.changes == [(user, None, team)]
    assert customer_state(conn, user)["plan_id"] == team


def test_product_events_follow_stripe_product_id(conn, plans, stripe, factory) -> None:
    stripe.send_all([factory.product("product.updated", product_id="prod_pro", active=False)])
    active = dict(conn.execute("select name, active from public.plans").fetchall())
    assert active == {"Basic": True, "Pro": False, "Enterprise": True}


def test_price_events_leave_plans_that_only_name_the_product(conn, plans, stripe, factory) -> None:
    # A new yearly price of the Pro product: Pro's own price and currency stay as they are.
    stripe.send_all(
        [
            factory.price(
                "price.created",
                price_id="price_pro_yearly",
                product="prod_pro",
                unit_amount=19900,
                currency="usd",
            )
        ]
    )
    row = conn.execute(
        "select price, price_currency from public.plans where name = 'Pro'"
    ).fetchone()
    assert (str(row[0]), row[1]) == ("19.99", "eur")


def test_price_events_update_a_plan_that_names_a_legacy_plan_id(conn, stripe, factory) -> None:
    conn.execute(
        "insert into public.plans (name, price, resources, stripe_plan_id)"
        " values ('Gold', 30, '{}', 'gold_monthly')"
    )
    stripe.send_all(
        [factory.price("price.updated", price_id="gold_monthly", unit_amount=3500, active=False)]
    )
    row = conn.execute("select price, active from public.plans where name = 'Gold'").fetchone()
    assert (str(row[0]), row[1]) == ("35.00", False)


def test_a_product_id_can_belong_to_one_plan_only(conn, plans) -> None:
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(
            "insert into public.plans (name, price, stripe_product_id) values ('Copy', 1, 'prod_pro')"
        )
