"""The mask cache over real HTTP: a cold request against repeats of the same photo with other
output options (issue 13, part 1), on alphacut's server and on rembg's.

One `alphacut serve` with the real weights and a fresh home, and one `rembg s` on the same fp32
weights (bench/http_load.py). For each photo (0.2-1.5 MP) and repetition, on each server in
turn (the order swaps photo by photo, so background load hits both alike): the photo is sent
with the default options (cold: the model runs; alphacut's cache folder is emptied first), then
again with each follow-up option that server has (alphacut: ``REPEAT_FIELDS``, served from the
cached map; rembg: ``REMBG_REPEAT_FIELDS``, the same options under rembg's names, each a full
run: rembg keeps nothing between requests). A request ends when the client has the output PNG.
Reported: medians of cold and repeat requests per server, the repeat/cold ratio (alphacut's aim:
at most 0.10), and the server's /metrics hit and miss counts as a check.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.common import PHOTOS, fmt_table, median
from bench.http_load import MODE_FIELDS, REMBG_FIELDS, Server, start_alphacut, start_rembg

CACHE_PHOTOS = ("car-3.jpg", "girl-2.jpg", "animal-1.jpg", "anime-girl-1.jpg", "plants-1.jpg")
# What a client asks next for the same photo: the mask, a background colour, a cleaned mask,
# a crop (the hosted API's and the web page's follow-ups).
REPEAT_FIELDS: dict[str, dict[str, str]] = {
    "only_mask": {"only_mask": "true"},
    "bg_color": {"bg_color": "#ffffff"},
    "post_process_mask": {"post_process_mask": "true"},
    "crop": {"crop": "true", "crop_margin": "5%"},
}
# The same follow-ups on rembg's server (`rembg s`, POST /api/remove): it has no crop.
REMBG_REPEAT_FIELDS: dict[str, dict[str, str]] = {
    "only_mask": {"om": "true"},
    "bg_color": {"bgc": "255,255,255,255"},
    "post_process_mask": {"ppm": "true"},
}
COMMON = tuple(mode for mode in REPEAT_FIELDS if mode in REMBG_REPEAT_FIELDS)


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return 0.0


def _megapixels(name: str) -> float:
    from PIL import Image

    with Image.open(PHOTOS / name) as image:
        return image.width * image.height / 1e6


def run_cache(ctx: Any) -> dict[str, Any]:
    reps = 1 if ctx.quick else max(1, ctx.reps)
    # The servers' send() looks options up by mode name.
    MODE_FIELDS.update(REPEAT_FIELDS)
    REMBG_FIELDS.update(REMBG_REPEAT_FIELDS)
    masks = ctx.tmp / "alphacut-home" / "cache" / "masks"
    servers: dict[str, Server] = {}
    samples: list[dict[str, Any]] = []
    try:
        servers["alphacut"] = start_alphacut(ctx)
        servers["rembg"] = start_rembg(ctx)
        repeat_modes = {"alphacut": REPEAT_FIELDS, "rembg": REMBG_REPEAT_FIELDS}
        turn = 0
        with httpx.Client(timeout=900) as client:
            for rep in range(reps):
                for name in CACHE_PHOTOS:
                    data = (PHOTOS / name).read_bytes()
                    order = ["alphacut", "rembg"] if turn % 2 == 0 else ["rembg", "alphacut"]
                    turn += 1
                    sample: dict[str, Any] = {"photo": name, "rep": rep, "order": order}
                    for side in order:
                        server = servers[side]
                        if side == "alphacut":
                            shutil.rmtree(masks, ignore_errors=True)  # a cold cache
                        started = time.perf_counter()
                        server.send(client, data, "default")
                        cold = time.perf_counter() - started
                        repeats = {}
                        for mode in repeat_modes[side]:
                            started = time.perf_counter()
                            server.send(client, data, mode)
                            repeats[mode] = time.perf_counter() - started
                        sample[side] = {"cold_s": cold, "repeat_s": repeats}
                    samples.append(sample)
                    ctx.log(
                        f"  {name} rep {rep}: "
                        + "; ".join(
                            f"{side} cold {sample[side]['cold_s']:.2f}s, repeats "
                            + " ".join(f"{s:.2f}" for s in sample[side]["repeat_s"].values())
                            for side in ("alphacut", "rembg")
                        )
                    )
        hits = _metric(servers["alphacut"].url, "alphacut_mask_cache_hits_total")
        misses = _metric(servers["alphacut"].url, "alphacut_mask_cache_misses_total")
    finally:
        for server in servers.values():
            server.stop()

    def cold(side: str, of: list[dict[str, Any]]) -> list[float]:
        return [s[side]["cold_s"] for s in of]

    def repeat(side: str, of: list[dict[str, Any]], modes: tuple[str, ...] = COMMON) -> list[float]:
        return [s[side]["repeat_s"][m] for s in of for m in modes]

    rows = []
    for name in [*CACHE_PHOTOS, None]:
        mine = [s for s in samples if name is None or s["photo"] == name]
        a_cold, a_rep = median(cold("alphacut", mine)), median(repeat("alphacut", mine))
        r_cold, r_rep = median(cold("rembg", mine)), median(repeat("rembg", mine))
        rows.append(
            [
                name or "all (median)",
                "" if name is None else f"{_megapixels(name):.2f}",
                a_cold,
                a_rep,
                a_rep / a_cold,
                r_cold,
                r_rep,
                r_rep / r_cold,
                a_cold / r_cold,
                a_rep / r_rep,
            ]
        )
    ctx.log(
        f"\nmask cache over HTTP, {reps} rep(s) x {len(CACHE_PHOTOS)} photos; repeats: "
        f"{', '.join(COMMON)} (options both servers have); alphacut /metrics: {hits:.0f} hits, "
        f"{misses:.0f} misses:"
    )
    ctx.log(
        fmt_table(
            [
                "photo",
                "MP",
                "alphacut cold s",
                "alphacut repeat s",
                "a repeat/cold",
                "rembg cold s",
                "rembg repeat s",
                "r repeat/cold",
                "cold a/r",
                "repeat a/r",
            ],
            rows,
        )
    )
    mode_rows = []
    for mode in REPEAT_FIELDS:
        a = median(repeat("alphacut", samples, (mode,)))
        r = median(repeat("rembg", samples, (mode,))) if mode in REMBG_REPEAT_FIELDS else None
        mode_rows.append([mode, a, "-" if r is None else r, "-" if r is None else a / r])
    ctx.log(fmt_table(["repeat option", "alphacut s", "rembg s", "alphacut/rembg"], mode_rows))
    out: dict[str, Any] = {"samples": samples, "reps": reps, "hits": hits, "misses": misses}
    for side in ("alphacut", "rembg"):
        out[side] = {
            "cold_median_s": median(cold(side, samples)),
            "cold_n": len(cold(side, samples)),
            "repeat_median_s": median(repeat(side, samples)),
            "repeat_n": len(repeat(side, samples)),
        }
    out["alphacut"]["repeat_all_options_median_s"] = median(
        repeat("alphacut", samples, tuple(REPEAT_FIELDS))
    )
    out["ratio"] = out["alphacut"]["repeat_median_s"] / out["alphacut"]["cold_median_s"]
    return out
