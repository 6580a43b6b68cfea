"""Signed, realistic Stripe webhook deliveries: for the tests and for `webhook trigger`.

The payloads follow Stripe's documented event shapes: one for API versions before
`2025-03-31.basil` ("old") and one for basil and later. Callers pick the shape with the
factory's `api_version`, so every handler is exercised against both without captured files,
and `python -m webhook trigger` can post the same events to a running server offline.

The factory remembers a little state per object (subscription item ids, the latest invoice,
when a cancellation was requested, prices it has been told about) so that a sequence of
events describes one consistent history, as Stripe's would.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import random
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

OLD_API = "2024-06-20"
BASIL_API = "2025-03-31.basil"
ENDIVE_API = "2026-09-30.endive"
API_VERSIONS = (OLD_API, ENDIVE_API)  # the two shapes tests parametrize over

# Older renderings of a subscription, oldest first, each with what changed (see
# README, "Payload vintages"). The factory renders any of them.
TOP_LEVEL_PLAN_API = "2015-10-16"  # a subscription has one top-level `plan`, no `items`
ITEMS_WITHOUT_PRODUCT_API = "2017-08-15"  # `items` with a `plan`; plans name no product yet
PLAN_ITEMS_API = "2019-05-16"  # plans belong to products; items carry no `price` yet
PRICE_ITEMS_API = "2020-08-27"  # items carry `price` next to the legacy `plan`
ITEMS_API = "2016-10-19"  # the first version whose subscriptions the factory gives items
PLANS_WITH_PRODUCTS_API = "2018-02-05"  # plans name their product from this version on
VINTAGE_API_VERSIONS = (
    TOP_LEVEL_PLAN_API,
    ITEMS_WITHOUT_PRODUCT_API,
    PLAN_ITEMS_API,
    PRICE_ITEMS_API,
    OLD_API,
    BASIL_API,
    ENDIVE_API,
)

DAY = 86_400
MONTH = 30 * DAY

_ALPHANUM = string.ascii_letters + string.digits
# Shared by every factory so ids never collide across factories in one process, while each
# factory's own random part stays reproducible from its seed.
_ID_COUNTER = itertools.count(1)

# Known test prices: (product, unit_amount). Unknown price ids get a product derived from the
# id and the Pro amount, so tests can invent prices without registering them first.
_CATALOG: dict[str, tuple[str, int]] = {
    "price_basic": ("prod_basic", 999),
    "price_pro": ("prod_pro", 1999),
    "price_enterprise": ("prod_enterprise", 4999),
    "price_sample_basic": ("prod_sample_basic", 999),
    "price_sample_pro": ("prod_sample_pro", 1999),
    "price_sample_enterprise": ("prod_sample_enterprise", 4999),
}


def _version_date(api_version: str) -> str:
    """The date part of an API version; named releases compare correctly by date alone."""
    return api_version[:10]


def is_basil_or_later(api_version: str) -> bool:
    """True when payloads use the basil shape (periods on items, invoice `parent`, `pricing`)."""
    return _version_date(api_version) >= _version_date(BASIL_API)


def sign(
    body: bytes,
    secret: str,
    timestamp: int | None = None,
    *,
    extra_secrets: Sequence[str] = (),
) -> str:
    """Stripe-Signature header value: t=<ts>,v1=<hmac of the secret>[,v1=<hmac of each extra>].

    HMAC-SHA256 over f"{t}.".encode() + body, keyed by the whole whsec_ string, lowercase hex.
    Extra secrets mimic a secret roll, when Stripe signs once per active secret. The timestamp
    defaults to now because the service (like the SDK) rejects old timestamps.
    """
    ts = int(time.time()) if timestamp is None else int(timestamp)
    signed = f"{ts}.".encode() + body
    parts = [f"t={ts}"]
    for key in (secret, *extra_secrets):
        mac = hmac.new(key.encode("utf-8"), signed, hashlib.sha256).hexdigest()
        parts.append(f"v1={mac}")
    return ",".join(parts)


def encode(event: dict[str, Any]) -> bytes:
    """The compact JSON the tests send; the exact bytes are what gets signed."""
    return json.dumps(event, separators=(",", ":")).encode()


@dataclass
class Delivery:
    """One webhook request: the event and the exact body bytes that are signed and posted."""

    event: dict[str, Any]
    body: bytes

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> Delivery:
        """Re-encode an event a test has edited, so body and event stay in step."""
        return cls(event=event, body=encode(event))

    @property
    def id(self) -> str:
        return self.event["id"]

    @property
    def type(self) -> str:
        return self.event["type"]

    @property
    def object(self) -> dict[str, Any]:
        """The `data.object` snapshot, for assertions."""
        return self.event["data"]["object"]

    def headers(
        self,
        secret: str,
        *,
        timestamp: int | None = None,
        extra_secrets: Sequence[str] = (),
    ) -> dict[str, str]:
        """Request headers for posting `body` to the webhook endpoint."""
        return {
            "Stripe-Signature": sign(
                self.body, secret, timestamp, extra_secrets=tuple(extra_secrets)
            ),
            "Content-Type": "application/json",
        }


@dataclass
class _SubState:
    """What Stripe would keep between events about one subscription."""

    created: int
    anchor: int
    item_ids: dict[int, str]
    latest_invoice: str | None = None
    canceled_at: int | None = None


class EventFactory:
    """Builds events with unique ids and a controllable clock.

    `clock` stands in for Stripe's clock: each event gets `created = clock` unless `created=`
    is given, so tests control ordering (and same-second ties) explicitly.
    """

    def __init__(self, api_version: str = ENDIVE_API, start: int = 1_790_000_000, seed: int = 0):
        self.api_version = api_version
        self.clock = start
        # Catalog objects predate every event the factory makes; a fixed time keeps them stable.
        self._catalog_created = start - 90 * DAY
        self._rng = random.Random(seed)
        self._subs: dict[str, _SubState] = {}
        self._prices: dict[str, dict[str, Any]] = {}
        self._customer_emails: dict[str, str] = {}
        self._customer_created: dict[str, int] = {}
        self._product_created: dict[str, int] = {}
        self._stable_ids: dict[tuple[str, ...], str] = {}

    # -- basics -------------------------------------------------------------------------------

    @property
    def basil(self) -> bool:
        """Whether this factory renders the basil-and-later shape."""
        return is_basil_or_later(self.api_version)

    def tick(self, seconds: int = 1) -> int:
        """Advance the clock and return the new time."""
        self.clock += seconds
        return self.clock

    def new_id(self, prefix: str, length: int = 24) -> str:
        """`prefix` + `length` alphanumerics: seeded random part, then a process-wide counter."""
        counter = _base62(next(_ID_COUNTER)).rjust(6, "0")
        rand = "".join(self._rng.choice(_ALPHANUM) for _ in range(max(length - len(counter), 0)))
        return f"{prefix}{rand}{counter}"[: len(prefix) + length]

    def _stable_id(self, prefix: str, *key: str, length: int = 24) -> str:
        """One id per (prefix, key): redeliveries of one invoice keep their line and charge ids."""
        full_key = (prefix, *key)
        if full_key not in self._stable_ids:
            self._stable_ids[full_key] = self.new_id(prefix, length)
        return self._stable_ids[full_key]

    def envelope(
        self,
        type: str,
        obj: dict[str, Any],
        *,
        previous_attributes: dict[str, Any] | None = None,
        created: int | None = None,
        event_id: str | None = None,
    ) -> Delivery:
        """Wrap a snapshot object in an event envelope (keys in Stripe's order) and encode it."""
        data: dict[str, Any] = {"object": obj}
        if previous_attributes is not None:
            data["previous_attributes"] = previous_attributes
        event = {
            "id": event_id or self.new_id("evt_"),
            "object": "event",
            "api_version": self.api_version,
            "created": self.clock if created is None else created,
            "data": data,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": type,
        }
        return Delivery.from_event(event)

    def _now(self, created: int | None) -> int:
        return self.clock if created is None else created

    # -- shared object pieces -----------------------------------------------------------------

    def price_object(
        self,
        price_id: str,
        *,
        product: str | None = None,
        unit_amount: int | None = None,
        currency: str | None = None,
        active: bool | None = None,
    ) -> dict[str, Any]:
        """A full Price as it appears in price events and subscription items.

        Values the caller leaves out come from the last price event for this id, then from
        the built-in catalog, so a subscription item shows the price a test announced.
        """
        known = self._prices.get(price_id, {})
        default_product, default_amount = _CATALOG.get(
            price_id, ("prod_" + price_id.removeprefix("price_"), 1999)
        )
        product = product or known.get("product", default_product)
        if unit_amount is None and "unit_amount" in known:
            unit_amount = known["unit_amount"]
        elif unit_amount is None:
            unit_amount = default_amount
        currency = currency or known.get("currency", "eur")
        active = known.get("active", True) if active is None else active
        recurring: dict[str, Any] = {"interval": "month", "interval_count": 1}
        if not self.basil:
            recurring["aggregate_usage"] = None
        recurring.update({"meter": None, "trial_period_days": None, "usage_type": "licensed"})
        return {
            "id": price_id,
            "object": "price",
            "active": active,
            "billing_scheme": "per_unit",
            "created": known.get("created", self._catalog_created),
            "currency": currency,
            "custom_unit_amount": None,
            "livemode": False,
            "lookup_key": price_id.removeprefix("price_") + "_monthly",
            "metadata": {},
            "nickname": None,
            "product": product,
            "recurring": recurring,
            "tax_behavior": "unspecified",
            "tiers_mode": None,
            "transform_quantity": None,
            "type": "recurring",
            "unit_amount": unit_amount,
            "unit_amount_decimal": None if unit_amount is None else str(unit_amount),
        }

    def plan_object(self, price: dict[str, Any]) -> dict[str, Any]:
        """The legacy Plan that Stripe shows beside (or, in old versions, instead of) a price.

        Before 2018-02-05 a plan named no product and carried its own `name`.
        """
        plan = _plan_from_price(price)
        if not self._since(PLANS_WITH_PRODUCTS_API):
            del plan["product"]
            plan["name"] = price["product"].removeprefix("prod_").replace("_", " ").title()
            plan["statement_descriptor"] = None
        return plan

    def known_price(self, price_id: str, *, product: str, unit_amount: int = 1999) -> None:
        """Tell the factory a price's product, as if a price event had announced it."""
        self._prices.setdefault(price_id, {"created": self._catalog_created}).update(
            {"product": product, "unit_amount": unit_amount, "currency": "eur", "active": True}
        )

    def _since(self, api_version: str) -> bool:
        """Whether this factory's version is `api_version` or later."""
        return _version_date(self.api_version) >= _version_date(api_version)

    def _sub_state(self, sub_id: str, created: int, anchor: int) -> _SubState:
        state = self._subs.get(sub_id)
        if state is None:
            state = self._subs[sub_id] = _SubState(created=created, anchor=anchor, item_ids={})
        return state

    def _item_id(self, sub_id: str, index: int) -> str:
        """Item ids are stable per subscription slot: Stripe swaps the price in place."""
        state = self._sub_state(sub_id, self.clock, self.clock)
        if index not in state.item_ids:
            state.item_ids[index] = self.new_id("si_", 14)
        return state.item_ids[index]

    def items_list(
        self,
        *,
        sub_id: str,
        price_ids: Sequence[str],
        period_start: int,
        period_end: int,
        created: int | None = None,
    ) -> dict[str, Any]:
        """A subscription's `items` list in this version's shape (also for previous_attributes)."""
        state = self._sub_state(sub_id, self._now(created), period_start)
        data = []
        for index, price_id in enumerate(price_ids):
            price = self.price_object(price_id)
            item: dict[str, Any] = {
                "id": self._item_id(sub_id, index),
                "object": "subscription_item",
                "billing_thresholds": None,
                "created": state.created,
            }
            if self.basil:
                item["current_period_end"] = period_end
                item["current_period_start"] = period_start
            item.update({"discounts": [], "metadata": {}, "plan": self.plan_object(price)})
            if self._since(PRICE_ITEMS_API):
                item["price"] = price
            item.update({"quantity": 1, "subscription": sub_id, "tax_rates": []})
            data.append(item)
        return {
            "object": "list",
            "data": data,
            "has_more": False,
            "total_count": len(data),
            "url": f"/v1/subscription_items?subscription={sub_id}",
        }

    # -- builders ------------------------------------------------------------------------------

    def checkout_completed(
        self,
        *,
        customer: str,
        subscription: str | None,
        client_reference_id: str | None,
        metadata: dict[str, Any] | None = None,
        mode: str = "subscription",
        payment_status: str = "paid",
        async_event: bool = False,
        created: int | None = None,
    ) -> Delivery:
        """checkout.session.completed, or .async_payment_succeeded when `async_event`."""
        now = self._now(created)
        type_ = (
            "checkout.session.async_payment_succeeded"
            if async_event
            else "checkout.session.completed"
        )
        invoice = None
        if mode == "subscription" and subscription is not None:
            state = self._subs.get(subscription)
            invoice = state.latest_invoice if state and state.latest_invoice else None
            if invoice is None:
                invoice = self.new_id("in_")
                self._sub_state(subscription, now, now).latest_invoice = invoice
        email = self._customer_emails.get(customer, "ana@example.com")
        amount = 1999 if mode != "setup" else 0
        session: dict[str, Any] = {
            "id": self.new_id("cs_test_", 58),
            "object": "checkout.session",
            "after_expiration": None,
            "allow_promotion_codes": None,
            "amount_subtotal": amount,
            "amount_total": amount,
            "automatic_tax": {"enabled": False, "liability": None, "status": None},
            "billing_address_collection": None,
            "cancel_url": "https://example.com/pricing",
            "client_reference_id": client_reference_id,
            "client_secret": None,
            "consent": None,
            "consent_collection": None,
            "created": now - 95,
            "currency": "eur",
            "custom_fields": [],
            "custom_text": {
                "after_submit": None,
                "shipping_address": None,
                "submit": None,
                "terms_of_service_acceptance": None,
            },
            "customer": customer,
        }
        if _version_date(self.api_version) >= "2025-09-30":
            session["customer_account"] = None
        session.update(
            {
                "customer_creation": "always" if mode == "payment" else None,
                "customer_details": {
                    "address": {
                        "city": None,
                        "country": "DE",
                        "line1": None,
                        "line2": None,
                        "postal_code": None,
                        "state": None,
                    },
                    "email": email,
                    "name": _name_from_email(email),
                    "phone": None,
                    "tax_exempt": "none",
                    "tax_ids": [],
                },
                "customer_email": None,
                "expires_at": now - 95 + DAY,
                "invoice": invoice,
                "invoice_creation": None,
                "livemode": False,
                "locale": None,
                "metadata": dict(metadata or {}),
                "mode": mode,
                "payment_intent": self.new_id("pi_") if mode == "payment" else None,
                "payment_link": None,
                "payment_method_collection": "always",
                "payment_method_configuration_details": None,
                "payment_method_options": {"card": {"request_three_d_secure": "automatic"}},
                "payment_method_types": ["card"],
                "payment_status": payment_status,
                "phone_number_collection": {"enabled": False},
                "recovered_from": None,
                "setup_intent": self.new_id("seti_") if mode == "setup" else None,
            }
        )
        if not self.basil:
            session["shipping_details"] = None
        session.update(
            {
                "shipping_address_collection": None,
                "shipping_cost": None,
                "shipping_options": [],
                "status": "complete",
                "submit_type": None,
                "subscription": subscription,
                "success_url": "https://example.com/welcome",
                "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
                "ui_mode": (
                    "hosted_page" if _version_date(self.api_version) >= "2026-03-25" else "hosted"
                ),
                "url": None,
            }
        )
        return self.envelope(type_, session, created=created)

    def subscription(
        self,
        type: str,
        *,
        sub_id: str,
        customer: str,
        status: str,
        price_ids: Sequence[str] = ("price_pro",),
        period_start: int | None = None,
        period_end: int | None = None,
        cancel_at_period_end: bool = False,
        cancel_at: int | None = None,
        metadata: dict[str, Any] | None = None,
        previous_attributes: dict[str, Any] | None = None,
        created: int | None = None,
    ) -> Delivery:
        """A customer.subscription.* event.

        Old shape: current_period_start/end on the subscription; basil+: on each item only.
        `cancel_at_period_end` also sets `cancel_at` to the period end, as Stripe does;
        `canceled_at` is when cancellation was first requested. `.deleted` forces status
        "canceled" with `ended_at` at the event time.
        """
        now = self._now(created)
        start = now if period_start is None else period_start
        end = start + MONTH if period_end is None else period_end
        state = self._sub_state(sub_id, now, start)
        deleted = type == "customer.subscription.deleted"
        if deleted:
            status = "canceled"
        if cancel_at_period_end and cancel_at is None:
            cancel_at = end
        if cancel_at_period_end or cancel_at is not None or deleted:
            if state.canceled_at is None:
                state.canceled_at = now
        else:
            state.canceled_at = None  # a cancellation that was undone
        sub: dict[str, Any] = {
            "id": sub_id,
            "object": "subscription",
            "application": None,
            "application_fee_percent": None,
            "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
            "billing_cycle_anchor": state.anchor,
        }
        if _version_date(self.api_version) >= "2025-06-30":
            sub["billing_mode"] = (
                {
                    "flexible": {"proration_discounts": "included"},
                    "type": "flexible",
                    "updated_at": state.created,
                }
                if _version_date(self.api_version) >= "2025-09-30"
                else {"type": "classic"}
            )
        sub.update(
            {
                "billing_thresholds": None,
                "cancel_at": cancel_at,
                "cancel_at_period_end": cancel_at_period_end,
                "canceled_at": state.canceled_at,
                "cancellation_details": {
                    "comment": None,
                    "feedback": None,
                    "reason": "cancellation_requested" if state.canceled_at else None,
                },
                "collection_method": "charge_automatically",
                "created": state.created,
                "currency": "eur",
            }
        )
        if not self.basil:
            sub["current_period_end"] = end
            sub["current_period_start"] = start
        sub.update(
            {
                "customer": customer,
                "days_until_due": None,
                "default_payment_method": None,
                "default_source": None,
                "default_tax_rates": [],
                "description": None,
                "discounts": [],
                "ended_at": now if deleted else None,
                "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
                "latest_invoice": state.latest_invoice,
                "livemode": False,
                "metadata": dict(metadata or {}),
                "next_pending_invoice_item_invoice": None,
                "on_behalf_of": None,
                "pause_collection": None,
                "payment_settings": {
                    "payment_method_options": None,
                    "payment_method_types": None,
                    "save_default_payment_method": "off",
                },
                "pending_invoice_item_interval": None,
                "pending_setup_intent": None,
                "pending_update": None,
                "schedule": None,
                "start_date": state.created,
                "status": status,
                "test_clock": None,
                "transfer_data": None,
                "trial_end": None,
                "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
                "trial_start": None,
            }
        )
        items = self.items_list(
            sub_id=sub_id, price_ids=price_ids, period_start=start, period_end=end, created=created
        )
        if self._since(ITEMS_API):
            sub["items"] = items
        if not self._since(PRICE_ITEMS_API) and len(price_ids) == 1:
            # Single-plan subscriptions also showed their plan and quantity at the top.
            sub["plan"] = items["data"][0]["plan"]
            sub["quantity"] = 1
        return self.envelope(type, sub, previous_attributes=previous_attributes, created=created)

    def invoice(
        self,
        type: str,
        *,
        invoice_id: str,
        customer: str,
        subscription: str | None,
        billing_reason: str = "subscription_cycle",
        price_ids: Sequence[str] = ("price_pro",),
        period_start: int,
        period_end: int,
        status: str | None = None,
        created: int | None = None,
    ) -> Delivery:
        """An invoice.* event; lines cover the NEW service period, the invoice the previous one.

        Old shape: `subscription`, line `price` objects, `paid`/`payment_intent`/`charge`.
        Basil+: `parent.subscription_details`, line `pricing` (price id) and line `parent`.
        """
        now = self._now(created)
        if status is None:
            status = {
                "invoice.paid": "paid",
                "invoice.payment_succeeded": "paid",
                "invoice.payment_failed": "open",
                "invoice.created": "draft",
                "invoice.voided": "void",
                "invoice.marked_uncollectible": "uncollectible",
            }.get(type, "open")
        failed = type == "invoice.payment_failed"
        paid = status == "paid"
        if subscription is not None:
            self._sub_state(subscription, now, period_start).latest_invoice = invoice_id
        # Stripe bills subscriptions in advance but dates the invoice in arrears: the first
        # invoice has an empty period at the start, later ones cover the period just ended.
        if billing_reason == "subscription_create":
            inv_start = inv_end = period_start
        else:
            inv_start, inv_end = period_start - (period_end - period_start), period_start
        email = self._customer_emails.get(customer, "ana@example.com")
        lines = []
        for index, price_id in enumerate(price_ids):
            price = self.price_object(price_id)
            item_id = self._item_id(subscription, index) if subscription else None
            lines.append(
                self._invoice_line(
                    self._stable_id("il_", invoice_id, str(index)),
                    invoice_id,
                    subscription,
                    item_id,
                    price,
                    period_start,
                    period_end,
                )
            )
        total = sum(line["amount"] for line in lines)
        amount_paid = total if paid else 0
        inv: dict[str, Any] = {
            "id": invoice_id,
            "object": "invoice",
            "account_country": "DE",
            "account_name": "Example SaaS",
            "account_tax_ids": None,
            "amount_due": total,
        }
        if self.basil:
            inv["amount_overpaid"] = 0
        inv.update(
            {
                "amount_paid": amount_paid,
                "amount_remaining": total - amount_paid,
                "amount_shipping": 0,
                "application": None,
                "attempt_count": 1 if (paid or failed) else 0,
                "attempted": paid or failed,
                "auto_advance": not paid,
                "automatic_tax": {
                    "disabled_reason": None,
                    "enabled": False,
                    "liability": None,
                    "status": None,
                },
                "billing_reason": billing_reason,
            }
        )
        if not self.basil:
            inv["charge"] = self._stable_id("ch_", invoice_id) if (paid or failed) else None
        inv.update(
            {
                "collection_method": "charge_automatically",
                "created": now if billing_reason == "subscription_create" else now - 3600,
                "currency": "eur",
                "custom_fields": None,
                "customer": customer,
                "customer_address": None,
                "customer_email": email,
                "customer_name": _name_from_email(email),
                "customer_phone": None,
                "customer_shipping": None,
                "customer_tax_exempt": "none",
                "customer_tax_ids": [],
                "default_payment_method": None,
                "default_source": None,
                "default_tax_rates": [],
                "description": None,
                "discounts": [],
                "due_date": None,
                "effective_at": now,
                "ending_balance": 0 if status != "draft" else None,
                "footer": None,
                "from_invoice": None,
                "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_test/{invoice_id}",
                "invoice_pdf": f"https://pay.stripe.com/invoice/acct_test/{invoice_id}/pdf",
                "issuer": {"type": "self"},
                "last_finalization_error": None,
                "latest_revision": None,
                "lines": {
                    "object": "list",
                    "data": lines,
                    "has_more": False,
                    "total_count": len(lines),
                    "url": f"/v1/invoices/{invoice_id}/lines",
                },
                "livemode": False,
                "metadata": {},
                "next_payment_attempt": now + 3 * DAY if failed else None,
                "number": f"{invoice_id[-8:].upper()}-0001",
                "on_behalf_of": None,
            }
        )
        if not self.basil:
            inv["paid"] = paid
            inv["paid_out_of_band"] = False
        if self.basil:
            inv["parent"] = (
                {
                    "quote_details": None,
                    "subscription_details": {"metadata": {}, "subscription": subscription},
                    "type": "subscription_details",
                }
                if subscription
                else None
            )
        if not self.basil:
            inv["payment_intent"] = self._stable_id("pi_", invoice_id) if (paid or failed) else None
        inv.update(
            {
                "payment_settings": {
                    "default_mandate": None,
                    "payment_method_options": None,
                    "payment_method_types": None,
                },
                "period_end": inv_end,
                "period_start": inv_start,
                "post_payment_credit_notes_amount": 0,
                "pre_payment_credit_notes_amount": 0,
                "receipt_number": None,
                "rendering": None,
                "shipping_cost": None,
                "shipping_details": None,
                "starting_balance": 0,
                "statement_descriptor": None,
                "status": status,
                "status_transitions": {
                    "finalized_at": None if status == "draft" else now - 3600,
                    "marked_uncollectible_at": None,
                    "paid_at": now if paid else None,
                    "voided_at": None,
                },
            }
        )
        if not self.basil:
            inv["subscription"] = subscription
            inv["subscription_details"] = {"metadata": {}} if subscription else None
        inv.update(
            {
                "subtotal": total,
                "subtotal_excluding_tax": total,
                "test_clock": None,
                "total": total,
                "total_discount_amounts": [],
                "total_excluding_tax": total,
                "webhooks_delivered_at": now - 3600,
            }
        )
        if self.basil:
            inv["total_pretax_credit_amounts"] = []
            inv["total_taxes"] = []
        return self.envelope(type, inv, created=created)

    def _invoice_line(
        self,
        line_id: str,
        invoice_id: str,
        subscription: str | None,
        item_id: str | None,
        price: dict[str, Any],
        period_start: int,
        period_end: int,
    ) -> dict[str, Any]:
        """One subscription line item in this version's shape."""
        amount = price["unit_amount"] or 0
        line: dict[str, Any] = {
            "id": line_id,
            "object": "line_item",
            "amount": amount,
            "currency": price["currency"],
            "description": f"1 \u00d7 {price['product']} (at €{amount / 100:.2f} / month)",
            "discount_amounts": [],
            "discountable": True,
            "discounts": [],
        }
        if self.basil:
            line["invoice"] = invoice_id
        line.update({"livemode": False, "metadata": {}})
        if self.basil:
            line["parent"] = {
                "invoice_item_details": None,
                "subscription_item_details": {
                    "invoice_item": None,
                    "proration": False,
                    "proration_details": {"credited_items": None},
                    "subscription": subscription,
                    "subscription_item": item_id,
                },
                "type": "subscription_item_details",
            }
        line["period"] = {"end": period_end, "start": period_start}
        if self.basil:
            line["pretax_credit_amounts"] = []
            line["pricing"] = {
                "price_details": {"price": price["id"], "product": price["product"]},
                "type": "price_details",
                "unit_amount_decimal": str(amount),
            }
        else:
            line["invoice_item"] = None
            line["plan"] = self.plan_object(price)
            if self._since(PRICE_ITEMS_API):
                line["price"] = price
            line["proration"] = False
            line["proration_details"] = {"credited_items": None}
        line["quantity"] = 1
        line["subscription"] = subscription
        if not self.basil:
            line["subscription_item"] = item_id
            line["tax_amounts"] = []
            line["tax_rates"] = []
            line["type"] = "subscription"
        else:
            line["taxes"] = []
        return line

    def customer(
        self,
        type: str,
        *,
        customer_id: str,
        email: str = "ana@example.com",
        metadata: dict[str, Any] | None = None,
        created: int | None = None,
    ) -> Delivery:
        """customer.created/updated/deleted; `.deleted` carries the full last object."""
        now = self._now(created)
        self._customer_emails[customer_id] = email
        cus = {
            "id": customer_id,
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": self._customer_created.setdefault(customer_id, now),
            "currency": "eur",
            "default_source": None,
            "delinquent": False,
            "description": None,
            "discount": None,
            "email": email,
            "invoice_prefix": customer_id.removeprefix("cus_")[:8].upper(),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": dict(metadata or {}),
            "name": _name_from_email(email),
            "next_invoice_sequence": 1,
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
        return self.envelope(type, cus, created=created)

    def price(
        self,
        type: str,
        *,
        price_id: str,
        product: str = "prod_pro",
        unit_amount: int | None = 1999,
        currency: str = "eur",
        active: bool = True,
        created: int | None = None,
    ) -> Delivery:
        """price.created/updated/deleted; later subscription items show these values."""
        now = self._now(created)
        known = self._prices.setdefault(price_id, {"created": now})
        known.update(
            {"product": product, "unit_amount": unit_amount, "currency": currency, "active": active}
        )
        obj = self.price_object(
            price_id,
            product=product,
            unit_amount=unit_amount,
            currency=currency,
            active=active,
        )
        return self.envelope(type, obj, created=created)

    def product(
        self,
        type: str,
        *,
        product_id: str,
        name: str = "Pro",
        active: bool = True,
        created: int | None = None,
    ) -> Delivery:
        """product.created/updated/deleted (same shape in every version covered)."""
        now = self._now(created)
        default_price = next(
            (pid for pid, (prod, _) in _CATALOG.items() if prod == product_id), None
        )
        obj = {
            "id": product_id,
            "object": "product",
            "active": active,
            "attributes": [],
            "created": self._product_created.setdefault(product_id, now),
            "default_price": default_price,
            "description": None,
            "images": [],
            "livemode": False,
            "marketing_features": [],
            "metadata": {},
            "name": name,
            "package_dimensions": None,
            "shippable": None,
            "statement_descriptor": None,
            "tax_code": None,
            "type": "service",
            "unit_label": None,
            "updated": now,
            "url": None,
        }
        return self.envelope(type, obj, created=created)

    def other(self, type: str = "charge.succeeded", created: int | None = None) -> Delivery:
        """An event type the service ignores, with a plausible object for its resource."""
        now = self._now(created)
        resource = type.rsplit(".", 1)[0]
        if resource == "charge":
            obj: dict[str, Any] = {
                "id": self.new_id("ch_"),
                "object": "charge",
                "amount": 1999,
                "amount_captured": 1999,
                "amount_refunded": 0,
                "captured": True,
                "created": now,
                "currency": "eur",
                "customer": "cus_test1",
                "livemode": False,
                "metadata": {},
                "paid": type != "charge.failed",
                "payment_intent": self.new_id("pi_"),
                "payment_method": self.new_id("pm_"),
                "refunded": False,
                "status": "failed" if type == "charge.failed" else "succeeded",
            }
        elif resource == "payment_intent":
            obj = {
                "id": self.new_id("pi_"),
                "object": "payment_intent",
                "amount": 1999,
                "amount_received": 1999,
                "created": now,
                "currency": "eur",
                "customer": "cus_test1",
                "latest_charge": self.new_id("ch_"),
                "livemode": False,
                "metadata": {},
                "status": "succeeded",
            }
        elif resource == "payment_method":
            obj = {
                "id": self.new_id("pm_"),
                "object": "payment_method",
                "card": {"brand": "visa", "exp_month": 12, "exp_year": 2030, "last4": "4242"},
                "created": now,
                "customer": "cus_test1",
                "livemode": False,
                "metadata": {},
                "type": "card",
            }
        else:
            prefix = "".join(word[0] for word in resource.replace(".", "_").split("_"))
            obj = {
                "id": self.new_id(prefix + "_"),
                "object": resource,
                "created": now,
                "livemode": False,
                "metadata": {},
            }
        return self.envelope(type, obj, created=created)


def lifecycle(
    factory: EventFactory,
    *,
    user_id: str,
    customer: str = "cus_test1",
    sub_id: str = "sub_test1",
) -> list[Delivery]:
    """One subscription's life, in the order Stripe creates the events.

    checkout → created (incomplete, basic) + updated (active) in the same second → first
    invoice.paid → upgrade to pro → renewal invoice.paid + invoice.payment_succeeded and the
    period roll → cancel at period end → deleted at the period end.
    """
    f = factory
    meta = {"user_id": user_id}
    first_invoice = f.new_id("in_")
    renewal_invoice = f.new_id("in_")
    out: list[Delivery] = []

    start = f.clock
    f._sub_state(sub_id, start, start).latest_invoice = first_invoice
    out.append(
        f.checkout_completed(
            customer=customer,
            subscription=sub_id,
            client_reference_id=user_id,
            metadata=meta,
        )
    )

    # Subscription is created just before Checkout finishes; its first payment confirms it.
    p0 = start
    p1 = p0 + MONTH
    f.tick(2)
    basic = ("price_basic",)
    out.append(
        f.subscription(
            "customer.subscription.created",
            sub_id=sub_id,
            customer=customer,
            status="incomplete",
            price_ids=basic,
            period_start=p0,
            period_end=p1,
            metadata=meta,
        )
    )
    out.append(
        f.subscription(
            "customer.subscription.updated",
            sub_id=sub_id,
            customer=customer,
            status="active",
            price_ids=basic,
            period_start=p0,
            period_end=p1,
            metadata=meta,
            previous_attributes={"status": "incomplete"},
        )
    )
    f.tick(3)
    out.append(
        f.invoice(
            "invoice.paid",
            invoice_id=first_invoice,
            customer=customer,
            subscription=sub_id,
            billing_reason="subscription_create",
            price_ids=basic,
            period_start=p0,
            period_end=p1,
        )
    )

    # A few days later the user upgrades; Stripe swaps the item's price in place.
    f.tick(3 * DAY + 4 * 3600 + 17)
    old_items = f.items_list(sub_id=sub_id, price_ids=basic, period_start=p0, period_end=p1)
    out.append(
        f.subscription(
            "customer.subscription.updated",
            sub_id=sub_id,
            customer=customer,
            status="active",
            price_ids=("price_pro",),
            period_start=p0,
            period_end=p1,
            metadata=meta,
            previous_attributes={"items": old_items},
        )
    )

    # Renewal: the invoice is finalized and paid about an hour after the period rolls over.
    p2 = p1 + MONTH
    f.clock = max(f.clock, p1 + 3600)
    pro = ("price_pro",)
    for type_ in ("invoice.paid", "invoice.payment_succeeded"):
        out.append(
            f.invoice(
                type_,
                invoice_id=renewal_invoice,
                customer=customer,
                subscription=sub_id,
                billing_reason="subscription_cycle",
                price_ids=pro,
                period_start=p1,
                period_end=p2,
            )
        )
    f.tick(1)
    renewed_prev: dict[str, Any] = {"latest_invoice": first_invoice}
    if f.basil:
        renewed_prev["items"] = f.items_list(
            sub_id=sub_id, price_ids=pro, period_start=p0, period_end=p1
        )
    else:
        renewed_prev.update({"current_period_end": p1, "current_period_start": p0})
    out.append(
        f.subscription(
            "customer.subscription.updated",
            sub_id=sub_id,
            customer=customer,
            status="active",
            price_ids=pro,
            period_start=p1,
            period_end=p2,
            metadata=meta,
            previous_attributes=renewed_prev,
        )
    )

    # Ten days in, the user cancels at period end; Stripe ends it when the period runs out.
    f.tick(10 * DAY + 2 * 3600 + 41)
    out.append(
        f.subscription(
            "customer.subscription.updated",
            sub_id=sub_id,
            customer=customer,
            status="active",
            price_ids=pro,
            period_start=p1,
            period_end=p2,
            cancel_at_period_end=True,
            metadata=meta,
            previous_attributes={
                "cancel_at": None,
                "cancel_at_period_end": False,
                "canceled_at": None,
            },
        )
    )
    f.clock = max(f.clock, p2 + 2)
    out.append(
        f.subscription(
            "customer.subscription.deleted",
            sub_id=sub_id,
            customer=customer,
            status="canceled",
            price_ids=pro,
            period_start=p1,
            period_end=p2,
            cancel_at_period_end=True,
            metadata=meta,
        )
    )
    return out


def _plan_from_price(price: dict[str, Any]) -> dict[str, Any]:
    """The legacy Plan mirror Stripe still attaches to items and old-shape lines."""
    return {
        "id": price["id"],
        "object": "plan",
        "active": price["active"],
        "amount": price["unit_amount"],
        "amount_decimal": price["unit_amount_decimal"],
        "billing_scheme": "per_unit",
        "created": price["created"],
        "currency": price["currency"],
        "interval": "month",
        "interval_count": 1,
        "livemode": False,
        "metadata": {},
        "nickname": None,
        "product": price["product"],
        "tiers_mode": None,
        "transform_usage": None,
        "trial_period_days": None,
        "usage_type": "licensed",
    }


def _name_from_email(email: str) -> str:
    """A display name like Stripe Checkout would collect, derived so tests need not pass one."""
    return email.split("@", 1)[0].replace(".", " ").title()


def _base62(n: int) -> str:
    digits = []
    while True:
        n, r = divmod(n, 62)
        digits.append(_ALPHANUM[r])
        if n == 0:
            return "".join(reversed(digits))
