"""The removebg_mask contract over real HTTP, with the tiny test model, in each mode: embedded
(in-process workers, SQLite, local folders) and distributed (an API node of the session's
cluster: PostgreSQL, Celery workers on Redis, S3 storage; see tests/cluster.py)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.cluster import MODES
from tests.conftest import LiveServer, make_tiny_settings, png_bytes, png_data_uri, subject_image

SEED_BODY = {
    "key": "",
    "seed": 12345,
    "image": None,
    "post_process_mask": False,
    "only_mask": False,
    "alpha_matting": False,
    "webhook": None,
    "track_id": None,
}


@pytest.fixture
def served_subject(file_server):
    base, root = file_server
    image, mask = subject_image()
    image.save(root / "subject.png")
    return f"{base}/subject.png", image, mask


@pytest.fixture
def server(live_server, tiny_settings):
    return live_server(tiny_settings)


@pytest.fixture
def mode_server(live_server, mode_settings):
    """A server in each mode: in-process workers, and an API node of a Celery cluster."""
    return live_server(mode_settings)


@pytest.fixture(scope="module", params=MODES)
def shared_mode_server(request, tmp_path_factory, tiny_model_dir) -> Iterator[LiveServer]:
    """One server per mode for the whole module, for the tests whose requests cannot disturb
    each other (bad requests, plain successes): a cluster's API node takes ~2 s to start and
    stop, which the 16 bad inputs would pay each."""
    if request.param == "embedded":
        settings = make_tiny_settings(tmp_path_factory.mktemp("routes") / "home", tiny_model_dir)
    else:
        settings = request.getfixturevalue("shared_cluster").settings
    with LiveServer(settings) as server:
        yield server


def post(server, body, path="/api/v5/removebg_mask", **kwargs) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=150, **kwargs)


def test_seed_body_gives_seed_shape(mode_server, served_subject):
    server = mode_server
    url, image, mask = served_subject
    response = post(server, {**SEED_BODY, "image": url})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "success"
    assert isinstance(body["generationTime"], float)
    assert isinstance(body["id"], int)
    assert len(body["output"]) == 1 and body["output"][0].startswith(server.url + "/outputs/")
    meta = body["meta"]
    expected_types = {
        "alpha_matting": str,
        "alpha_matting_background_threshold": int,
        "alpha_matting_erode_size": int,
        "alpha_matting_foreground_threshold": int,
        "base64": str,
        "file_prefix": str,
        "image_url": str,
        "instant_response": str,
        "only_mask": bool,
        "outdir": str,
        "post_process_mask": str,
        "seed": int,
        "temp": str,
    }
    for key, kind in expected_types.items():
        assert isinstance(meta[key], kind), key
    assert meta["alpha_matting"] == "0" and meta["post_process_mask"] == "0"
    assert meta["base64"] == meta["temp"] == meta["instant_response"] == "no"
    assert (
        meta["alpha_matting_foreground_threshold"],
        meta["alpha_matting_background_threshold"],
        meta["alpha_matting_erode_size"],
    ) == (240, 20, 5)
    assert meta["seed"] == 12345 and meta["image_url"] == url
    assert meta["file_prefix"].endswith(".png") and body["output"][0].endswith(meta["file_prefix"])

    served = httpx.get(body["output"][0])
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    out = Image.open(io.BytesIO(served.content))
    assert out.mode == "RGBA" and out.size == image.size
    alpha = np.asarray(out)[..., 3] > 127
    assert (alpha & mask).sum() / (alpha | mask).sum() > 0.9
    # colour of the subject is kept
    assert np.abs(np.asarray(out)[..., :3][mask].mean(0) - (235, 220, 210)).max() < 3


def test_ids_increase(mode_server, served_subject):
    server = mode_server
    url = served_subject[0]
    ids = [post(server, {"image": url}).json()["id"] for _ in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3


def test_only_mask_and_inverse(mode_server, served_subject):
    server = mode_server
    url, image, mask = served_subject
    body = post(server, {"image": url, "only_mask": "true"}).json()
    assert body["meta"]["only_mask"] is True
    out = Image.open(io.BytesIO(httpx.get(body["output"][0]).content))
    assert out.mode == "L" and out.size == image.size
    plain = np.asarray(out)
    body = post(server, {"image": url, "only_mask": 1, "inverse_mask": "yes"}).json()
    inverted = np.asarray(Image.open(io.BytesIO(httpx.get(body["output"][0]).content)))
    assert np.array_equal(inverted, 255 - plain)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v6/image_editing/removebg_mask",
        "/api/v1/image_editing/removebg_mask",
        "/api/v1/enterprise/image_editing/removebg_mask",
    ],
)
def test_all_paths(shared_mode_server, served_subject, path):
    server = shared_mode_server
    assert post(server, {"image": served_subject[0]}, path=path).json()["status"] == "success"


def test_data_uri_form_and_multipart(mode_server, served_subject):
    server = mode_server
    _, image, _ = served_subject
    uri = png_data_uri(image)
    body = post(server, {"image": uri, "track_id": 7, "seed": None}).json()
    assert body["status"] == "success" and body["meta"]["image_url"] == "data-uri"
    assert isinstance(body["meta"]["seed"], int)
    form = httpx.post(
        server.url + "/api/v5/removebg_mask",
        timeout=150,
        data={"image": uri, "only_mask": "yes", "seed": "3"},
    ).json()
    assert form["status"] == "success" and form["meta"]["only_mask"] is True
    assert form["meta"]["seed"] == 3
    multipart = httpx.post(
        server.url + "/api/v5/removebg_mask",
        timeout=150,
        data={"post_process_mask": "1"},
        files={"image": ("s.png", png_bytes(image), "image/png")},
    ).json()
    assert multipart["status"] == "success" and multipart["meta"]["post_process_mask"] == "1"


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({}, 400, "image is required"),
        ({"image": ""}, 400, "image"),
        ({"image": "ftp://example.com/a.png"}, 400, "http(s)"),
        ({"image": "file:///etc/passwd"}, 400, "http(s)"),
        ({"image": "http://169.254.169.254/latest"}, 400, "not a public address"),
        ({"image": "http://10.1.2.3/a.png"}, 400, "not a public address"),
        ({"image": "data:image/png;base64,bm90IGFuIGltYWdl"}, 415, "not a supported image"),
        ({"image": "data:text/html,hello"}, 400, "data URI"),
        ({"image": "URL", "alpha_matting_foreground_threshold": 256}, 422, "less than or equal"),
        ({"image": "URL", "alpha_matting_background_threshold": -1}, 422, "greater than"),
        ({"image": "URL", "alpha_matting_erode_size": 65}, 422, "less than or equal"),
        ({"image": "URL", "alpha_matting": "maybe"}, 422, "boolean"),
        ({"image": "URL", "seed": "abc"}, 422, "seed"),
        ({"image": "URL", "model": "../../etc/passwd"}, 422, "unknown model"),
        ({"image": "URL", "webhook": "http://192.168.1.1/hook"}, 400, "webhook"),
        ({"image": "URL_404"}, 422, "HTTP 404"),
    ],
)
def test_bad_input(shared_mode_server, served_subject, body, status, words):
    server = shared_mode_server
    url = served_subject[0]
    body = {
        k: (url if v == "URL" else url.replace("subject", "missing") if v == "URL_404" else v)
        for k, v in body.items()
    }
    response = post(server, body)
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["status"] == "error" and words in payload["message"]
    assert "Traceback" not in response.text


def test_malformed_bodies(shared_mode_server):
    server = shared_mode_server
    for content, ctype, status in [
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b"", "application/json", 400),
        (b"<xml/>", "application/xml", 415),
    ]:
        response = httpx.post(
            server.url + "/api/v5/removebg_mask", content=content, headers={"content-type": ctype}
        )
        assert response.status_code == status, (content, response.text)
        assert response.json()["status"] == "error"


def test_not_an_image_url(shared_mode_server, file_server):
    server = shared_mode_server
    base, root = file_server
    (root / "page.html").write_text("<html>hello</html>")
    response = post(server, {"image": f"{base}/page.html"})
    assert response.status_code == 415 and response.json()["status"] == "error"


def test_truncated_image(shared_mode_server, file_server):
    server = shared_mode_server
    base, root = file_server
    data = png_bytes(subject_image(400, 300)[0])
    (root / "cut.png").write_bytes(data[: len(data) // 2])
    response = post(server, {"image": f"{base}/cut.png"})
    assert response.status_code == 415 and "truncated" in response.json()["message"]


def test_image_too_large(live_server, mode_settings, served_subject):
    server = live_server(mode_settings, max_pixels=1000)
    response = post(server, {"image": served_subject[0]})
    assert response.status_code == 413 and response.json()["status"] == "error"


def test_download_size_limit(live_server, mode_settings, served_subject):
    server = live_server(mode_settings, max_download_bytes=100)
    response = post(server, {"image": served_subject[0]})
    assert response.status_code == 413


def test_api_keys(live_server, mode_settings, served_subject):
    server = live_server(mode_settings, api_keys=("k1", "k2"))
    assert post(server, {"image": served_subject[0]}).status_code == 401
    assert post(server, {"key": "nope", "image": served_subject[0]}).status_code == 401
    assert post(server, {"key": "k2", "image": served_subject[0]}).json()["status"] == "success"


def test_errors_http_200(live_server, mode_settings):
    server = live_server(mode_settings, errors_http_200=True)
    response = post(server, {})
    assert response.status_code == 200 and response.json()["status"] == "error"


def test_unknown_route_is_json(mode_server):
    server = mode_server
    response = httpx.get(server.url + "/api/v5/nothing")
    assert response.status_code == 404 and response.json()["status"] == "error"
    assert httpx.get(server.url + "/outputs/../../etc/passwd").status_code == 404


def test_health(mode_server):
    server = mode_server
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    assert httpx.get(server.url + "/readyz").json()["status"] == "ok"


def test_docs_are_served_without_cdn(server):
    page = httpx.get(server.url + "/docs")
    assert page.status_code == 200 and "cdn" not in page.text.lower()
    assert "docs-assets/swagger-ui-bundle.js" in page.text
    assert httpx.get(server.url + "/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert httpx.get(server.url + "/openapi.json").json()["paths"]["/api/v5/removebg_mask"]
