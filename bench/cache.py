"""The mask cache over real HTTP: a cold request against repeats of the same photo with other
output options (issue 13, part 1).

One `alphacut serve` with the real weights and a fresh home. For each photo (0.2-1.5 MP) and
repetition: the cache folder is emptied, the photo is sent with the default options (cold: the
model runs), then again with each of ``REPEAT_FIELDS`` (the map comes from the cache). A request
ends when the client has the output PNG. Reported: median cold, median repeat, their ratio
(aim: at most 0.10), and the server's /metrics hit and miss counts as a check.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.common import PHOTOS, fmt_table, median
from bench.http_load import MODE_FIELDS, start_alphacut

CACHE_PHOTOS = ("car-3.jpg", "girl-2.jpg", "animal-1.jpg", "anime-girl-1.jpg", "plants-1.jpg")
# What a client asks next for the same photo: the mask, a background colour, a cleaned mask,
# a crop (the hosted API's and the web page's follow-ups).
REPEAT_FIELDS: dict[str, dict[str, str]] = {
    "only_mask": {"only_mask": "true"},
    "bg_color": {"bg_color": "#ffffff"},
    "post_process_mask": {"post_process_mask": "true"},
    "crop": {"crop": "true", "crop_margin": "5%"},
}


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return 0.0


def run_cache(ctx: Any) -> dict[str, Any]:
    reps = 1 if ctx.quick else max(1, min(ctx.reps, 3))
    MODE_FIELDS.update(REPEAT_FIELDS)  # the server's send() looks options up by mode name
    server = start_alphacut(ctx)
    masks = ctx.tmp / "alphacut-home" / "cache" / "masks"
    rows, samples = [], []
    try:
        with httpx.Client(timeout=900) as client:
            for rep in range(reps):
                for name in CACHE_PHOTOS:
                    data = (PHOTOS / name).read_bytes()
                    shutil.rmtree(masks, ignore_errors=True)  # a cold cache for this photo
                    started = time.perf_counter()
                    server.send(client, data, "default")
                    cold = time.perf_counter() - started
                    repeats = {}
                    for mode in REPEAT_FIELDS:
                        started = time.perf_counter()
                        server.send(client, data, mode)
                        repeats[mode] = time.perf_counter() - started
                    samples.append({"photo": name, "rep": rep, "cold_s": cold, "repeat_s": repeats})
                    ctx.log(
                        f"  {name} rep {rep}: cold {cold:.2f}s, repeats "
                        + ", ".join(f"{mode} {s:.3f}s" for mode, s in repeats.items())
                    )
        hits = _metric(server.url, "alphacut_mask_cache_hits_total")
        misses = _metric(server.url, "alphacut_mask_cache_misses_total")
    finally:
        server.stop()
    for name in CACHE_PHOTOS:
        mine = [s for s in samples if s["photo"] == name]
        cold = median([s["cold_s"] for s in mine])
        repeat = median([v for s in mine for v in s["repeat_s"].values()])
        rows.append([name, cold, repeat, repeat / cold])
    cold_all = median([s["cold_s"] for s in samples])
    repeat_all = median([v for s in samples for v in s["repeat_s"].values()])
    rows.append(["all (median)", cold_all, repeat_all, repeat_all / cold_all])
    ctx.log(
        f"\nmask cache over HTTP ({reps} rep(s); /metrics: {hits:.0f} hits, {misses:.0f} misses):"
    )
    ctx.log(fmt_table(["photo", "cold s", "repeat s (median)", "repeat/cold"], rows))
    return {
        "samples": samples,
        "cold_median_s": cold_all,
        "repeat_median_s": repeat_all,
        "ratio": repeat_all / cold_all,
        "hits": hits,
        "misses": misses,
    }
