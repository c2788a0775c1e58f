"""The CLI over the same pipeline, with the tiny test model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from alphacut.cli import app
from tests.conftest import run_python_with_tiny_model, subject_image

runner = CliRunner()


@pytest.fixture
def tiny_env(monkeypatch, tmp_path, tiny_model_dir):
    monkeypatch.setenv("ALPHACUT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ALPHACUT_MODEL_DIR", str(tiny_model_dir))
    monkeypatch.setenv("ALPHACUT_MODEL", "tiny")
    return tmp_path


def test_remove_single_file(tiny_env):
    image, mask = subject_image()
    src = tiny_env / "photo.jpg"
    image.save(src, quality=95)
    out = tiny_env / "cutout.png"
    result = runner.invoke(app, ["remove", str(src), "-o", str(out)])
    assert result.exit_code == 0, result.output
    cutout = Image.open(out)
    assert cutout.mode == "RGBA" and cutout.size == image.size
    alpha = np.asarray(cutout)[..., 3] > 127
    assert (alpha & mask).sum() / (alpha | mask).sum() > 0.9


def test_remove_folder_only_mask(tiny_env):
    folder = tiny_env / "in"
    (folder / "sub").mkdir(parents=True)
    subject_image()[0].save(folder / "a.png")
    subject_image(120, 90)[0].save(folder / "sub" / "b.webp")
    (folder / "notes.txt").write_text("not an image")
    out = tiny_env / "out"
    result = runner.invoke(
        app, ["remove", str(folder), "-o", str(out), "--only-mask", "--post-process-mask"]
    )
    assert result.exit_code == 0, result.output
    assert "2 of 2 images written" in result.output
    assert Image.open(out / "a.png").mode == "L"
    assert Image.open(out / "sub" / "b.png").size == (120, 90)


def test_remove_reports_bad_files(tiny_env):
    bad = tiny_env / "bad.png"
    bad.write_bytes(b"not a png")
    result = runner.invoke(app, ["remove", str(bad)])
    assert result.exit_code == 1 and "not a supported image" in result.output
    result = runner.invoke(app, ["remove", str(tiny_env / "missing.jpg")])
    assert result.exit_code == 1 and "no such file" in result.output
    result = runner.invoke(app, ["remove", str(bad), "--af", "300"])
    assert result.exit_code != 0
    # In a folder a bad file is skipped with a line, the others are written, the exit code is 1.
    folder = tiny_env / "mixed"
    folder.mkdir()
    subject_image()[0].save(folder / "good.png")
    (folder / "bad.png").write_bytes(b"not a png")
    result = runner.invoke(app, ["remove", str(folder), "-o", str(tiny_env / "mixed-out")])
    assert result.exit_code == 1
    assert "skipped" in result.output and "bad.png" in result.output
    assert "1 of 2 images written" in result.output
    assert (tiny_env / "mixed-out" / "good.png").is_file()


def test_models_list(tiny_env):
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0
    for name in ["medium", "small", "u2net", "birefnet-general", "tiny (default)"]:
        assert name in result.output
    assert "AGPL-3.0" in result.output


def test_remove_does_not_import_what_it_does_not_use(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Cold start: a one-shot `alphacut remove` of one PNG without a URL or matting loads
    neither the URL fetcher (httpx), scipy (matting only), the progress bar (folders only) nor
    pillow-heif (HEIF input only): ~0.25 s of imports on every call."""
    subject_image()[0].save(tmp_path / "photo.png")
    script = (
        "import os, sys\n"
        "from alphacut.cli import main\n"
        f"sys.argv = ['alphacut', 'remove', {str(tmp_path / 'photo.png')!r}, '--only-mask']\n"
        # main() leaves through os._exit (no teardown): list the modules on the way out.
        "leave = os._exit\n"
        "def listing_exit(code):\n"
        "    print(sorted({name.split('.')[0] for name in sys.modules}), flush=True)\n"
        "    leave(code)\n"
        "os._exit = listing_exit\n"
        "main()\n"
    )
    proc = run_python_with_tiny_model(script, tmp_path / "home", tiny_model_dir)
    assert proc.returncode == 0, proc.stderr
    loaded = proc.stdout.strip().splitlines()[-1]
    assert "'onnxruntime'" in loaded  # the check sees the command's imports
    for unused in ("httpx", "scipy", "fastapi", "uvicorn", "tqdm", "pillow_heif"):
        assert f"'{unused}'" not in loaded, unused


@pytest.mark.parametrize("valid", [True, False])
def test_remove_exits_without_teardown_keeping_output_and_exit_code(
    tmp_path: Path, tiny_model_dir: Path, valid: bool
) -> None:
    """`alphacut remove` ends with os._exit once its outputs are written (the session's
    teardown is waste for a one-shot command): what it printed, wrote and its exit code stay."""
    source = tmp_path / "photo.png"
    if valid:
        subject_image()[0].save(source)
    else:
        source.write_bytes(b"not an image")
    script = (
        "import sys\n"
        "from alphacut.cli import main\n"
        f"sys.argv = ['alphacut', 'remove', {str(source)!r}, '-o', {str(tmp_path / 'o.png')!r}]\n"
        "main()\n"
        "print('after main')\n"  # never reached: main() leaves the process
    )
    proc = run_python_with_tiny_model(script, tmp_path / "home", tiny_model_dir)
    assert "after main" not in proc.stdout
    if valid:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == str(tmp_path / "o.png")
        assert Image.open(tmp_path / "o.png").mode == "RGBA"
    else:
        assert proc.returncode == 1
        assert "not a supported image" in proc.stderr
