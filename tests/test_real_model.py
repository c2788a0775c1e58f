"""End to end on the real ISNet model and real photos (skipped loudly if weights are missing)."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from alphacut.engine import Engine
from alphacut.models.registry import BUILTIN_MODELS
from tests.conftest import PHOTOS, evaldata, real_settings, requires_real_model
from tests.jobhelpers import scrape, value

pytestmark = [pytest.mark.real_model, requires_real_model]


def _image_path(stem: str) -> Path:
    return next((evaldata("general") / "images").glob(stem + ".*"))


def _gt(stem: str) -> np.ndarray:
    return np.asarray(Image.open(evaldata("general") / "masks" / f"{stem}.png")) > 127


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    engine = Engine(real_settings(tmp_path_factory.mktemp("real-home")))
    yield engine
    engine.close()


def _stems() -> list[str]:
    """A spread of horse_ and davis_ images (every 20th / 8th), 16 in all."""
    stems = sorted(p.stem for p in (evaldata("general") / "images").iterdir())
    horses = [s for s in stems if s.startswith("horse_")][::20]
    davis = [s for s in stems if s.startswith("davis_")][::8]
    return horses + davis


def _bare_model_mask(session: ort.InferenceSession, image: Image.Image) -> np.ndarray:
    """The model run 'the usual way': the original fp16 file, bilinear in and out."""
    x = np.asarray(image.convert("RGB").resize((1024, 1024), Image.Resampling.BILINEAR), np.float32)
    x = ((x - 128.0) / 256.0).transpose(2, 0, 1)[None]
    prob = session.run(["output"], {"input": x})[0][0, 0]
    up = Image.fromarray(prob.astype(np.float32), mode="F").resize(
        image.size, Image.Resampling.BILINEAR
    )
    return np.asarray(up) > 0.5


def test_mask_quality_against_ground_truth_and_bare_model(engine):
    stems = _stems()
    assert len(stems) >= 12
    spec = BUILTIN_MODELS["medium"]
    bare = ort.InferenceSession(
        str(spec.path(engine.settings.model_dir)), providers=["CPUExecutionProvider"]
    )
    ours, theirs = {}, {}
    for stem in stems:
        image = Image.open(_image_path(stem)).convert("RGB")
        result = engine.remove(image)
        ours[stem] = _iou(result.mask > 127, _gt(stem))
        theirs[stem] = _iou(_bare_model_mask(bare, image), _gt(stem))
    horse = np.mean([ours[s] for s in stems if s.startswith("horse")])
    davis = np.mean([ours[s] for s in stems if s.startswith("davis")])
    print(
        f"IoU horse {horse:.3f} davis {davis:.3f}; bare model "
        f"{np.mean([theirs[s] for s in stems]):.3f} vs ours {np.mean(list(ours.values())):.3f}"
    )
    assert horse > 0.88 and davis > 0.75
    # The production pipeline must not lose quality against running the model directly.
    assert np.mean(list(ours.values())) >= np.mean(list(theirs.values())) - 0.005


def test_seed_body_over_http(live_server, tmp_path, file_server):
    base, root = file_server
    stem = _stems()[1]
    shutil.copy(_image_path(stem), root / "real.png")
    server = live_server(real_settings(tmp_path / "home"))
    body = {
        "key": "",
        "seed": 12345,
        "image": f"{base}/real.png",
        "post_process_mask": False,
        "only_mask": False,
        "alpha_matting": False,
        "webhook": None,
        "track_id": None,
    }
    response = httpx.post(server.url + "/api/v5/removebg_mask", json=body, timeout=120)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["status"] == "success" and payload["meta"]["seed"] == 12345
    png = httpx.get(payload["output"][0], timeout=30)
    assert png.headers["content-type"] == "image/png"
    out = Image.open(io.BytesIO(png.content))
    source = Image.open(root / "real.png")
    assert out.format == "PNG" and out.mode == "RGBA" and out.size == source.size
    assert _iou(np.asarray(out)[..., 3] > 127, _gt(stem)) > 0.85


def test_the_cutout_and_its_mask_asked_at_once_run_the_model_once(live_server, tmp_path):
    """Two requests for one photo at the same time (a client fetching the cutout and the mask,
    or retrying): the second waits for the first's map instead of running the model again."""
    server = live_server(real_settings(tmp_path / "home"))
    photo = base64.b64encode((PHOTOS / "car-1.jpg").read_bytes()).decode()
    api = server.url + "/api/v5/removebg_mask"

    def ask(fields: dict[str, object]) -> bytes:
        body = {"image": "data:image/jpeg;base64," + photo, **fields}
        answer = httpx.post(api, json=body, timeout=150).json()
        assert answer["status"] == "success", answer
        return httpx.get(answer["output"][0], timeout=30).content

    with ThreadPoolExecutor(2) as pool:
        cutout, mask = pool.map(ask, ({}, {"only_mask": True}))
    samples = scrape(server)
    assert value(samples, "alphacut_mask_cache_misses_total") == 1
    assert value(samples, "alphacut_mask_cache_hits_total") == 1
    alpha = np.asarray(Image.open(io.BytesIO(cutout)))[..., 3]
    assert np.array_equal(alpha, np.asarray(Image.open(io.BytesIO(mask)).convert("L")))


def test_cli_remove_folder_of_photos(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ["animal-1.jpg", "car-1.jpg", "girl-1.jpg"]:
        shutil.copy(PHOTOS / name, photos / name)
    out = tmp_path / "cutouts"
    cli = Path(sys.executable).with_name("alphacut")
    proc = subprocess.run(
        [str(cli), "remove", str(photos), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "3 of 3 images written" in proc.stdout
    for name in ["animal-1", "car-1", "girl-1"]:
        cutout = Image.open(out / f"{name}.png")
        assert cutout.mode == "RGBA" and cutout.size == Image.open(photos / f"{name}.jpg").size
        alpha = np.asarray(cutout)[..., 3]
        assert 0.02 < (alpha > 127).mean() < 0.98  # found a subject, not everything

    single = tmp_path / "one.png"
    proc = subprocess.run(
        [str(cli), "remove", str(photos / "car-1.jpg"), "-o", str(single), "--only-mask"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert Image.open(single).mode == "L"


def test_heic_photo_gives_the_same_cutout_as_its_png(engine):
    """An iPhone-style HEIC upload (optional `pillow-heif`, installed by `make setup`)."""
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    stem = next(s for s in _stems() if s.startswith("davis_"))  # 854x480
    image = Image.open(_image_path(stem)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="HEIF", quality=90)
    from_heic = engine.remove(buffer.getvalue())
    from_png = engine.remove(image)
    assert from_heic.output.shape == (image.height, image.width, 4)
    assert _iou(from_heic.mask > 127, from_png.mask > 127) > 0.97
    assert _iou(from_heic.mask > 127, _gt(stem)) > 0.75


def test_saved_graph_with_mapped_weights_gives_the_same_map(tmp_path):
    """ISNet from its saved optimised graph (weights in a side file, mapped) gives the map a
    session optimised in memory gives, bit for bit, on a real photo; the weights are the
    file's pages, not a private copy."""
    from alphacut.models.session import cache_path, create_session

    model = BUILTIN_MODELS["medium"].runtime_path(real_settings(tmp_path).model_dir)
    cache = tmp_path / "graphs"
    image = Image.open(PHOTOS / "animal-1.jpg").convert("RGB").resize((1024, 1024))
    x = ((np.asarray(image, np.float32) - 128.0) / 256.0).transpose(2, 0, 1)[None]
    in_memory = create_session(model, ("cpu",), input_size=1024)
    name = in_memory.get_inputs()[0].name
    reference = in_memory.run(None, {name: x})[0]
    del in_memory
    create_session(model, ("cpu",), cache_dir=cache, input_size=1024)  # optimises and saves
    (weights,) = cache.glob("*.data")
    assert weights.stat().st_size > 100e6  # ISNet's weights, beside a small graph
    assert cache_path(cache, model, 1024, 1).stat().st_size < 1e6
    mapped = create_session(model, ("cpu",), cache_dir=cache, input_size=1024)
    maps = Path("/proc/self/maps")
    if maps.is_file():
        assert str(weights) in maps.read_text()
    np.testing.assert_array_equal(mapped.run(None, {name: x})[0], reference)
