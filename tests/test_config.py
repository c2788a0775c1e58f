"""Settings: parsing ``ALPHACUT_*`` variables, clear errors for bad ones, defaults under home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from alphacut.config import Settings, load_settings
from alphacut.errors import AlphacutError, SettingsError


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ALPHACUT_* variable from the caller's shell leaks in; home is a temporary folder."""
    for name in list(os.environ):
        if name.startswith("ALPHACUT_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ALPHACUT_HOME", str(tmp_path / "home"))


def test_bad_integer_names_the_variable_and_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPHACUT_WORKERS", "abc")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "ALPHACUT_WORKERS='abc': Input should be a valid integer" in str(caught.value)
    assert isinstance(caught.value, AlphacutError)


def test_every_bad_variable_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPHACUT_WORKERS", "abc")
    monkeypatch.setenv("ALPHACUT_SYNC_WAIT", "soon")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "ALPHACUT_WORKERS='abc'" in caught.value.message
    assert "ALPHACUT_SYNC_WAIT='soon'" in caught.value.message


@pytest.mark.parametrize("raw", ["maybe", "2", "enabled"])
def test_unknown_boolean_is_an_error(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("ALPHACUT_WEB_UI", raw)
    with pytest.raises(SettingsError, match=f"ALPHACUT_WEB_UI='{raw}'"):
        load_settings()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("Yes", True),
        ("on", True),
        (" 0 ", False),
        ("false", False),
        ("no", False),
        ("OFF", False),
    ],
)
def test_boolean_spellings(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("ALPHACUT_ERRORS_HTTP_200", raw)
    assert load_settings().errors_http_200 is expected


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("WORKERS", "0"),
        ("BATCH_SIZE", "0"),
        ("SYNC_WAIT", "-1"),
        ("PNG_COMPRESS_LEVEL", "10"),
        ("PNG_COMPRESS_LEVEL", "-1"),
        ("MAX_PIXELS", "0"),
        ("TEMP_TTL", "-5"),
        ("OUTPUT_TTL", "-1"),
        ("MAX_DOWNLOAD_BYTES", "0"),
    ],
)
def test_out_of_range_value_is_an_error(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str
) -> None:
    monkeypatch.setenv(f"ALPHACUT_{name}", raw)
    with pytest.raises(SettingsError, match=f"ALPHACUT_{name}='{raw}'"):
        load_settings()


def test_bad_override_is_named_as_passed() -> None:
    with pytest.raises(SettingsError, match="input_size=-1"):
        load_settings(input_size=-1)


def test_comma_lists_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPHACUT_API_KEYS", "key-one, key-two,,")
    monkeypatch.setenv("ALPHACUT_URL_ALLOWLIST", "127.0.0.1,localhost:8081")
    monkeypatch.setenv("ALPHACUT_PROVIDERS", "cuda")
    settings = load_settings()
    assert settings.api_keys == ("key-one", "key-two")
    assert settings.url_allowlist == ("127.0.0.1", "localhost:8081")
    assert settings.providers == ("cuda",)
    # Library callers pass sequences, not comma strings.
    assert Settings(api_keys=["a", "b"]).api_keys == ("a", "b")


def test_empty_variable_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPHACUT_WORKERS", "")
    monkeypatch.setenv("ALPHACUT_API_KEYS", "")
    settings = load_settings()
    assert settings.workers == Settings.model_fields["workers"].default
    assert settings.api_keys == ()


def test_folders_default_under_home(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.home == tmp_path / "home"
    assert settings.model_dir == tmp_path / "home" / "models"
    assert settings.output_dir == tmp_path / "home" / "outputs"
    built = Settings(home=tmp_path / "other")
    assert (built.model_dir, built.output_dir) == (
        tmp_path / "other" / "models",
        tmp_path / "other" / "outputs",
    )


def test_folders_can_be_overridden(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ALPHACUT_MODEL_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("ALPHACUT_OUTPUT_DIR", "~/alphacut-out")
    settings = load_settings()
    assert settings.model_dir == tmp_path / "weights"
    assert settings.output_dir == Path.home() / "alphacut-out"
    assert load_settings(model_dir=tmp_path / "m").model_dir == tmp_path / "m"


def test_settings_built_in_code_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPHACUT_WORKERS", "7")
    assert Settings().workers == 2
    assert load_settings().workers == 7
    assert load_settings(workers=3).workers == 3  # an override wins over the environment


def test_settings_are_frozen_and_public_url_loses_its_slash() -> None:
    settings = load_settings(public_url="https://cut.example.com/")
    assert settings.public_url == "https://cut.example.com"
    with pytest.raises(ValueError):
        settings.workers = 5  # type: ignore[misc]


def test_every_setting_is_documented() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description and field.description.endswith("."), name


def test_cli_prints_the_error_and_exits_non_zero(tmp_path: Path) -> None:
    cli = Path(sys.executable).with_name("alphacut")
    env = {**os.environ, "ALPHACUT_WORKERS": "abc"}  # the fixture's clean env, plus the mistake
    result = subprocess.run(
        [str(cli), "models", "list"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "error: ALPHACUT_WORKERS='abc': Input should be a valid integer" in result.stderr
    assert "Traceback" not in result.stderr
