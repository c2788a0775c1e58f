"""Shared pieces of the benchmark: image set, statistics, RSS, worker processes, rembg venv.

Runs in alphacut's venv (the orchestrator). Nothing here imports alphacut or rembg, so the
timing of each side happens in its own process (see libworker.py).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SHARED = ROOT.parent / "shared"
PHOTOS = SHARED / "photos"
GENERAL = SHARED / "evaldata" / "general"
MATTING = SHARED / "evaldata" / "matting"
REMBG_VENV = BENCH / ".rembg-venv"
MODEL_DIR = Path(os.environ.get("ALPHACUT_MODEL_DIR", Path.home() / ".alphacut" / "models"))
FP32 = MODEL_DIR / "isnet-imgly-medium.fp32.onnx"
FP16 = MODEL_DIR / "isnet-imgly-medium.onnx"
BIG_SIZE = (4000, 3000)


@dataclass(frozen=True)
class BenchImage:
    name: str
    path: Path
    width: int
    height: int
    group: str  # photo, eval, big

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def make_big_image(tmp: Path, source: str = "girl-1.jpg", grain: float = 0.0) -> Path:
    """A 12 MP JPEG made by upscaling one of the sample photos (Lanczos, quality 92).

    An upscaled photo is far smoother than a real 12 MP one, which flatters PNG encoding (the
    largest cost outside the model at this size). ``grain`` adds Gaussian noise of that sigma
    (in 0..255 levels), a stand-in for the sensor noise and fine texture of a real photo.
    """
    import numpy as np
    from PIL import Image

    suffix = f"-grain{grain:g}" if grain else ""
    out = tmp / f"big-{Path(source).stem}-{BIG_SIZE[0]}x{BIG_SIZE[1]}{suffix}.jpg"
    if not out.is_file():
        with Image.open(PHOTOS / source) as image:
            big = image.convert("RGB").resize(BIG_SIZE, Image.Resampling.LANCZOS)
        if grain:
            noise = np.random.default_rng(0).normal(0, grain, (*BIG_SIZE[::-1], 3))
            big = Image.fromarray((np.asarray(big) + noise).clip(0, 255).astype(np.uint8))
        big.save(out, quality=92)
    return out


def image_set(
    tmp: Path,
    quick: bool,
    eval_sample: int,
    big_source: str,
    grain: float = 0.0,
    only_big: bool = False,
) -> list[BenchImage]:
    """Sample photos (0.17-1.55 MP), an even sample of evaldata/general, and the 12 MP photo."""
    if only_big:
        big = make_big_image(tmp, big_source, grain)
        return [BenchImage(big.name, big, *BIG_SIZE, "big")]
    photos = sorted(PHOTOS.glob("*.jpg"))
    if quick:
        photos = [p for p in photos if p.stem in ("car-1", "girl-2", "animal-1", "plants-1")]
    evals = sorted(p for p in (GENERAL / "images").iterdir() if p.is_file())
    count = min(2 if quick else eval_sample, len(evals))
    step = max(1, len(evals) // max(1, count))
    picked = evals[::step][:count]
    images = [BenchImage(p.name, p, *_size(p), "photo") for p in photos]
    images += [BenchImage(p.name, p, *_size(p), "eval") for p in picked]
    big = make_big_image(tmp, big_source, grain)
    images.append(BenchImage(big.name, big, *BIG_SIZE, "big"))
    return images


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); honest for the small samples we take."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def proc_memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak since start or the last clear_refs) of a process, in kB."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return out


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def machine_info() -> dict[str, Any]:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "loadavg_start": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def ensure_rembg_venv(log: Any = print) -> Path:
    """bench/.rembg-venv with rembg[cli] and onnxruntime (a benchmark-only dependency)."""
    python = REMBG_VENV / "bin" / "python"
    if python.is_file():
        # find_spec, not import: importing rembg compiles pymatting's numba code (minutes).
        probe = subprocess.run(
            [
                str(python),
                "-c",
                "import importlib.util as u, sys; sys.exit("
                "not all(u.find_spec(m) for m in ('rembg', 'onnxruntime')))",
            ],
            capture_output=True,
        )
        if probe.returncode == 0:
            return python
    log(f"creating {REMBG_VENV} (pip install 'rembg[cli]' onnxruntime; a few minutes)")
    if REMBG_VENV.exists():
        shutil.rmtree(REMBG_VENV)
    # The system interpreter, not alphacut's venv: the two must not share packages.
    subprocess.run(
        [shutil.which("python3") or sys.executable, "-m", "venv", str(REMBG_VENV)], check=True
    )
    pip = [str(REMBG_VENV / "bin" / "pip"), "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "rembg[cli]", "onnxruntime"], check=True)
    return python


def static_copy(weights: Path, tmp: Path) -> Path:
    """A copy of ``weights`` with fixed 1x3x1024x1024 dims, for rembg.

    Our fp32 conversion has symbolic dims, which alphacut pins per session; rembg cannot, and a
    plain session on symbolic dims ran ~4% slower here, so rembg gets the static graph that the
    original export had (same weights, same nodes).
    """
    import onnx

    model = onnx.load(str(weights), load_external_data=False)
    changed = False
    for value in [*model.graph.input, *model.graph.output]:
        for dim, size in zip(value.type.tensor_type.shape.dim, (1, 0, 1024, 1024), strict=False):
            if dim.dim_param and size:
                dim.dim_value = size  # setting dim_value clears dim_param (a oneof)
                changed = True
    if not changed:
        return weights
    out = tmp / weights.name.replace(".onnx", ".static.onnx")
    if not out.is_file():
        onnx.save(model, str(out))
    return out


def rembg_home(tmp: Path, weights: Path) -> Path:
    """A REMBG_HOME holding a link to our weights: rembg only loads model_path from its home."""
    home = tmp / "rembg-home"
    target = home / "models" / "dis_custom" / weights.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    target.symlink_to(weights.resolve())
    return home


class Worker:
    """A libworker.py subprocess driven by JSON lines on stdin/stdout."""

    def __init__(
        self,
        python: str,
        impl: str,
        model: Path,
        env: dict[str, str] | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.impl = impl
        self.proc = subprocess.Popen(
            [python, str(BENCH / "libworker.py"), impl, str(model), *(extra or [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.impl} worker exited ({self.proc.wait()})")
            if line.startswith("{"):
                reply = json.loads(line)
                if "error" in reply:
                    raise RuntimeError(f"{self.impl} worker: {reply['error']}")
                return reply

    def call(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call(op="quit")
            except (RuntimeError, BrokenPipeError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def fmt_table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)
    ]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in text
    ]
    return "\n".join(lines)


def rembg_worker(ctx: Any) -> Worker:
    """A ``Worker`` running rembg (its venv) on ``ctx.weights_rembg`` in a home of its own."""
    home = rembg_home(ctx.tmp, ctx.weights_rembg)
    return Worker(
        str(ctx.rembg_python),
        "rembg",
        home / "models" / "dis_custom" / ctx.weights_rembg.name,
        env={"REMBG_HOME": str(home), "U2NET_HOME": ""},
    )
