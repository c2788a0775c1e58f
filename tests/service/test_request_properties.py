"""Hypothesis over the request schema: any JSON value in any field, at any nesting, gives
the request or one of alphacut's own errors (a 4xx), never a bare exception."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alphacut.errors import AlphacutError
from alphacut.service.parsing import parse_json_object, validate
from alphacut.service.schemas import FetchRequest, RemoveBgRequest

FIELDS = sorted(RemoveBgRequest.model_fields) + ["unknown_field"]

numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, 2**63, 2**64, -(2**63) - 1]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    numbers,
    st.text(max_size=30),
    # Strings that parse as numbers, percentages and colours out of range.
    st.sampled_from(
        ["inf", "-inf", "nan", "1e999", "9" * 400, "1e999%", "-5%", "50%,", "#fffff", "255,0"]
    ),
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
bodies = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=len(FIELDS))


def as_json(body: dict[str, Any]) -> bytes:
    # Python writes inf/nan as Infinity/NaN, which json.loads reads back as floats: the API
    # sees them as sent by a lenient client.
    return json.dumps(body).encode()


def process(raw: bytes) -> None:
    """What the server does with a JSON body before the image: parse, validate, the options
    record the job stores, and its JSON."""
    fields = parse_json_object(raw)
    request: RemoveBgRequest = validate(RemoveBgRequest, fields)
    stored = request.options().model_dump(mode="json")
    json.dumps(stored, allow_nan=False)
    validate(FetchRequest, fields)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, image=st.sampled_from(["data:image/png;base64,AAAA", "https://x.test/a"]))
def test_any_json_in_any_field_gives_a_typed_error(body: dict[str, Any], image: str) -> None:
    for candidate in (body, {"image": image, **body}, {**body, "image": image}):
        try:
            process(as_json(candidate))
        except AlphacutError as exc:
            assert 400 <= exc.status_code < 500, exc


@settings(max_examples=60, deadline=None)
@given(depth=st.integers(min_value=1, max_value=200_000), field=st.sampled_from(FIELDS))
def test_any_nesting_gives_a_typed_error(depth: int, field: str) -> None:
    nested = "[" * depth + "]" * depth
    raw = f'{{"image": "data:image/png;base64,AAAA", "{field}": {nested}}}'.encode()
    try:
        process(raw)
    except AlphacutError as exc:
        assert 400 <= exc.status_code < 500, exc


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_as_a_body_give_a_typed_error(raw: bytes) -> None:
    try:
        process(raw)
    except AlphacutError as exc:
        assert 400 <= exc.status_code < 500, exc


def test_stored_options_are_finite() -> None:
    request = validate(RemoveBgRequest, {"image": "x", "scale": "80%", "crop_margin": "10%"})
    stored = request.options().model_dump(mode="json")
    assert math.isfinite(stored["scale"])
