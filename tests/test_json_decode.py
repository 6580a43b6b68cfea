"""The fast JSON decoder returns exactly what the standard library returns."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webhook.json_decode import loads

EDGES = [
    '{"a": 123456789012345678901234567890}',  # beyond 64 bits: orjson would give a float
    '{"a": 18446744073709551616, "b": -9223372036854775809}',
    '{"a": 9223372036854775807}',
    '{"a": 1, "a": 2}',
    '"\\ud800"',  # a lone surrogate
    "[NaN, Infinity, -Infinity]",
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


@pytest.mark.parametrize("text", ["{bad", "", "[1,]", "01"])
def test_what_json_refuses_is_refused_with_its_error(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        loads(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


@given(json_values)
def test_any_document_decodes_as_json_does(value) -> None:
    text = json.dumps(value)
    assert repr(loads(text)) == repr(json.loads(text))
