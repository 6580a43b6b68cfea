"""The Stripe stand-in behaves as Stripe documents these endpoints (so sync's tests mean it).

Raw HTTP, no client of ours: what a request gets is what Stripe's API would answer.
"""

import http.client
import json
import time
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from servers import request
from stripe_standin import API_KEY, StripeStandIn

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def standin() -> Iterator[StripeStandIn]:
    server = StripeStandIn()
    statuses = ["active", "canceled", "trialing", "incomplete_expired", "active", "canceled",
                "past_due"]  # fmt: skip
    server.add(
        "subscription",
        [
            {"id": f"sub_{n:02d}", "created": 1000 + n // 2, "status": status}
            for n, status in enumerate(statuses)
        ],
    )
    server.add(
        "event",
        [
            {"id": "evt_a", "created": 10, "type": "customer.subscription.updated"},
            {"id": "evt_b", "created": 20, "type": "invoice.paid"},
            {"id": "evt_c", "created": 30, "type": "charge.succeeded"},
        ],
    )
    yield server
    server.close()


def get(standin: StripeStandIn, path: str, params: list[tuple[str, str]] | None = None, **kw):
    port = int(standin.url.rsplit(":", 1)[1])
    target = path + (f"?{urlencode(params)}" if params else "")
    return request(port, "GET", target, headers=kw.get("headers", AUTH))


def ids(body: dict) -> list[str]:
    return [o["id"] for o in body["data"]]


def test_lists_are_newest_first_with_cursors(standin) -> None:
    status, first = get(standin, "/v1/subscriptions", [("status", "all"), ("limit", "3")])
    assert status == 200
    assert ids(first) == ["sub_06", "sub_05", "sub_04"] and first["has_more"] is True
    _, second = get(
        standin,
        "/v1/subscriptions",
        [("status", "all"), ("limit", "3"), ("starting_after", "sub_04")],
    )
    assert ids(second) == ["sub_03", "sub_02", "sub_01"] and second["has_more"] is True
    _, last = get(
        standin,
        "/v1/subscriptions",
        [("status", "all"), ("limit", "3"), ("starting_after", "sub_01")],
    )
    assert ids(last) == ["sub_00"] and last["has_more"] is False
    _, before = get(
        standin,
        "/v1/subscriptions",
        [("status", "all"), ("limit", "2"), ("ending_before", "sub_02")],
    )
    assert ids(before) == ["sub_04", "sub_03"]


def test_without_a_status_canceled_subscriptions_are_hidden(standin) -> None:
    _, default = get(standin, "/v1/subscriptions", [("limit", "100")])
    assert "sub_01" not in ids(default) and "sub_05" not in ids(default)
    assert "sub_03" in ids(default)  # incomplete_expired is not "canceled"
    _, ended = get(standin, "/v1/subscriptions", [("status", "ended")])
    assert set(ids(ended)) == {"sub_01", "sub_03", "sub_05"}
    _, every = get(standin, "/v1/subscriptions", [("status", "all"), ("limit", "100")])
    assert len(ids(every)) == 7


def test_limits_and_cursors_are_checked(standin) -> None:
    assert get(standin, "/v1/subscriptions", [("limit", "101")])[0] == 400
    assert get(standin, "/v1/subscriptions", [("starting_after", "sub_nope")])[0] == 400
    _, default = get(standin, "/v1/subscriptions", [("status", "all")])
    assert len(ids(default)) == 7  # fewer than the default limit of 10


def test_a_key_is_required(standin) -> None:
    status, body = get(standin, "/v1/subscriptions", headers={})
    assert status == 401 and body["error"]["type"] == "invalid_request_error"
    assert (
        get(standin, "/v1/subscriptions", headers={"Authorization": "Bearer sk_test_x"})[0] == 401
    )


@pytest.mark.parametrize("form", ["types[]", "types[{n}]"])
def test_event_types_in_both_array_forms(standin, form) -> None:
    wanted = ["invoice.paid", "customer.subscription.updated"]
    params = [(form.format(n=n), t) for n, t in enumerate(wanted)]
    _, body = get(standin, "/v1/events", params)
    assert ids(body) == ["evt_b", "evt_a"]
    _, window = get(standin, "/v1/events", [*params, ("created[gte]", "15")])
    assert ids(window) == ["evt_b"]


def test_more_than_twenty_types_is_refused(standin) -> None:
    params = [(f"types[{n}]", f"type.{n}") for n in range(21)]
    assert get(standin, "/v1/events", params)[0] == 400


def test_the_rate_limit_answers_429_with_retry_after() -> None:
    server = StripeStandIn(rate_limit=3)
    try:
        statuses = [get(server, "/v1/events")[0] for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        port = int(server.url.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/v1/events", headers=AUTH)
        reply = conn.getresponse()
        assert reply.status == 429
        assert reply.getheader("Retry-After") == "1"
        assert reply.getheader("Stripe-Rate-Limited-Reason") == "global-rate"
        assert json.loads(reply.read())["error"]["message"] == "Request rate limit exceeded."
        conn.close()
        time.sleep(1.05)
        assert get(server, "/v1/events")[0] == 200
    finally:
        server.close()


def test_injected_faults(standin) -> None:
    standin.fail_next(1, status=503)
    assert get(standin, "/v1/events")[0] == 503
    assert get(standin, "/v1/events")[0] == 200
    assert get(standin, "/v1/subscriptions/sub_00")[1]["id"] == "sub_00"
    assert get(standin, "/v1/subscriptions/sub_zz")[0] == 404
