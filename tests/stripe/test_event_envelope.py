"""The envelope fields parse_event reads besides id, type and object."""

import pytest

from webhook.stripe.payloads import parse_event


def envelope(**fields: object) -> dict:
    return {"id": "evt_1", "object": "event", "type": "ping", "created": 1,
            "data": {"object": {"id": "x"}}, **fields}  # fmt: skip


@pytest.mark.parametrize(
    ("value", "live"),
    [(True, True), (False, False), ("false", False), ("true", False), (1, False), (None, False)],
)
def test_an_event_is_live_only_when_stripe_says_true(value, live) -> None:
    """`livemode` is a JSON boolean; a string "false" is not a live event."""
    assert parse_event(envelope(livemode=value)).livemode is live


@pytest.mark.parametrize(
    ("value", "account"), [("acct_1", "acct_1"), (None, None), ("", None), (7, None)]
)
def test_a_connected_accounts_event_names_its_account(value, account) -> None:
    assert parse_event(envelope(account=value)).account == account
    assert parse_event(envelope()).account is None
