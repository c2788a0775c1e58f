"""mask_quality through the job record, HTTP and the CLI."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from alphacut.jobs.worker import options_from_record
from tests.conftest import subject_image

RNG = np.random.default_rng(7)


def test_options_from_record_reads_mask_quality():
    request = {
        "options": {
            "only_mask": False,
            "post_process_mask": False,
            "alpha_matting": False,
            "alpha_matting_foreground_threshold": 240,
            "alpha_matting_background_threshold": 20,
            "alpha_matting_erode_size": 5,
            "inverse_mask": False,
        }
    }
    assert options_from_record(request).mask_quality == "normal"  # an older server's job
    request["options"]["mask_quality"] = "high"
    assert options_from_record(request).mask_quality == "high"


def test_mask_quality_over_http(live_server, tiny_settings, file_server):
    base, root = file_server
    image, truth = subject_image()
    image.save(root / "quality.png")
    server = live_server(tiny_settings)
    url = f"{base}/quality.png"
    body = httpx.post(
        server.url + "/api/v5/removebg_mask",
        timeout=150,
        json={"image": url, "mask_quality": "High", "only_mask": True},
    ).json()
    assert body["status"] == "success" and body["meta"]["mask_quality"] == "high"
    bad = httpx.post(
        server.url + "/api/v5/removebg_mask",
        timeout=150,
        json={"image": url, "mask_quality": "ultra"},
    )
    assert bad.status_code == 422 and "mask_quality" in bad.json()["message"]
    plain = httpx.post(
        server.url + "/api/v5/removebg_mask", timeout=150, json={"image": url}
    ).json()
    assert plain["meta"]["mask_quality"] == "normal"


@pytest.mark.parametrize("command", ["remove", "eval"])
def test_cli_rejects_an_unknown_mask_quality(command, tmp_path):
    from alphacut.cli import app

    target = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(target)
    result = CliRunner().invoke(app, [command, str(target), "--mask-quality", "ultra"])
    assert (
        result.exit_code != 0
        and "mask_quality: Input should be 'normal' or 'high'" in result.output
    )
