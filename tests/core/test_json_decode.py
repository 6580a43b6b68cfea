"""The fast JSON decoder returns exactly what the standard library returns."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webhook.core.json_decode import loads
from webhook.stripe.payloads import PayloadError
from webhook.web.delivery import decode_json

EDGES = [
    '{"a": 123456789012345678901234567890}',  # beyond 64 bits: orjson would give a float
    '{"a": 18446744073709551616, "b": -9223372036854775809}',
    '{"a": 9223372036854775807}',
    '{"a": 1, "a": 2}',
    '"\\ud800"',  # a lone surrogate
    '{"a": 1e400}',
    '{"x": -0.0, "y": 1.5e-320}',
    '"\\u0000"',
    '{"id": "evt_1234567890123456789012"}',  # a long digit run inside a string
    "[]",
]


@pytest.mark.parametrize("text", EDGES)
def test_edge_cases_decode_as_json_does(text: str) -> None:
    expected = json.loads(text)
    for data in (text, text.encode(), memoryview(text.encode())):
        assert repr(loads(data)) == repr(expected)


@pytest.mark.parametrize("text", ["{bad", "", "[1,]", "01", '\ufeff{"a": 1}'])
def test_what_json_refuses_is_refused_with_its_error(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        loads(text)


@pytest.mark.parametrize("text", ["[NaN]", '{"a": Infinity}', "[1, -Infinity]"])
def test_non_finite_numbers_are_refused_as_json_and_postgresql_refuse_them(text: str) -> None:
    """The one difference from `json.loads`, which reads them: no such body could be stored."""
    for data in (text, text.encode()):
        with pytest.raises(ValueError, match="is not a JSON value"):
            loads(data)


@pytest.mark.parametrize("text", ['"\ud800"', '{"k": "\udcff"}'])
def test_a_text_with_a_raw_lone_surrogate_decodes_as_json_does(text: str) -> None:
    assert loads(text) == json.loads(text)  # it has no UTF-8 form for orjson


@pytest.mark.parametrize(
    "data", [b'\xef\xbb\xbf{"a": 1}', '{"a": "\u00e9"}'.encode("utf-16"), b'"\xed\xa0\x80"']
)
def test_bytes_in_other_forms_decode_as_json_does(data: bytes) -> None:
    assert repr(loads(data)) == repr(json.loads(data))  # a BOM, UTF-16, an encoded surrogate


def test_a_body_with_a_byte_order_mark_is_still_not_an_event() -> None:
    with pytest.raises(PayloadError, match="not valid JSON"):
        decode_json('\ufeff{"id": "evt_1", "object": "event"}')


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


@given(json_values, st.booleans())
def test_any_document_decodes_as_json_does(value, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)  # raw non-ASCII text too
    for data in (text, text.encode("utf-8", "surrogatepass")):
        try:
            expected = repr(json.loads(data))
        except ValueError as exc:
            expected = type(exc).__name__
        try:
            got = repr(loads(data))
        except ValueError as exc:
            got = type(exc).__name__
        assert got == expected
