"""Bad input at volume: thousands of random, truncated or forged requests write nothing.

Hypothesis generates bodies and Stripe-Signature headers: random bytes, garbage header
text, headers that look like Stripe's (`t=...,v1=...`) with the wrong MAC or odd
timestamps, truncated copies of real signed events, and correctly signed JSON that is
not a Stripe event. Every answer must be 400 (or 413 for a body over the limit), never a
500, and the database must stay exactly as it was. They go through the Flask test client
(fast, same code), and a smaller run goes through gunicorn over real HTTP.

The requests are aimed at a database that already holds a customer part-way through a
subscription, and many bodies are copies of that customer's next real events, so an
input that slipped through would change rows.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from faultkit import (
    deliver_in_order,
    histories,
    http_request,
    prepare,
    write_fingerprint,
)
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stripe_events import Delivery
from webhook_support import SECRET

from webhook.web.app import MAX_BODY_BYTES

REFUSED = (400, 413)


def fuzz_settings(examples: int):
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,  # nothing written outside the test run
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


# -- the database the requests are aimed at --------------------------------------------------


class Target:
    """Users part-way through their histories; `pending` are their real events still to come."""

    def __init__(self, conn: psycopg.Connection, pending: list[Delivery]) -> None:
        self.conn = conn
        self.pending = pending
        self.before = write_fingerprint(conn)

    def inbox_size(self) -> tuple[int, int]:
        return self.conn.execute(
            "select count(*), coalesce(sum(deliveries), 0) from webhook_private.events"
        ).fetchone()

    def unchanged(self) -> None:
        assert write_fingerprint(self.conn) == self.before, "a refused request wrote something"


@pytest.fixture
def target(db_url: str, conn: psycopg.Connection) -> Target:
    hs = histories(2, seed=61, cuts=(10, 10))
    delivered = [replace(h, deliveries=h.deliveries[:4]) for h in hs]
    prepare(db_url, hs)
    deliver_in_order(db_url, delivered)
    assert {row[0] for row in conn.execute("select plan_id from public.customer")} != {None}
    return Target(conn, [d for h in hs for d in h.deliveries[4:]])


# -- what the requests are made of -----------------------------------------------------------

# Header text as a WSGI server hands it over: latin-1, no line breaks.
LATIN1 = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")
HEX = "0123456789abcdef"
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
non_strings = json_values.filter(lambda v: not isinstance(v, str))


def mac(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signed(body: bytes, timestamp: int | str | None = None) -> dict[str, str]:
    """Headers with a correct signature of `body` by the endpoint's secret."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {"Stripe-Signature": f"t={ts},v1={mac(SECRET, ts, body)}"}


timestamps = st.one_of(
    st.integers(-(10**6), 10**11).map(str),
    st.integers(-600, 600).map(lambda d: str(int(time.time()) + d)),
    # Latin-1 has digits int() cannot read: the superscripts, which str.isdigit() accepts.
    st.text(st.sampled_from("0123456789\u00b2\u00b3\u00b9"), min_size=1, max_size=12),
    st.integers(4000, 5000).map(lambda n: "1" * n),  # more digits than int() reads
    st.text(LATIN1, max_size=20),
)


@st.composite
def stripe_like_header(draw, body: bytes) -> str:
    """`t=...,v1=...` with every part plausible and the MAC never right."""
    ts = draw(timestamps)
    items = [f"t={ts}"]
    for _ in range(draw(st.integers(0, 3))):
        scheme = draw(st.sampled_from(["v1", "v1", "v0", "v2", "V1", " v1"]))
        value = draw(
            st.one_of(
                st.text(HEX, max_size=70),
                st.just(mac("whsec_not_the_secret", ts, body)),
                st.just(mac(SECRET, ts, body + b"\n")),  # the secret, another body
                st.just(mac(SECRET, ts, body)[:-1]),  # the right MAC, one digit short
                st.text(LATIN1, max_size=20),
            )
        )
        items.append(f"{scheme}={value}")
    items += draw(st.lists(st.text(LATIN1, max_size=20), max_size=2))
    return draw(st.sampled_from([",", ", "])).join(draw(st.permutations(items)))


def drop_or_set(document: dict, path: tuple[str, ...], value: Any, drop: bool) -> None:
    for key in path[:-1]:
        document = document[key]
    if drop:
        document.pop(path[-1], None)
    else:
        document[path[-1]] = value


# Values that make parse_event refuse the envelope, per field.
BROKEN_FIELDS: dict[tuple[str, ...], st.SearchStrategy] = {
    ("object",): st.one_of(
        st.sampled_from(["v2.core.event", "Event", "", "events", " event"]),
        json_values.filter(lambda v: v != "event"),
    ),
    ("id",): st.one_of(
        st.text(max_size=30).filter(lambda s: not s.startswith("evt_")),
        st.text(min_size=252, max_size=260).map(lambda s: "evt_" + s),  # longer than 255
        non_strings,
    ),
    ("type",): st.one_of(st.just(""), st.text(min_size=256, max_size=300), non_strings),
    ("created",): st.one_of(
        st.integers(max_value=-1),
        st.floats(),
        st.booleans(),
        st.text(max_size=12),
        st.none(),
        st.lists(st.integers(), max_size=2),
    ),
    ("data",): json_values.filter(lambda v: not isinstance(v, dict) or "object" not in v),
    ("data", "object"): json_values.filter(lambda v: not isinstance(v, dict)),
}


@st.composite
def broken_event(draw, pending: list[Delivery]) -> bytes:
    """A real pending event with one envelope field removed or of the wrong kind."""
    event = json.loads(draw(st.sampled_from(pending)).body)
    path = draw(st.sampled_from(sorted(BROKEN_FIELDS)))
    drop = draw(st.booleans())
    value = None if drop else draw(BROKEN_FIELDS[path])
    drop_or_set(event, path, value, drop)
    return json.dumps(event, ensure_ascii=draw(st.booleans())).encode()


# -- posting and checking ------------------------------------------------------------------------


def refused(client: FlaskClient, target: Target, body: bytes, headers: dict[str, str]) -> int:
    """Post; the answer must be a refusal, and the inbox must not have moved."""
    before = target.inbox_size()
    response = client.post("/webhook", data=body, headers=headers)
    assert response.status_code in REFUSED, (response.status_code, response.get_json())
    assert "error" in response.get_json()
    assert target.inbox_size() == before
    return response.status_code


def with_signature(header: str | None) -> dict[str, str]:
    return {} if header is None else {"Stripe-Signature": header}


# -- through the Flask test client -------------------------------------------------------------


def test_random_bodies_with_garbage_headers_are_refused(client, target) -> None:
    @fuzz_settings(1200)
    @given(data=st.data())
    def run(data) -> None:
        body = data.draw(
            st.one_of(
                st.binary(max_size=600),
                st.sampled_from([d.body for d in target.pending]),
                json_values.map(lambda v: json.dumps(v).encode()),
            )
        )
        header = data.draw(st.none() | st.text(LATIN1, max_size=200))
        refused(client, target, body, with_signature(header))

    run()
    target.unchanged()


def test_stripe_like_headers_without_the_right_mac_are_refused(client, target) -> None:
    @fuzz_settings(1000)
    @given(data=st.data())
    def run(data) -> None:
        body = data.draw(
            st.one_of(st.sampled_from([d.body for d in target.pending]), st.binary(max_size=200))
        )
        header = data.draw(stripe_like_header(body))
        refused(client, target, body, with_signature(header))

    run()
    target.unchanged()


def test_truncated_tampered_and_stale_copies_of_real_events_are_refused(client, target) -> None:
    @fuzz_settings(600)
    @given(data=st.data())
    def run(data) -> None:
        original = data.draw(st.sampled_from(target.pending)).body
        cut = data.draw(st.integers(0, len(original) - 1))
        kind = data.draw(
            st.sampled_from(
                ["truncated, signed", "truncated, full body's signature", "stale", "future"]
            )
        )
        now = int(time.time())
        if kind == "truncated, signed":
            body, headers = original[:cut], signed(original[:cut])
        elif kind == "truncated, full body's signature":
            body, headers = original[:cut], signed(original)
        else:  # the whole event, correctly signed, outside the five-minute window
            # 30 s past the 300 s tolerance: the app reads the clock later than this line,
            # and a "future" stamp only 301 s ahead is back inside the window a second on.
            skew = data.draw(st.integers(330, 10**6))
            body, headers = (
                original,
                signed(original, now - skew if kind == "stale" else now + skew),
            )
        refused(client, target, body, headers)

    run()
    target.unchanged()


def test_correctly_signed_bodies_that_are_not_stripe_events_are_refused(client, target) -> None:
    @fuzz_settings(800)
    @given(data=st.data())
    def run(data) -> None:
        body = data.draw(
            st.one_of(
                broken_event(target.pending),
                json_values.map(lambda v: json.dumps(v).encode()),
                st.sampled_from(target.pending).map(lambda d: d.body.decode().encode("utf-16")),
                st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
                st.integers(50_000, 100_000).map(lambda n: b"[" * n),
            )
        )
        refused(client, target, body, signed(body))

    run()
    target.unchanged()


def test_bodies_over_the_limit_are_refused_with_413(client, target) -> None:
    event = json.loads(target.pending[0].body)
    event["data"]["object"]["metadata"] = {"padding": "x" * MAX_BODY_BYTES}
    padded = json.dumps(event).encode()
    for body in (padded, b"\0" * (MAX_BODY_BYTES + 1)):
        assert refused(client, target, body, signed(body)) == 413
    target.unchanged()


# -- through gunicorn, over real HTTP -----------------------------------------------------------


def test_bad_input_over_real_http_is_refused(db_url, target, gunicorn) -> None:
    server = gunicorn(db_url, threads=2)

    def refused_over_http(body: bytes, headers: dict[str, str]) -> int:
        before = target.inbox_size()
        reply = http_request(server.port, "POST", "/webhook", body, headers, timeout=30)
        assert reply.status in REFUSED, reply
        assert target.inbox_size() == before
        return reply.status

    @fuzz_settings(200)
    @given(data=st.data())
    def run(data) -> None:
        real = data.draw(st.sampled_from(target.pending)).body
        body = data.draw(st.one_of(st.binary(max_size=300), st.just(real), st.just(real[:-1])))
        header = data.draw(
            st.one_of(st.none(), st.text(LATIN1, max_size=120), stripe_like_header(body))
        )
        refused_over_http(body, with_signature(header))

    big = b"{" + b" " * MAX_BODY_BYTES + b"}"
    assert refused_over_http(big, signed(big)) == 413
    run()
    target.unchanged()


# -- the cases the fuzzing found, pinned -----------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("t=\u00b2,v1=" + "0" * 64, id="superscript-digit-timestamp"),
        pytest.param("t=" + "1" * 4301 + ",v1=" + "0" * 64, id="4301-digit-timestamp"),
    ],
)
def test_a_timestamp_that_is_digits_but_not_a_number_is_refused(header, client, target) -> None:
    """`str.isdigit()` accepts what `int()` cannot read: superscripts, and more digits than
    Python converts (4300). Anyone can send these; the answer must be 400, not 500."""
    body = target.pending[0].body
    refused(client, target, body, {"Stripe-Signature": header})
    target.unchanged()


def test_a_correctly_signed_timestamp_beyond_float_range_is_refused(client, target) -> None:
    """A 400-digit timestamp with a valid MAC: the tolerance check must refuse it."""
    body = target.pending[0].body
    refused(client, target, body, signed(body, 10**400))
    target.unchanged()


def test_a_non_ascii_character_in_the_v1_signature_is_refused(client, target) -> None:
    """`hmac.compare_digest` raises TypeError for non-ASCII str; that must be a 400."""
    body = target.pending[0].body
    refused(client, target, body, {"Stripe-Signature": f"t={int(time.time())},v1=\u00e9"})
    target.unchanged()


# -- correctly signed events holding values PostgreSQL cannot store ----------------------------


def _set_metadata(value: str):
    def change(event: dict) -> None:
        event["data"]["object"]["metadata"] = {"note": value}

    return change


UNSTORABLE = {
    "created-after-year-9999": lambda e: e.update(created=253_402_300_800),
    "created-2**64": lambda e: e.update(created=2**64),
    "nul-in-the-id": lambda e: e.update(id=e["id"] + "\u0000"),
    "nul-in-the-type": lambda e: e.update(type="charge.succeeded\u0000"),
    "nul-in-a-metadata-value": _set_metadata("a\u0000b"),
    "lone-surrogate-in-a-metadata-value": _set_metadata("\ud800"),
}


def accepted_or_refused(client: FlaskClient, target: Target, event: dict) -> int:
    """Post a correctly signed event: stored (200) or refused with nothing written (400);
    never a 500, which Stripe would retry for days and then give up on."""
    body = json.dumps(event).encode()  # ASCII: NULs and surrogates as \\u escapes
    before_events, before_deliveries = target.inbox_size()
    response = client.post("/webhook", data=body, headers=signed(body))
    assert response.status_code in (200, 400), (response.status_code, response.get_json())
    if response.status_code == 400:
        assert target.inbox_size() == (before_events, before_deliveries)
    else:  # a new event id every time: one more event in the inbox
        assert target.inbox_size() == (before_events + 1, before_deliveries + 1)
    return response.status_code


@pytest.mark.parametrize("change", list(UNSTORABLE.values()), ids=list(UNSTORABLE))
def test_a_signed_event_with_a_value_postgresql_cannot_store_is_not_a_500(
    change, client, target
) -> None:
    event = json.loads(target.pending[0].body)
    event["id"] = f"evt_unstorable{int(time.time() * 1e6)}"
    change(event)
    if accepted_or_refused(client, target, event) == 400:
        target.unchanged()


def test_signed_events_with_arbitrary_values_are_stored_or_refused(client, target) -> None:
    any_text = st.text(st.characters(codec=None), max_size=30)  # NUL, surrogates, anything
    counter = iter(range(10**9))

    @fuzz_settings(300)
    @given(data=st.data())
    def run(data) -> None:
        event = json.loads(data.draw(st.sampled_from(target.pending)).body)
        # A fixed-width serial first, so that no two examples can make the same id.
        event["id"] = f"evt_fuzz{next(counter):09d}_" + data.draw(any_text)
        event["type"] = data.draw(st.sampled_from(["charge.succeeded", event["type"]]))
        event["created"] = data.draw(st.integers(0, 253_402_300_799) | st.integers(0, 2**70))
        event["data"]["object"]["metadata"] = data.draw(st.dictionaries(any_text, any_text))
        accepted_or_refused(client, target, event)

    run()
