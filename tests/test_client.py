"""alphacut.Client / AsyncClient against a running server (tiny model; one real-model test)."""

from __future__ import annotations

import asyncio
import base64
import inspect
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

import alphacut
from alphacut import AlphacutAPIError, AlphacutTimeout, AsyncClient, Client
from alphacut.service.schemas import RemoveBgRequest
from tests.conftest import PHOTOS, real_settings, requires_real_model, subject_image


@pytest.fixture
def server(live_server, tiny_settings):
    return live_server(tiny_settings)


@pytest.fixture
def subject(tmp_path, file_server):
    image, mask = subject_image()
    path = tmp_path / "subject.png"
    image.save(path)
    base, root = file_server
    image.save(root / "client-subject.png")
    return image, mask, path, f"{base}/client-subject.png"


def _iou(out: Image.Image, mask: np.ndarray) -> float:
    alpha = np.asarray(out.getchannel("A") if out.mode == "RGBA" else out) > 127
    return float((alpha & mask).sum() / (alpha | mask).sum())


def test_remove_accepts_path_bytes_pil_and_url(server, subject):
    image, mask, path, url = subject
    with Client(server.url) as client:
        for source in (path, str(path), path.read_bytes(), image, url):
            result = client.remove(source)
            assert result.image is not None and result.image.mode == "RGBA"
            assert result.image.size == image.size and _iou(result.image, mask) > 0.9
            assert result.id > 0 and result.generation_time > 0
            assert result.output_url.startswith(server.url + "/outputs/")
            assert result.meta["width"] == 200 and result.content.startswith(b"\x89PNG")
        assert result.meta["image_url"] == url


def test_options_base64_and_save(server, subject, tmp_path):
    image, _, path, _ = subject
    with Client(server.url) as client:
        mask = client.remove(path, only_mask=True)
        assert mask.image.mode == "L" and mask.meta["only_mask"] is True
        jpg = client.remove(path, bg_color="#ffffff", format="jpg", crop=True)
        assert jpg.image.format == "JPEG" and jpg.image.size[0] < image.size[0]
        encoded = client.remove(path, base64=True, format="webp")
        assert encoded.output_url.endswith(".base64") and encoded.image.format == "WEBP"
        saved = encoded.save(tmp_path / "out.webp")
        assert Image.open(saved).format == "WEBP"
        bare = client.remove(path, download=False)
        assert bare.image is None and bare.content == b""


def test_processing_is_polled_until_done(server, subject):
    path = subject[2]
    with Client(server.url, poll_interval=0.05) as client:
        result = client.remove(path, instant_response=True)
        assert result.raw["status"] == "success" and result.image is not None
        assert result.meta["instant_response"] == "yes"
        assert client.fetch(result.id)["status"] == "success"


def test_typed_errors(live_server, tiny_settings, subject):
    server = live_server(tiny_settings, api_keys=("right",))
    path = subject[2]
    with pytest.raises(AlphacutAPIError) as err:
        Client(server.url, key="wrong").remove(path)
    assert err.value.status_code == 401 and err.value.message == "invalid or missing API key"
    client = Client(server.url, key="right")
    with pytest.raises(AlphacutAPIError) as err:
        client.remove(path, scale="300%")
    assert err.value.status_code == 422 and err.value.message.startswith("scale:")
    with pytest.raises(AlphacutAPIError) as err:
        client.remove(b"not an image")
    assert err.value.status_code == 415
    with pytest.raises(AlphacutAPIError) as err:
        client.fetch(999999)
    assert err.value.message == "Request not found"
    assert client.remove(path).image is not None
    with pytest.raises(alphacut.AlphacutClientError):
        Client("http://127.0.0.1:9").remove(path)  # nothing listens there


def test_timeout_while_processing():
    """A job that never ends: the client gives up after its timeout, with the job id."""
    polls = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("removebg_mask"):
            assert json.loads(request.content)["image"].startswith("data:image/png;base64,")
            return httpx.Response(
                200,
                json={
                    "status": "processing",
                    "id": 7,
                    "eta": 9,
                    "fetch_result": "http://x/api/v5/fetch/7",
                },
            )
        polls.append(str(request.url))
        return httpx.Response(200, json={"status": "processing", "id": 7, "output": []})

    client = Client("http://x", transport=httpx.MockTransport(handler), poll_interval=0.05)
    with pytest.raises(AlphacutTimeout) as err:
        client.remove(subject_image()[0], timeout=0.3)
    assert err.value.job_id == 7 and isinstance(err.value, TimeoutError)
    assert polls and all(url == "http://x/api/v5/fetch/7" for url in polls)


def test_errors_with_http_200_are_still_errors():
    transport = httpx.MockTransport(
        lambda request: httpx.Response(
            200, json={"status": "error", "message": "image is required"}
        )
    )
    with pytest.raises(AlphacutAPIError) as err:
        Client("http://x", transport=transport).remove(b"\x89PNG")
    assert err.value.status_code == 200 and err.value.message == "image is required"


def _keyword_parameters(method) -> set[str]:
    return {
        name
        for name, parameter in inspect.signature(method).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }


@pytest.mark.parametrize("client_class", [Client, AsyncClient])
def test_remove_takes_every_api_field_as_a_keyword(client_class):
    """A new request field in the API cannot be forgotten in the client (nor a stale one kept)."""
    api_fields = set(RemoveBgRequest.model_fields) - {"key", "image"}
    call_settings = {"timeout", "download"}
    assert _keyword_parameters(client_class.remove) - call_settings == api_fields


def _recording_transport(bodies: list[dict]) -> httpx.MockTransport:
    """Answers every request with an API error, after recording its JSON body (for the sync
    and the async client alike)."""

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(400, json={"status": "error", "message": "recorded"})

    return httpx.MockTransport(handler)


def test_unknown_keyword_is_a_type_error_and_nothing_is_sent():
    bodies: list[dict] = []
    sync_client = Client("http://x", transport=_recording_transport(bodies))
    with pytest.raises(TypeError, match="bgcolor"):
        sync_client.remove(b"\x89PNG", bgcolor="#fff")
    with pytest.raises(TypeError):
        sync_client.remove(b"\x89PNG", "png")  # the options are keyword-only

    async def main() -> None:
        async with AsyncClient("http://x", transport=_recording_transport(bodies)) as client:
            with pytest.raises(TypeError, match="bgcolor"):
                await client.remove(b"\x89PNG", bgcolor="#fff")

    asyncio.run(main())
    assert bodies == []


def test_only_the_given_fields_are_sent():
    """None means "not sent" (the server's default applies); False and 0 are sent."""
    bodies: list[dict] = []
    client = Client("http://x", key="k", transport=_recording_transport(bodies))
    with pytest.raises(AlphacutAPIError):
        client.remove(b"\x89PNG", only_mask=False, seed=0, crop=None, format="webp", timeout=5)
    assert bodies == [
        {
            "key": "k",
            "image": "data:image/png;base64," + base64.b64encode(b"\x89PNG").decode(),
            "only_mask": False,
            "seed": 0,
            "format": "webp",
        }
    ]


def test_async_client(server, subject):
    image, mask, path, url = subject

    async def main():
        async with AsyncClient(server.url, poll_interval=0.05) as client:
            results = await asyncio.gather(
                client.remove(path),
                client.remove(url, instant_response=True),
                client.remove(image, channels="alpha"),
            )
            with pytest.raises(AlphacutAPIError) as err:
                await client.remove(path, position="nowhere")
            return results, err.value

    (plain, polled, alpha), error = asyncio.run(main())
    assert _iou(plain.image, mask) > 0.9 and _iou(polled.image, mask) > 0.9
    assert alpha.image.mode == "L" and error.status_code == 422


@pytest.mark.real_model
@requires_real_model
def test_client_with_real_model(live_server, tmp_path):
    server = live_server(real_settings(tmp_path / "home"))
    photo = PHOTOS / "animal-1.jpg"
    result = Client(server.url).remove(photo, crop=True, format="webp")
    box = result.meta["foreground"]
    assert result.image.format == "WEBP" and result.image.mode == "RGBA"
    assert result.image.size == (box["width"], box["height"])
    alpha = np.asarray(result.image)[..., 3]
    assert 0.3 < (alpha > 127).mean() < 0.95  # a real subject, not an empty or full mask
    assert result.meta["model"] == "medium" and result.generation_time > 0
    original = Image.open(io.BytesIO(photo.read_bytes()))
    assert (result.meta["width"], result.meta["height"]) == original.size
