"""trigger: sign and post realistic test events to a running server, offline.

Like `stripe trigger`, but it needs no Stripe account: the events are built locally in the
shape of the API version asked for and signed with the server's secret
(STRIPE_WEBHOOK_SECRET, else the development secret in ./.dev-secret). Stripe ids are
derived from the customer's uuid, so separate invocations describe one subscription.
The server answers as soon as it has stored an event; trigger then waits (at most --wait
seconds, APPLY_WAIT_SECONDS by default) until its drain has applied them, prints each
outcome, and fails if some were still not applied.
"""

import http.client
import json
import os
import re
import secrets
import time
import urllib.error
import urllib.request
import uuid
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

import click
import psycopg

from webhook.cli import cli
from webhook.cli.context import database
from webhook.cli.devsecret import existing_dev_secret
from webhook.cli.serve_command import DEMO_CUSTOMER
from webhook.core.config import KNOWN_STATUSES
from webhook.core.errors import ConfigError, ProjectError
from webhook.database.embedded import DEFAULT_PGDATA
from webhook.fixtures import API_VERSIONS, ENDIVE_API, MONTH, Delivery, EventFactory

# Stripe's event types: dotted lowercase words (invoice.paid, customer.subscription.updated).
# Any such type is sent; those the service has no handler for are stored and ignored.
EVENT_TYPE = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)+")
# An API version: its release date, then (from 2024-09-30 on) the release's name.
API_VERSION = re.compile(r"(\d{4}-\d{2}-\d{2})(\.[a-z]+)?")

# How long trigger waits, by default, for the server's drain to apply what it posted.
APPLY_WAIT_SECONDS = 15.0

SUBSCRIPTION_TYPES = (
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
)


@cli.command()
@click.argument("event_type")
@click.option(
    "--customer",
    "customer_uuid",
    default=DEMO_CUSTOMER,
    show_default=True,
    help="Our customer's uuid.",
)
@click.option(
    "--price", default="price_sample_pro", show_default=True, help="Stripe price id of the plan."
)
@click.option(
    "--product",
    default=None,
    help="Stripe product of --price, e.g. prod_sample_pro for a price that is not in plans"
    " but belongs to a plan's product. Default: derived from the price id.",
)
@click.option(
    "--status",
    # Stripe's own statuses only: any other word was sent, read as not entitled, and
    # silently took the customer's plan away.
    type=click.Choice(sorted(KNOWN_STATUSES)),
    default=None,
    help="Subscription status (subscription events).",
)
@click.option(
    "--subscription",
    "subscription_id",
    default=None,
    help="Stripe subscription id, for a customer's second subscription (an add-on's, say)."
    " Default: one derived from the customer's uuid, the same at every invocation.",
)
@click.option("--url", default="http://localhost:8000/webhook", show_default=True)
@click.option(
    "--api-version",
    default=ENDIVE_API,
    show_default=True,
    help=f"Payload shape, e.g. {', '.join(API_VERSIONS)}.",
)
@click.option(
    "--wait",
    "wait_seconds",
    type=click.FloatRange(0, 600),
    default=APPLY_WAIT_SECONDS,
    show_default=True,
    help="Seconds to wait for the server's drain to apply the events (0: do not wait).",
)
@click.pass_context
def trigger(
    ctx: click.Context,
    event_type: str,
    customer_uuid: str,
    price: str,
    product: str | None,
    status: str | None,
    subscription_id: str | None,
    url: str,
    api_version: str,
    wait_seconds: float,
) -> None:
    """Post a signed EVENT_TYPE (or `lifecycle`: sign-up, renewal, cancel) to URL."""
    _check_url(url)
    if event_type != "lifecycle" and not EVENT_TYPE.fullmatch(event_type):
        raise click.BadParameter(
            f"{event_type!r} is not a Stripe event type (such as invoice.paid) or `lifecycle`",
            param_hint="EVENT_TYPE",
        )
    if not _is_api_version(api_version):
        raise click.BadParameter(
            f"{api_version!r} is not a Stripe API version (YYYY-MM-DD, or YYYY-MM-DD.name"
            f" such as {ENDIVE_API})",
            param_hint="'--api-version'",
        )
    try:
        customer = uuid.UUID(customer_uuid)
    except ValueError:
        raise click.BadParameter(
            f"{customer_uuid!r} is not a uuid", param_hint="--customer"
        ) from None
    secret = _signing_secret()
    events = _TriggerEvents(customer, price, api_version, product, subscription_id)
    deliveries = (
        events.lifecycle() if event_type == "lifecycle" else [events.single(event_type, status)]
    )
    answers = []
    for delivery in deliveries:
        status_code, answer = _post(url, delivery, secret)
        if status_code >= 300:
            click.echo(f"{delivery.type:<45} {delivery.id}  -> {status_code} {answer}")
            raise ProjectError(f"the server answered {status_code} to {delivery.type}")
        answers.append((delivery, status_code, answer))
    ids = [d.id for d in deliveries]
    outcomes = _wait_until_applied(ctx, ids, wait_seconds) if wait_seconds > 0 else {}
    if outcomes is None:
        click.echo(
            "note: trigger cannot see these events in a database (it reads --database-url,"
            " DATABASE_URL, or ./.pgdata of `make dev`), so it does not know whether they"
            " were applied",
            err=True,
        )
        outcomes = {}
    for delivery, status_code, answer in answers:
        applied = f"; applied: {outcomes[delivery.id]}" if delivery.id in outcomes else ""
        if outcomes.get(delivery.id) == "received":
            applied = "; not applied yet"
        click.echo(f"{delivery.type:<45} {delivery.id}  -> {status_code} {answer}{applied}")
    if "received" in outcomes.values():
        raise ProjectError(
            f"the server stored the events, but nothing applied them within"
            f" {wait_seconds:g}s: is a drain running (WEB_DRAIN=off needs"
            " `python -m webhook drain`)?"
        )


def _check_url(url: str) -> None:
    """Refuse, as a usage error naming --url, a URL that urllib cannot post to: not
    http(s), no host, a port that is not a number from 1 to 65535, a bracket left open,
    or a space or control character (http.client's own errors for these were tracebacks)."""
    reason = None
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError: not a number, or out of range
    except ValueError as exc:
        parts, port, reason = None, None, str(exc)
    if parts is not None and reason is None:
        if parts.scheme not in ("http", "https"):
            reason = "not an http(s) URL"
        elif not parts.hostname:
            reason = "no host"
        elif port == 0:
            reason = "port 0"
        elif any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
            reason = "a space or control character"
    if reason is not None:
        raise click.BadParameter(
            f"{url!r} is not a URL to post to ({reason})", param_hint="'--url'"
        )


def _is_api_version(text: str) -> bool:
    """Whether `text` names an API version the way Stripe does: a real date, maybe a name."""
    shape = API_VERSION.fullmatch(text)
    if shape is None:
        return False
    try:
        date.fromisoformat(shape.group(1))
    except ValueError:
        return False
    return True


def _wait_until_applied(
    ctx: click.Context, event_ids: list[str], wait_seconds: float
) -> dict[str, str] | None:
    """The outcome of each event once the server's drain has applied it (queued mode),
    or `received` for one still queued after `wait_seconds`; None when they cannot be
    seen.

    Read from the database the server uses (--database-url, DATABASE_URL, or the embedded
    one of `make dev`); when there is none, it cannot be read, or it holds none of the
    events (another server's database), the answers alone are shown.
    """
    explicit = ctx.obj.get("database_url")
    pgdata = Path(os.environ.get("EMBEDDED_PGDATA") or DEFAULT_PGDATA)
    if not explicit and not (pgdata / "PG_VERSION").exists():
        return None  # no database of this project here: start none just to read outcomes
    try:
        with database(ctx, autocommit=True) as conn:
            deadline = time.monotonic() + wait_seconds
            while True:
                rows = conn.execute(
                    "select id, status, coalesce(error, '') from webhook_private.events"
                    " where id = any(%s)",
                    (event_ids,),
                ).fetchall()
                if not rows:
                    return None  # not the server's database
                if all(status != "received" for _, status, _ in rows) or (
                    time.monotonic() > deadline
                ):
                    return {
                        event_id: status + (f" ({error})" if error else "")
                        for event_id, status, error in rows
                    }
                time.sleep(0.05)
    except (ProjectError, psycopg.Error):
        return None


def _signing_secret() -> str:
    configured = [
        s.strip() for s in os.environ.get("STRIPE_WEBHOOK_SECRET", "").split(",") if s.strip()
    ]
    secret = configured[0] if configured else existing_dev_secret()
    if not secret:
        raise ConfigError(
            "no secret to sign with: set STRIPE_WEBHOOK_SECRET, or run `make dev` once to create ./.dev-secret"
        )
    return secret


class _TriggerEvents:
    """Events about one customer's subscription, with ids stable across invocations."""

    def __init__(
        self,
        customer: uuid.UUID,
        price: str,
        api_version: str,
        product: str | None = None,
        subscription: str | None = None,
    ) -> None:
        self.customer = customer
        self.price = price
        # The whole uuid: test uuids often share their first digits (…0001, …0003).
        self.stripe_customer = f"cus_dev_{customer.hex}"
        self.subscription = subscription or f"sub_dev_{customer.hex}"
        # A seed of its own each run: ids from a fixed seed would repeat those of the run
        # before, and the service would answer each event as a duplicate of that one.
        self.factory = EventFactory(api_version, start=int(time.time()), seed=secrets.randbits(64))
        if product:
            self.factory.known_price(price, product=product)

    def single(self, event_type: str, status: str | None) -> Delivery:
        f = self.factory
        if event_type.startswith("checkout.session."):
            return f.checkout_completed(
                customer=self.stripe_customer,
                subscription=self.subscription,
                client_reference_id=str(self.customer),
                async_event=event_type.endswith("async_payment_succeeded"),
            )
        if event_type in SUBSCRIPTION_TYPES:
            default = {
                "customer.subscription.deleted": "canceled",
                "customer.subscription.paused": "paused",
            }
            return f.subscription(
                event_type,
                sub_id=self.subscription,
                customer=self.stripe_customer,
                status=status or default.get(event_type, "active"),
                price_ids=[self.price],
            )
        if event_type in ("invoice.paid", "invoice.payment_succeeded", "invoice.payment_failed"):
            return f.invoice(
                event_type,
                invoice_id=f.new_id("in_"),
                customer=self.stripe_customer,
                subscription=self.subscription,
                billing_reason="subscription_cycle",
                price_ids=[self.price],
                period_start=f.clock,
                period_end=f.clock + MONTH,
            )
        if event_type in ("customer.created", "customer.updated", "customer.deleted"):
            return f.customer(
                event_type,
                customer_id=self.stripe_customer,
                metadata={"customer_uuid": str(self.customer)},
            )
        return f.other(event_type)

    def lifecycle(self) -> list[Delivery]:
        """Checkout, subscription incomplete then active, first invoice, renewal, cancel at period end."""
        f = self.factory
        start = f.clock
        common = {
            "sub_id": self.subscription,
            "customer": self.stripe_customer,
            "price_ids": [self.price],
        }
        events = [
            f.checkout_completed(
                customer=self.stripe_customer,
                subscription=self.subscription,
                client_reference_id=str(self.customer),
            ),
            f.subscription(
                "customer.subscription.created", status="incomplete", period_start=start, **common
            ),
            f.subscription(
                "customer.subscription.updated", status="active", period_start=start, **common
            ),
        ]
        f.tick()
        events.append(
            f.invoice(
                "invoice.paid",
                invoice_id=f.new_id("in_"),
                customer=self.stripe_customer,
                subscription=self.subscription,
                billing_reason="subscription_create",
                price_ids=[self.price],
                period_start=start,
                period_end=start + MONTH,
            )
        )
        f.tick()
        renewal = f.new_id("in_")
        for invoice_type in ("invoice.paid", "invoice.payment_succeeded"):
            events.append(
                f.invoice(
                    invoice_type,
                    invoice_id=renewal,
                    customer=self.stripe_customer,
                    subscription=self.subscription,
                    billing_reason="subscription_cycle",
                    price_ids=[self.price],
                    period_start=start + MONTH,
                    period_end=start + 2 * MONTH,
                )
            )
        f.tick()
        events.append(
            f.subscription(
                "customer.subscription.updated",
                status="active",
                period_start=start + MONTH,
                cancel_at_period_end=True,
                **common,
            )
        )
        return events


def _post(url: str, delivery: Delivery, secret: str) -> tuple[int, str]:
    request = urllib.request.Request(
        url, data=delivery.body, headers=delivery.headers(secret), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, _short(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _short(exc.read())
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ProjectError(f"cannot reach {url}: {reason} (is `make dev` running?)") from None
    except (http.client.InvalidURL, ValueError) as exc:  # what _check_url did not foresee
        raise ProjectError(f"cannot post to {url!r}: {exc}") from None


def _short(body: bytes) -> str:
    try:
        return json.dumps(json.loads(body), separators=(",", ":"))
    except ValueError:
        return body[:200].decode("utf-8", "replace")
