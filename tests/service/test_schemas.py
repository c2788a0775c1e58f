"""The request schemas (service/schemas.py): what null, "" and odd JSON types mean."""

from __future__ import annotations

import pytest

from alphacut.errors import AlphacutError
from alphacut.service.parsing import validate
from alphacut.service.schemas import FetchRequest, RemoveBgRequest


def _message(model: type, body: dict[str, object]) -> tuple[int, str]:
    with pytest.raises(AlphacutError) as caught:
        validate(model, body)
    return caught.value.status_code, caught.value.message


def test_image_null_or_empty_is_an_answer_not_a_default():
    assert _message(RemoveBgRequest, {"image": None}) == (
        422,
        "image: Input should be a valid string",
    )
    assert validate(RemoveBgRequest, {"image": ""}).image == ""  # then: "image must be a URL"
    assert _message(RemoveBgRequest, {})[0] == 400


def test_null_and_empty_options_mean_the_default():
    req = validate(RemoveBgRequest, {"image": "x", "seed": "", "quality": None, "crop": ""})
    assert req.seed is None and req.quality is None and req.crop is False


def test_keys_are_strings():
    assert validate(RemoveBgRequest, {"image": "x", "key": None}).key == ""
    assert _message(RemoveBgRequest, {"image": "x", "key": [1]}) == (422, "key: must be a string")


def test_empty_request_id_is_missing():
    assert validate(FetchRequest, {"request_id": ""}).request_id is None
    assert validate(FetchRequest, {"request_id": 7}).request_id == 7


@pytest.mark.parametrize(
    "field, value",
    [
        ("bg_color", 255),
        ("bg_color", [255.5, 0, 0]),
        ("bg_color", [True, False, False]),
        ("crop_margin", 10**5000),
        ("scale", 10**5000),
        ("position", [2.0, -1.0]),
        ("position", {"x": 1}),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, int) else None,
)
def test_odd_values_are_refused_with_the_fields_name(field, value):
    status, message = _message(RemoveBgRequest, {"image": "x", field: value})
    assert status == 422 and message.startswith(f"{field}: ")


def test_openapi_schema_shows_types_and_defaults_as_sent():
    properties = RemoveBgRequest.model_json_schema()["properties"]
    assert properties["crop_margin"]["default"] == 0
    assert properties["key"]["type"] == "string"
    for nullable in ("bg_color", "position", "scale"):
        assert {"type": "null"} in properties[nullable]["anyOf"], nullable
