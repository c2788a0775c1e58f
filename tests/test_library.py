"""The library API: ``from alphacut import remove, new_session`` (alphacut/library.py)."""

from __future__ import annotations

import io
import textwrap

import numpy as np
import pytest
from PIL import Image
from typer.main import get_command

import alphacut
from alphacut import InvalidOptions, RemoveOptions, new_session, remove
from alphacut.cli import app
from alphacut.engine import Engine
from alphacut.pipeline.encode import encode_image
from alphacut.service.parsing import validate
from alphacut.service.schemas import RemoveBgRequest
from tests.conftest import (
    PHOTOS,
    real_settings,
    requires_real_model,
    run_python_with_tiny_model,
    subject_image,
)


@pytest.fixture
def session(tiny_settings):
    with new_session(settings=tiny_settings) as session:
        yield session


def test_remove_returns_the_kind_it_was_given(session):
    image, truth = subject_image()
    buffer = io.BytesIO()
    image.save(buffer, "PNG")

    as_bytes = remove(buffer.getvalue(), session=session)
    assert isinstance(as_bytes, bytes) and as_bytes.startswith(b"\x89PNG")
    as_image = remove(image, session=session)
    assert isinstance(as_image, Image.Image) and as_image.mode == "RGBA"
    as_array = remove(np.asarray(image), session=session)
    assert isinstance(as_array, np.ndarray) and as_array.shape == (*truth.shape, 4)
    # The three are the same cutout.
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(as_bytes))), as_array)
    assert np.array_equal(np.asarray(as_image), as_array)
    alpha = as_array[..., 3] > 127
    assert (alpha & truth).sum() / (alpha | truth).sum() > 0.9


def test_options_as_keywords_or_as_a_model(session):
    image, _ = subject_image()
    mask = remove(image, session=session, only_mask=True)
    assert mask.mode == "L"
    same = remove(image, session=session, options=RemoveOptions(only_mask=True))
    assert np.array_equal(np.asarray(mask), np.asarray(same))
    jpeg = remove(image, session=session, format="jpeg", bg_color="#fff", quality=80)
    assert jpeg.mode == "RGB"  # opaque background: no alpha channel
    with pytest.raises(TypeError, match="not both"):
        remove(image, session=session, options=RemoveOptions(), only_mask=True)


def test_bad_options_raise_the_apis_message(session):
    image, _ = subject_image()
    with pytest.raises(InvalidOptions, match="bgcolor: unknown option"):
        remove(image, session=session, bgcolor="#fff")
    with pytest.raises(InvalidOptions) as from_library:
        remove(image, session=session, mask_quality="ultra", crop_margin="inf")
    with pytest.raises(alphacut.AlphacutError) as from_api:
        validate(RemoveBgRequest, {"image": "x", "mask_quality": "ultra", "crop_margin": "inf"})
    assert from_library.value.message == from_api.value.message
    assert "mask_quality: Input should be 'normal' or 'high'" in from_library.value.message
    assert from_api.value.status_code == 422


def test_cli_and_api_accept_the_same_options():
    """Every option of the definition is an API field and a flag of `alphacut remove`."""
    command = get_command(app).commands["remove"]  # type: ignore[attr-defined]
    flags = {name for param in command.params for name in param.opts + param.secondary_opts}
    for field in RemoveOptions.model_fields:
        assert "--" + field.replace("_", "-") in flags, field
        assert field in RemoveBgRequest.model_fields, field
    # The API's own fields (key, image, webhook...) are not processing options.
    api_only = set(RemoveBgRequest.model_fields) - set(RemoveOptions.model_fields)
    assert api_only == {
        "key",
        "image",
        "seed",
        "webhook",
        "track_id",
        "base64",
        "temp",
        "instant_response",
        "model",
    }


def test_import_and_cli_work_without_the_server_extra(tmp_path, tiny_model_dir):
    """`pip install alphacut` (no server extra): the library and `alphacut remove` still work."""
    image, _ = subject_image()
    image.save(tmp_path / "photo.png")
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys
        SERVER = ("fastapi", "starlette", "uvicorn", "prometheus_client", "swagger_ui_bundle",
                  "multipart", "python_multipart")

        class NoServerExtra(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in SERVER:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)")

        sys.meta_path.insert(0, NoServerExtra())
        import alphacut
        from alphacut import remove, new_session, Client, RemoveOptions
        from alphacut.cli import main
        sys.argv = ["alphacut", "remove", {str(tmp_path / "photo.png")!r},
                    "-o", {str(tmp_path / "out.png")!r}, "--only-mask"]
        main()
        """
    )
    proc = run_python_with_tiny_model(script, tmp_path / "home", tiny_model_dir)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "out.png").mode == "L"


@pytest.mark.real_model
@requires_real_model
def test_remove_on_the_real_model_matches_the_engine(tmp_path):
    settings = real_settings(tmp_path)
    data = (PHOTOS / "animal-1.jpg").read_bytes()
    session = new_session(settings=settings)
    png = remove(data, session=session)
    engine = Engine(settings)
    try:
        expected = engine.remove(data, RemoveOptions())
    finally:
        engine.close()
    assert png == encode_image(expected.output, "png", None, settings.png_compress_level)
    cutout = np.asarray(Image.open(io.BytesIO(png)))
    assert cutout.shape[2] == 4 and 0.05 < (cutout[..., 3] > 127).mean() < 0.95
    mask = remove(Image.open(io.BytesIO(data)), session=session, only_mask=True)
    assert np.array_equal(np.asarray(mask), expected.mask)
    session.close()


def test_high_depth_and_float_images_are_scaled_like_decoded_files(session):
    image, truth = subject_image()
    grey8 = np.asarray(image.convert("L"))
    as_uint8 = remove(grey8, session=session, only_mask=True)
    # The same picture as 16-bit, as floats in 0..1 and as a PIL I;16 image: the same mask.
    as_uint16 = remove(grey8.astype(np.uint16) * 257, session=session, only_mask=True)
    as_float = remove(grey8.astype(np.float32) / 255, session=session, only_mask=True)
    as_i16 = remove(Image.fromarray(grey8.astype(np.uint16) * 257), session=session, only_mask=True)
    assert np.array_equal(as_uint16, as_uint8) and np.array_equal(as_float, as_uint8)
    assert np.array_equal(np.asarray(as_i16), as_uint8)
    assert ((as_uint8 > 127) & truth).sum() / ((as_uint8 > 127) | truth).sum() > 0.9


def test_unusable_arrays_are_typed_errors(session):
    with pytest.raises(alphacut.AlphacutError, match="HxW"):
        remove(np.zeros((4, 4, 2), np.uint8), session=session)
    with pytest.raises(alphacut.AlphacutError, match="uint8, uint16"):
        remove(np.zeros((4, 4, 3), np.complex64), session=session)


def test_a_library_session_opens_no_disk_cache_unless_asked(monkeypatch, tiny_settings):
    """The server keeps a 512 MiB mask cache under the home folder; the library does not
    write there unless ALPHACUT_CACHE_BYTES (or settings passed in) asks for it."""
    from alphacut import new_session

    monkeypatch.setenv("ALPHACUT_HOME", str(tiny_settings.home))
    monkeypatch.delenv("ALPHACUT_CACHE_BYTES", raising=False)
    with new_session() as session:
        assert session.settings.cache_bytes == 0 and session._engine.mask_cache is None
    monkeypatch.setenv("ALPHACUT_CACHE_BYTES", str(64 * 1024 * 1024))
    with new_session() as session:
        assert session._engine.mask_cache is not None
    with new_session(settings=tiny_settings) as session:  # as given: the server's default
        assert session.settings.cache_bytes == tiny_settings.cache_bytes
