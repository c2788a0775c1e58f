"""The CLI over the same pipeline, with the tiny test model."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
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


# Newcomer stumbles (issue 18).


def test_help_shows_flags_as_flags_and_cuts_nothing(monkeypatch):
    """`alphacut remove --help` at 80 columns: yes/no options are flags (no `<bool>` value to
    type), every option's name and help text is there whole (wrapped, never cut with "…"),
    and the default output name is documented."""
    from alphacut.cli_flags import flag_name
    from alphacut.pipeline.options import RemoveOptions

    monkeypatch.setenv("COLUMNS", "80")
    result = runner.invoke(app, ["remove", "--help"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "<bool>" not in text and "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    words = " ".join(text.split())  # as wrapped, then joined again
    for name, field in RemoveOptions.model_fields.items():
        assert flag_name(name) in text, name
        # The help is whole but for the breaks textwrap makes after a hyphen.
        assert " ".join((field.description or "").split()) in words.replace("- ", "-"), name
    assert "--only-mask " in text and "--decontaminate / --no-decontaminate" in text
    assert "photo.out.png" in words and "NAME.out.png beside each input" in words
    assert "--only-mask, not --only-mask true" in words
    # The list of commands shows each one's first sentence whole, not cut with "...".
    result = runner.invoke(app, ["--help"])
    assert "..." not in result.output.split("Commands:")[1]
    assert "write cutouts or masks." in " ".join(result.output.split())


@pytest.mark.parametrize(("columns", "widest"), [(80, 80), (200, 120)])
def test_help_fits_the_terminal_up_to_120_columns(columns, widest):
    """The terminal's width (COLUMNS here), up to 120 columns (CliRunner forces 80)."""
    cli = Path(sys.executable).with_name("alphacut")
    env = {**os.environ, "COLUMNS": str(columns)}
    proc = subprocess.run(
        [str(cli), "remove", "--help"], env=env, capture_output=True, text=True, check=True
    )
    width = max(len(line) for line in proc.stdout.splitlines())
    assert widest - 15 < width <= widest


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--only-mask", "true"],
            "--only-mask is a flag and takes no value: write --only-mask to turn it on, or "
            "leave it out ('true' was read as an input file, and there is none)",
        ),
        (
            ["--decontaminate", "False"],
            "--decontaminate is a flag and takes no value: write --decontaminate to turn it "
            "on, or --no-decontaminate to turn it off",
        ),
        (["--bilinear-upsampling", "yes"], "--bilinear-upsampling is a flag and takes no value"),
    ],
)
def test_a_value_after_a_flag_is_explained(tiny_env, args, expected):
    photo = tiny_env / "photo.png"
    subject_image()[0].save(photo)
    result = runner.invoke(app, ["remove", str(photo), *args], catch_exceptions=False)
    assert result.exit_code == 1
    assert expected in result.output
    assert "no such file" not in result.output
    assert not (tiny_env / "photo.out.png").exists()


def test_a_missing_input_named_like_a_value_but_not_after_a_flag(tiny_env):
    result = runner.invoke(app, ["remove", "true"])
    assert result.exit_code == 1 and "no such file or folder: true" in result.output
    result = runner.invoke(app, ["remove", "-o", str(tiny_env / "o.png"), "no"])
    assert result.exit_code == 1 and "no such file or folder: no" in result.output


def test_default_output_name(tiny_env):
    photo = tiny_env / "photo.jpg"
    subject_image()[0].save(photo)
    result = runner.invoke(app, ["remove", str(photo), "--format", "webp"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(tiny_env / "photo.out.webp")


@pytest.mark.parametrize(
    ("model", "message"),
    [("nosuch", "unknown model 'nosuch'"), ("small", "model 'small' is not installed")],
)
def test_a_bad_model_fails_once_before_any_image(tiny_env, model, message):
    folder = tiny_env / "in"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        subject_image()[0].save(folder / name)
    result = runner.invoke(app, ["remove", str(folder), "--model", model])
    assert result.exit_code == 1
    assert result.output.count(message) == 1, result.output
    assert "images written" not in result.output and "skipped" not in result.output
    assert not (tiny_env / "in-alphacut").exists()
    result = runner.invoke(app, ["remove", str(folder / "a.png"), "--model", model])
    assert result.exit_code == 1 and result.output.count(message) == 1


@pytest.fixture
def serve_in_process(monkeypatch):
    """`alphacut serve` with the app started and stopped in-process (its lifespan runs, as in
    uvicorn), and the process's logging restored afterwards."""
    from fastapi.testclient import TestClient

    import alphacut.service.server

    def run_server(app, shutdown_grace, **options):
        with TestClient(app):
            pass

    monkeypatch.setattr(alphacut.service.server, "run_server", run_server)
    root, state = logging.getLogger(), logging.getLogger("alphacut.service.state")
    saved = root.handlers[:], root.level, state.filters[:]
    yield
    root.handlers[:], state.filters[:] = saved[0], saved[2]
    root.setLevel(saved[1])
    logging.captureWarnings(False)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]"])
def test_serve_on_loopback_without_keys_does_not_warn(tiny_env, serve_in_process, host):
    result = runner.invoke(app, ["serve", "--host", host])
    assert result.exit_code == 0, result.output
    assert '"message": "loaded model tiny' in result.output  # the app started (its lifespan)
    assert "no API keys" not in result.output  # the app's own warning, which ignores the host


def test_serve_off_loopback_without_keys_warns_once(tiny_env, serve_in_process):
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    warnings = [
        json.loads(line)
        for line in result.output.splitlines()
        if line.startswith("{") and "no API keys" in line
    ]
    assert len(warnings) == 1, result.output
    assert warnings[0]["level"] == "warning"
    assert warnings[0]["message"].startswith("listening on 0.0.0.0 with no API keys")


def test_serve_refuses_a_bad_log_level(tiny_env):
    result = runner.invoke(app, ["serve", "--log-level", "loud"])
    assert result.exit_code == 1 and "--log-level must be debug, info" in result.output
