"""`alphacut eval`: the runner and the CLI on a synthetic dataset, and on real data."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from alphacut.cli import app
from alphacut.config import Settings, load_settings
from alphacut.engine import Engine
from alphacut.evaluate import run_eval
from alphacut.evaluate.evaluation import THUMB_HEIGHT, group_of
from alphacut.evaluate.report import LABEL_HEIGHT, format_table
from alphacut.models.registry import resolve_model
from alphacut.pipeline.options import RemoveOptions
from tests.conftest import evaldata, requires_evaldata

# (id, width, height, square box x0, y0, x1, y1, file suffix)
SQUARES = [
    ("sq_a", 96, 80, 20, 15, 70, 60, ".png"),
    ("sq_b", 120, 90, 50, 10, 110, 70, ".jpg"),
    ("rect_a", 80, 120, 10, 30, 60, 100, ".png"),
]


def make_dataset(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for image_id, w, h, x0, y0, x1, y1, suffix in SQUARES:
        image = np.full((h, w, 3), 20, np.uint8)
        image[y0:y1, x0:x1] = 230
        mask = np.zeros((h, w), np.uint8)
        mask[y0:y1, x0:x1] = 255
        Image.fromarray(image).save(root / "images" / f"{image_id}{suffix}", quality=95)
        Image.fromarray(mask).save(root / "masks" / f"{image_id}.png")
    return root


@pytest.fixture
def tiny_engine(tiny_model_dir: Path) -> Iterator[Engine]:
    engine = Engine(Settings(home=tiny_model_dir.parent, model_dir=tiny_model_dir, model="tiny"))
    yield engine
    engine.close()


def test_group_of() -> None:
    assert group_of("horse_horse002") == "horse"
    assert group_of("davis_bmx-trees_00000") == "davis"
    assert group_of("plain") == "plain"


def test_run_eval_writes_reports(tmp_path: Path, tiny_engine: Engine) -> None:
    dataset = make_dataset(tmp_path / "ds")
    out = tmp_path / "out"
    summary = run_eval(dataset, tiny_engine, RemoveOptions(), None, out, False)

    assert [r.id for r in summary.images] == ["rect_a", "sq_a", "sq_b"]
    assert summary.model == "tiny" and summary.input_size == 64
    assert summary.overall["iou"] > 0.9
    assert summary.overall["mae"] < 0.05
    assert summary.overall["pairs"] == 3
    assert set(summary.groups) == {"rect", "sq"}
    assert summary.groups["sq"]["pairs"] == 2
    assert summary.groups["sq"]["iou"] == pytest.approx(
        np.mean([r.metrics["iou"] for r in summary.images if r.group == "sq"])
    )

    data = json.loads((out / "summary.json").read_text())
    assert data["pairs"] == 3 and data["model"] == "tiny"
    assert data["overall"]["iou"] == pytest.approx(summary.overall["iou"])
    assert set(data["groups"]) == {"rect", "sq"}
    with (out / "per_image.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [row["id"] for row in rows] == ["rect_a", "sq_a", "sq_b"]
    assert float(rows[0]["iou"]) > 0.9
    with Image.open(out / "worst.png") as sheet:
        assert sheet.height == LABEL_HEIGHT + 4 * (THUMB_HEIGHT + 4)
        assert sheet.width > 3 * THUMB_HEIGHT  # three columns, none narrower than 0.66 x tall
    maes = [w.mae for w in summary.worst]
    assert len(maes) == 3 and maes == sorted(maes, reverse=True)
    assert max(maes) == max(r.metrics["mae"] for r in summary.images)

    table = format_table(summary)
    assert "IoU@0.5" in table and "\nall " in table and "sq " in table


def test_run_eval_limit_and_skips(tmp_path: Path, tiny_engine: Engine) -> None:
    dataset = make_dataset(tmp_path / "ds")
    (dataset / "images" / "zz_nomask.png").write_bytes(
        (dataset / "images" / "sq_a.png").read_bytes()
    )  # no mask: not a pair
    (dataset / "images" / "sq_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    Image.new("L", (8, 8)).save(dataset / "masks" / "sq_broken.png")
    (dataset / "images" / "sq_size.png").write_bytes((dataset / "images" / "sq_a.png").read_bytes())
    Image.new("L", (10, 10)).save(dataset / "masks" / "sq_size.png")

    summary = run_eval(dataset, tiny_engine, progress=False)
    assert sorted(r.id for r in summary.images) == ["rect_a", "sq_a", "sq_b"]
    assert set(summary.skipped) == {"sq_broken", "sq_size"}
    assert "10x10" in summary.skipped["sq_size"]
    assert summary.worst == []  # no out_dir: no thumbnails kept

    limited = run_eval(dataset, tiny_engine, progress=False, limit=2)
    assert [r.id for r in limited.images] == ["rect_a", "sq_a"]


def test_cli_eval(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = make_dataset(tmp_path / "ds")
    out = tmp_path / "out"
    monkeypatch.setenv("ALPHACUT_HOME", str(tiny_model_dir.parent))
    monkeypatch.delenv("ALPHACUT_MODEL_DIR", raising=False)
    result = CliRunner().invoke(
        app,
        [
            "eval",
            str(dataset),
            "--model",
            "tiny",
            "--out",
            str(out),
            "--limit",
            "2",
            "--post-process-mask",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "IoU@0.5" in result.stdout and "2 pairs" in result.stdout
    data = json.loads((out / "summary.json").read_text())
    assert data["pairs"] == 2 and data["options"]["post_process_mask"] is True
    assert data["overall"]["iou"] > 0.85


def test_cli_eval_missing_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "nope")])
    assert result.exit_code == 1


@pytest.mark.real_model
@requires_evaldata("general")
def test_real_model_eval_on_horses(tmp_path: Path) -> None:
    settings = load_settings()
    spec = resolve_model("medium", settings.model_dir)
    model_path = spec.runtime_path(settings.model_dir)
    if not model_path.is_file():
        pytest.skip(
            f"REAL MODEL NOT INSTALLED: {model_path} is missing; set ALPHACUT_HOME or "
            "run `alphacut models pull medium` to run this test"
        )
    source = evaldata("general")
    dataset = tmp_path / "horses"
    (dataset / "images").mkdir(parents=True)
    (dataset / "masks").mkdir()
    horses = sorted(p for p in (source / "images").iterdir() if p.name.startswith("horse_"))[:12]
    for image in horses:
        (dataset / "images" / image.name).symlink_to(image)
        (dataset / "masks" / f"{image.stem}.png").symlink_to(source / "masks" / f"{image.stem}.png")

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["eval", str(dataset), "--limit", "10", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "summary.json").read_text())
    assert data["pairs"] == 10 and data["model"] == "medium"
    assert data["overall"]["iou"] > 0.85, data["overall"]
