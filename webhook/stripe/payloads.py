"""Read what the processor needs from Stripe payloads, whatever the API version.

API 2025-03-31.basil moved three things this service reads: a subscription's period to
its items, an invoice's subscription to `parent.subscription_details`, and an invoice
line's price to `pricing.price_details.price` (an id, no longer an object). Older
accounts still receive older shapes: subscription items that carry a legacy `plan` and no
`price` (before the Prices API), and subscriptions with a top-level `plan` (from before
subscriptions had items). The functions here accept every one of these shapes so the
handlers never branch on the version; they take plain dicts and do no I/O.
"""

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

# Currencies whose Stripe amounts are already whole units (no cents).
ZERO_DECIMAL_CURRENCIES = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)


# Stripe counts these in thousandths (fils, baisa, millimes), not hundredths.
THREE_DECIMAL_CURRENCIES = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])


class PayloadError(ValueError):
    """The event lacks a field the processor needs; applying it cannot succeed as is."""


@dataclass(frozen=True)
class Event:
    """The parts of an event envelope every handler uses."""

    id: str
    type: str
    created: int
    api_version: str | None
    livemode: bool
    object: Mapping[str, Any]
    raw: Mapping[str, Any] = field(repr=False)
    # The connected account (Stripe Connect) the event happened in; None for the platform's own.
    account: str | None = None
    # The body exactly as received, when there is one: stored as is, not serialised again.
    text: str | None = field(default=None, repr=False)

    @property
    def object_id(self) -> str | None:
        value = self.object.get("id")
        return value if isinstance(value, str) else None

    @property
    def stripe_customer(self) -> str | None:
        """The Stripe customer whose lock applying this event takes: a customer event's own
        id, else the object's `customer` (None for catalog events)."""
        if self.type.startswith("customer.") and not self.type.startswith("customer.subscription."):
            return self.object_id
        return expandable_id(self.object.get("customer"))


def parse_event(document: Any, text: str | None = None) -> Event:
    """Check that a decoded JSON body is a Stripe snapshot event; raise PayloadError if not.

    `text` is the body the document was decoded from, kept for storing.
    """
    if not isinstance(document, dict):
        raise PayloadError("body is not a JSON object")
    if document.get("object") == "v2.core.event":
        raise PayloadError("thin events are not supported; send snapshot events to this endpoint")
    if document.get("object") != "event":
        raise PayloadError('body is not a Stripe event (object is not "event")')
    event_id, event_type, created = (
        document.get("id"),
        document.get("type"),
        document.get("created"),
    )
    if not isinstance(event_id, str) or not event_id.startswith("evt_") or len(event_id) > 255:
        raise PayloadError("event has no valid id")
    if not isinstance(event_type, str) or not event_type or len(event_type) > 255:
        raise PayloadError("event has no type")
    if not _is_timestamp(created):
        raise PayloadError("event has no valid created timestamp")
    data = document.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        raise PayloadError("event has no data.object")
    api_version, account = document.get("api_version"), document.get("account")
    return Event(
        id=event_id,
        type=event_type,
        created=created,
        api_version=api_version if isinstance(api_version, str) else None,
        livemode=document.get("livemode") is True,
        object=obj,
        raw=document,
        text=text,
        account=account if isinstance(account, str) and account else None,
    )


@dataclass(frozen=True)
class SubscriptionState:
    """A subscription as the entitlement rule and the mirror see it."""

    id: str
    customer: str
    status: str
    # The price of each item and that price's product (None when the payload does not say),
    # in the same order; a product may repeat, a price does not.
    price_ids: tuple[str, ...]
    product_ids: tuple[str | None, ...]
    current_period_end: int | None
    cancel_at_period_end: bool
    cancel_at: int | None
    ended_at: int | None
    metadata: Mapping[str, str]
    # Last so positional construction (tests) keeps working; None when the payload lacks it.
    current_period_start: int | None = None


def subscription_state(sub: Mapping[str, Any]) -> SubscriptionState:
    """The subscription's state from a `customer.subscription.*` object (either shape)."""
    sub_id = _required_str(sub, "id", "subscription")
    customer = expandable_id(sub.get("customer"))
    if not customer:
        raise PayloadError(f"subscription {sub_id} has no customer")
    status = _required_str(sub, "status", f"subscription {sub_id}")
    prices = subscription_prices(sub)
    return SubscriptionState(
        id=sub_id,
        customer=customer,
        status=status,
        price_ids=tuple(prices),
        product_ids=tuple(prices.values()),
        current_period_end=subscription_period_end(sub),
        cancel_at_period_end=bool(sub.get("cancel_at_period_end")),
        cancel_at=_int_or_none(sub.get("cancel_at")),
        ended_at=_int_or_none(sub.get("ended_at")),
        metadata=_metadata(sub),
        current_period_start=subscription_period_start(sub),
    )


# What a subscription is missing when none of its items names a price, for error messages.
NO_READABLE_ITEMS = (
    "no item with a price or a plan (items.data[].price, items.data[].plan, or the"
    " subscription's own plan in the oldest API versions)"
)


def subscription_prices(sub: Mapping[str, Any]) -> dict[str, str | None]:
    """Each item's price id and its product id (None if unknown), in item order.

    Items carry `price` since the Prices API (2020) and a legacy `plan` before it (a plan
    id is also a valid price id, and the plan names its product since 2018-02-05). The
    oldest subscriptions have no items at all, only a top-level `plan`. An item that names
    neither is skipped; the caller decides whether a subscription without any is usable.
    """
    prices: dict[str, str | None] = {}
    for item in list_data(sub.get("items")):
        found = _price_and_product(item.get("price")) or _price_and_product(item.get("plan"))
        if found and found[0] not in prices:
            prices[found[0]] = found[1]
    if not prices and (found := _price_and_product(sub.get("plan"))):
        prices[found[0]] = found[1]
    return prices


def _price_and_product(value: Any) -> tuple[str, str | None] | None:
    """(id, product id) of a Price or Plan object, or of a bare price id."""
    if isinstance(value, str) and value:
        return value, None
    if isinstance(value, dict) and isinstance(value.get("id"), str) and value["id"]:
        return value["id"], expandable_id(value.get("product"))
    return None


def subscription_period_end(sub: Mapping[str, Any]) -> int | None:
    """End of the current period: on the items since basil, on the subscription before."""
    ends = [
        end
        for item in list_data(sub.get("items"))
        if (end := _int_or_none(item.get("current_period_end"))) is not None
    ]
    return min(ends) if ends else _int_or_none(sub.get("current_period_end"))


def subscription_period_start(sub: Mapping[str, Any]) -> int | None:
    """Start of the current period: on the items since basil, on the subscription before.

    The latest item start: a period restarts (renewal, a new interval, a reset anchor, the
    end of a trial) at the moment it happens, so this only moves forward.
    """
    starts = [
        start
        for item in list_data(sub.get("items"))
        if (start := _int_or_none(item.get("current_period_start"))) is not None
    ]
    return max(starts) if starts else _int_or_none(sub.get("current_period_start"))


def invoice_subscription_id(invoice: Mapping[str, Any]) -> str | None:
    """The invoice's subscription: `parent.subscription_details` since basil, top level before."""
    parent = invoice.get("parent")
    if isinstance(parent, dict):
        details = parent.get("subscription_details")
        if isinstance(details, dict) and (sub := expandable_id(details.get("subscription"))):
            return sub
    return expandable_id(invoice.get("subscription"))


def invoice_service_period_start(invoice: Mapping[str, Any]) -> int | None:
    """Start of the period the invoice pays for.

    A renewal invoice's own period_start/period_end describe the period just ended (usage
    is billed in arrears); its subscription lines carry the new period, so they win.
    """
    starts = [
        start
        for line in list_data(invoice.get("lines"))
        if isinstance(line.get("period"), dict)
        and (start := _int_or_none(line["period"].get("start"))) is not None
    ]
    if starts:
        return max(starts)
    return _int_or_none(invoice.get("period_end"))


def invoice_subscription_prices(invoice: Mapping[str, Any]) -> dict[str, str | None]:
    """The price id and product id (None if unknown) of each subscription line the invoice
    carries, in line order.

    A line names its price in `pricing.price_details` since basil, in `price` (and the
    legacy `plan`) before. Lines of one-off invoice items are left out: they bill
    something beside the subscription, not its period. Stripe puts up to ten lines in an
    event; an invoice with more has the rest behind `lines.has_more`.
    """
    prices: dict[str, str | None] = {}
    for line in list_data(invoice.get("lines")):
        if not _is_subscription_line(line):
            continue
        pricing = line.get("pricing")
        details = pricing.get("price_details") if isinstance(pricing, dict) else None
        found = None
        if isinstance(details, dict) and (price := expandable_id(details.get("price"))):
            found = (price, expandable_id(details.get("product")))
        found = (
            found or _price_and_product(line.get("price")) or _price_and_product(line.get("plan"))
        )
        if found and found[0] not in prices:
            prices[found[0]] = found[1]
    return prices


def _is_subscription_line(line: Mapping[str, Any]) -> bool:
    """Whether an invoice line bills a subscription item: `parent.type` says since basil,
    `type` before; a line that says neither counts."""
    parent = line.get("parent")
    if isinstance(parent, dict) and isinstance(parent.get("type"), str):
        return parent["type"] == "subscription_item_details"
    kind = line.get("type")
    return kind == "subscription" if isinstance(kind, str) else True


def customer_uuid_from(*candidates: Any) -> uuid.UUID | None:
    """The first candidate that is a well-formed UUID (our customer's id), if any."""
    for candidate in candidates:
        if isinstance(candidate, str):
            try:
                return uuid.UUID(candidate.strip())
            except ValueError:
                continue
    return None


def sets_customer_uuid(event: Event) -> bool:
    """Whether the event sets its object's `metadata.customer_uuid`, rather than carry it
    along: the object's creation, or an update whose `previous_attributes` name that key
    (Stripe lists there the metadata keys the update changed, each with its old value)."""
    if event.type.endswith(".created"):
        return True
    data = event.raw.get("data")
    previous = data.get("previous_attributes") if isinstance(data, dict) else None
    metadata = previous.get("metadata") if isinstance(previous, dict) else None
    return isinstance(metadata, dict) and "customer_uuid" in metadata


def metadata_customer_uuid(obj: Mapping[str, Any]) -> uuid.UUID | None:
    """`metadata.customer_uuid` of a Stripe object, when it holds a UUID."""
    return customer_uuid_from(_metadata(obj).get("customer_uuid"))


def price_amount(unit_amount: Any, currency: str) -> Decimal | None:
    """A Stripe unit amount (minor units) as a plan price in major units."""
    if not isinstance(unit_amount, int) or isinstance(unit_amount, bool):
        return None
    if currency.lower() in ZERO_DECIMAL_CURRENCIES:
        return Decimal(unit_amount)
    if currency.lower() in THREE_DECIMAL_CURRENCIES:
        return Decimal(unit_amount) / 1000
    return Decimal(unit_amount) / 100


def expandable_id(value: Any) -> str | None:
    """The id of a field that is either an id string or an expanded object."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return value["id"]
    return None


def list_data(value: Any) -> list[Mapping[str, Any]]:
    """The `data` array of a Stripe list object, keeping only objects."""
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        return [item for item in value["data"] if isinstance(item, dict)]
    return []


# 9999-12-31T23:59:59Z: the last second a datetime (and so a timestamptz parameter) can hold.
MAX_TIMESTAMP = 253_402_300_799


def timestamp(value: int | None) -> datetime | None:
    """Unix seconds as an aware datetime, for timestamptz columns."""
    if value is None:
        return None
    if not _is_timestamp(value):
        raise PayloadError(f"timestamp {value} is out of range")
    return datetime.fromtimestamp(value, UTC)


def _is_timestamp(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TIMESTAMP


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, str]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _required_str(obj: Mapping[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise PayloadError(f"{what} has no {key}")
    return value


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
