"""Request and response examples for the OpenAPI docs (/docs).

Every shape is exactly what this server answers (tests/service/test_metrics.py checks that the
docs carry them) and the error messages are real ones, so a client author can code against them.
"""

from __future__ import annotations

from typing import Any

from alphacut.pipeline.options import RemoveOptions

_UUID = "2a231897-80f8-4cdd-82bf-e0d43e82462d"
_BASE = "http://127.0.0.1:7000"
_IMAGE = (
    "https://huggingface.co/datasets/diffusers/test-arrays/resolve/main/"
    "stable_diffusion_inpaint/boy.png"
)

REQUEST_EXAMPLES: dict[str, dict[str, Any]] = {
    "seed": {
        "summary": "The hosted API's body",
        "value": {
            "key": "",
            "seed": 12345,
            "image": _IMAGE,
            "post_process_mask": False,
            "only_mask": False,
            "alpha_matting": False,
            "webhook": None,
            "track_id": None,
        },
    },
    "matting": {
        "summary": "Alpha matting with its three thresholds, answered at once",
        "value": {
            "key": "",
            "image": _IMAGE,
            "alpha_matting": True,
            "alpha_matting_foreground_threshold": 240,
            "alpha_matting_background_threshold": 20,
            "alpha_matting_erode_size": 5,
            "instant_response": True,
        },
    },
    "output_options": {
        "summary": "White background, cropped with a 10% margin, as JPEG",
        "value": {
            "key": "",
            "image": _IMAGE,
            "bg_color": "#ffffff",
            "crop": True,
            "crop_margin": "10%",
            "format": "jpg",
            "quality": 90,
        },
    },
    "placement": {
        "summary": "Subject at 80% size, bottom-centred, over a background image, as WebP",
        "value": {
            "key": "",
            "image": _IMAGE,
            "bg_image": "https://example.com/studio.jpg",
            "scale": "80%",
            "position": "bottom",
            "format": "webp",
        },
    },
    "mask": {
        "summary": "The mask only (channels=alpha is the same as only_mask=true)",
        "value": {
            "key": "",
            "image": "data:image/png;base64,iVBORw0KGgo...",
            "channels": "alpha",
            "model": "medium",
        },
    },
}

_META: dict[str, Any] = {
    "alpha_matting": "0",
    "alpha_matting_background_threshold": 20,
    "alpha_matting_erode_size": 5,
    "alpha_matting_foreground_threshold": 240,
    "base64": "no",
    "file_prefix": f"{_UUID}.png",
    "image_url": _IMAGE,
    "instant_response": "no",
    "inverse_mask": False,
    "only_mask": False,
    "outdir": "outputs",
    "post_process_mask": "0",
    "seed": 12345,
    "temp": "no",
    "model": "medium",
    "width": 512,
    "height": 512,
}
# alphacut's additions: every other option, as the definition dumps its defaults.
_META.update(
    (name, value)
    for name, value in RemoveOptions().model_dump(mode="json").items()
    if name not in _META
)

SUCCESS_EXAMPLE: dict[str, Any] = {
    "status": "success",
    "generationTime": 2.31,
    "id": 1,
    "output": [f"{_BASE}/outputs/{_UUID}.png"],
    "meta": {**_META, "foreground": {"top": 37, "left": 92, "width": 331, "height": 475}},
}

_PROCESSING_MESSAGE = (
    "Request processing in background, you can fetch the result using fetch_result."
)

PROCESSING_EXAMPLE: dict[str, Any] = {
    "status": "processing",
    "id": 2,
    "eta": 3.1,
    "message": _PROCESSING_MESSAGE,
    "messege": _PROCESSING_MESSAGE,
    "tip": 'Your image is processing in the background; POST {"key": ...} to fetch_result, '
    "or wait for the webhook if you set one.",
    "fetch_result": f"{_BASE}/api/v5/fetch/2",
    "future_links": [f"{_BASE}/outputs/{_UUID}.png"],
    "output": [],
    "meta": {**_META, "instant_response": "yes"},
}

FETCH_PROCESSING_EXAMPLE: dict[str, Any] = {
    "status": "processing",
    "id": 2,
    "message": _PROCESSING_MESSAGE,
    "eta": 1.4,
    "output": [],
}

FAILED_EXAMPLE: dict[str, Any] = {
    "status": "failed",
    "id": 3,
    "message": "internal error while processing the image",
}

NOT_FOUND_EXAMPLE: dict[str, Any] = {
    "status": "failed",
    "id": "",
    "message": "Request not found",
    "output": "",
}

ERROR_EXAMPLE: dict[str, Any] = {
    "status": "error",
    "message": "bg_color: must be a hex colour (#rgb, #rrggbb, #rrggbbaa), 'r,g,b' or "
    "'r,g,b,a' with values 0..255, or a colour name",
}

# One real message per status the API answers with.
ERROR_MESSAGES: dict[int, tuple[str, str]] = {
    400: ("Malformed body or unusable image URL", "URL refused: 10.1.2.3 is not a public address"),
    401: ("Bad API key", "invalid or missing API key"),
    413: (
        "Image too large",
        "image is 12000x9000 = 108000000 pixels; the limit is 50000000 pixels",
    ),
    415: (
        "Not a supported image",
        "the data is not a supported image (JPEG, PNG, WebP, GIF, BMP, TIFF)",
    ),
    422: ("Invalid field value", ERROR_EXAMPLE["message"]),
    429: ("Too many queued jobs", "too many queued jobs for this key (10); retry later"),
}


# Example values by summary, to put back the nulls that FastAPI drops from the OpenAPI document.
_BY_SUMMARY: dict[str, Any] = {ex["summary"]: ex["value"] for ex in REQUEST_EXAMPLES.values()}


def json_examples(**examples: dict[str, Any]) -> dict[str, Any]:
    """``{"application/json": {"examples": ...}}`` for a route's ``responses=``.

    Each name must be unique across the app: it keys the null-restoring lookup.
    """
    named: dict[str, dict[str, Any]] = {
        name: {"summary": name.replace("_", " "), "value": value}
        for name, value in examples.items()
    }
    _BY_SUMMARY.update({ex["summary"]: ex["value"] for ex in named.values()})
    return {"application/json": {"examples": named}}


def restore_null_examples(node: Any) -> Any:
    """FastAPI encodes the OpenAPI document with ``exclude_none``, which deletes every null from
    the examples (``"webhook": null``, ``"foreground": null``...). Put the originals back."""
    if isinstance(node, dict):
        if "value" in node and node.get("summary") in _BY_SUMMARY:
            node["value"] = _BY_SUMMARY[node["summary"]]
        for child in node.values():
            restore_null_examples(child)
    elif isinstance(node, list):
        for child in node:
            restore_null_examples(child)
    return node
