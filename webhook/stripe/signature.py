"""Stripe-Signature verification over the raw request body, for every configured secret.

A thin layer over `stripe.WebhookSignature.verify_header` that adds what the library
leaves to the caller: several secrets at once (Stripe signs with each active secret while
one is being rolled), a timestamp check in both directions (the library only rejects old
timestamps, and only when given a tolerance), and one error type with a reason short
enough to return to the sender. Reasons never include the header or the secret.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import stripe

from webhook.core.errors import ProjectError


class SignatureError(ProjectError):
    """The request does not carry a valid, current Stripe signature.

    `code` is one of a few fixed words (missing, garbled, encoding, mismatch, timestamp),
    safe to use as a metric label.
    """

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SignatureVerifier:
    """Verifies deliveries against a fixed set of secrets and a timestamp tolerance."""

    secrets: Sequence[str] = field(repr=False)  # never in a log line or a traceback
    tolerance_seconds: int = 300

    def __post_init__(self) -> None:
        # Fail when the service is configured, not at the first delivery.
        if not self.secrets or any(not s or not s.strip() for s in self.secrets):
            raise ValueError("a signature verifier needs at least one non-empty secret")
        if self.tolerance_seconds <= 0:
            raise ValueError("the timestamp tolerance must be positive")

    def verify(self, payload: bytes, header: str | None, *, now: float | None = None) -> int:
        """Return the signed timestamp, or raise SignatureError saying what is wrong."""
        if not header or not header.strip():
            raise SignatureError("missing Stripe-Signature header", "missing")
        timestamp = _timestamp(header)
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise SignatureError("body is not UTF-8", "encoding") from None
        if not any(self._matches(text, header, secret) for secret in self.secrets):
            raise SignatureError("no signature matches the endpoint's signing secret", "mismatch")
        current = time.time() if now is None else now
        if abs(current - timestamp) > self.tolerance_seconds:
            raise SignatureError("timestamp outside the tolerance window", "timestamp")
        return timestamp

    @staticmethod
    def _matches(text: str, header: str, secret: str) -> bool:
        try:
            # tolerance=None: the timestamp is checked by `verify`, in both directions.
            return bool(stripe.WebhookSignature.verify_header(text, header, secret, tolerance=None))
        except stripe.SignatureVerificationError:
            return False


MAX_TIMESTAMP_DIGITS = 12  # unix seconds until the year 33658; anything longer is garbage


def _timestamp(header: str) -> int:
    """The `t=` value of the header; a header without `t` or any `v1` is garbled.

    Only ASCII is accepted: the stripe library compares signatures with
    hmac.compare_digest, which raises TypeError on other characters.
    """
    if not header.isascii():
        raise SignatureError("garbled Stripe-Signature header: not ASCII", "garbled")
    fields: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise SignatureError("garbled Stripe-Signature header", "garbled")
        fields.setdefault(key, []).append(value)
    stamps = fields.get("t", [])
    # The header is ASCII, so isdigit() means 0-9 only (it also accepts "²", which int() refuses).
    if len(stamps) != 1 or not stamps[0].isdigit() or len(stamps[0]) > MAX_TIMESTAMP_DIGITS:
        raise SignatureError("garbled Stripe-Signature header: no timestamp", "garbled")
    if not fields.get("v1"):
        raise SignatureError("no v1 signature in Stripe-Signature header", "garbled")
    return int(stamps[0])
