"""One side of the library benchmark, in its own process: ``libworker.py IMPL MODEL``.

IMPL is ``alphacut`` (run with alphacut's venv) or ``rembg`` (run with bench/.rembg-venv).
Commands arrive as JSON lines on stdin and each gets one JSON line back on stdout, so the
orchestrator can alternate the two sides request by request (load from other processes then
hits both alike). Every timed call is bytes in -> PNG bytes out, as a user of either library
gets it. Only the standard library is imported at module level: this file runs in both venvs.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from typing import Any

MATTING = {"foreground_threshold": 240, "background_threshold": 20, "erode_size": 5}
# The same thresholds as alphacut options (rembg takes them under these names too).
MATTING_OPTIONS = {f"alpha_matting_{name}": value for name, value in MATTING.items()}


def memory() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next peak is this call's."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


class AlphacutSide:
    def __init__(self, model: str) -> None:
        from alphacut.config import load_settings
        from alphacut.engine import Engine

        self.settings = load_settings()
        self.engine = Engine(self.settings)
        self.runner = self.engine.runner()  # loads and warms the model, as the server does
        self.model = model

    def remove(self, data: bytes, mode: str) -> tuple[bytes, dict[str, float]]:
        from alphacut.pipeline.encode import encode_png
        from alphacut.pipeline.options import RemoveOptions

        options = RemoveOptions(
            only_mask=mode == "only_mask",
            post_process_mask=mode == "post_process_mask",
            alpha_matting=mode == "alpha_matting",
            **MATTING_OPTIONS,
        )
        before = self.runner.inference_seconds
        result = self.engine.remove(data, options)
        started = time.perf_counter()
        png = encode_png(result.output, self.settings.png_compress_level)
        stages = dict(result.timings)
        stages["encode"] = time.perf_counter() - started
        stages["session_run"] = self.runner.inference_seconds - before
        return png, stages

    def alpha(self, data: bytes, mode: str) -> Any:
        from alphacut.pipeline.options import RemoveOptions

        options = RemoveOptions(
            alpha_matting=mode == "alpha_matting",
            post_process_mask=mode == "post_process_mask",
            **MATTING_OPTIONS,
        )
        return self.engine.remove(data, options).mask

    def trimap(self, data: bytes) -> Any:
        """The full-resolution trimap alphacut's alpha matting builds from its own mask."""
        from alphacut.pipeline.decode import decode_image
        from alphacut.pipeline.matting import AlphaMattingParams, build_trimap
        from alphacut.pipeline.options import RemoveOptions
        from alphacut.pipeline.remove import compute_mask

        image = decode_image(data, self.settings.max_pixels)
        mask = compute_mask(image, self.runner.predict, RemoveOptions())
        return build_trimap(mask, AlphaMattingParams(**MATTING))


class RembgSide:
    def __init__(self, model: str) -> None:
        from rembg import new_session

        # DisCustomSession: ISNet pre/post-processing (1024 px, mean 0.5, std 1 after dividing
        # by the image's max, min-max normalised output) on any ISNet file.
        self.session = new_session("dis_custom", model_path=model)
        self._feeds: dict[str, Any] = {}
        self.remove(_warmup_jpeg(), "only_mask")

    def remove(self, data: bytes, mode: str) -> tuple[bytes, dict[str, float]]:
        from rembg import remove

        png = remove(
            data,
            session=self.session,
            only_mask=mode == "only_mask",
            post_process_mask=mode == "post_process_mask",
            alpha_matting=mode == "alpha_matting",
            **MATTING_OPTIONS,
        )
        return png, {}

    def infer(self, path: str) -> tuple[float, float]:
        """rembg's ``session.run`` alone on the input its ``DisCustomSession.predict`` builds
        (Lanczos to 1024, x / max - 0.5): wall and CPU seconds of this process."""
        from PIL import Image

        feed = self._feeds.get(path)
        if feed is None:
            with Image.open(path) as image:
                feed = self.session.normalize(image, (0.5, 0.5, 0.5), (1.0, 1.0, 1.0), (1024, 1024))
            self._feeds[path] = feed
        wall, cpu = time.perf_counter(), time.process_time()
        self.session.inner_session.run(None, feed)
        return time.perf_counter() - wall, time.process_time() - cpu

    def alpha(self, data: bytes, mode: str) -> Any:
        import numpy as np
        from PIL import Image

        png, _ = self.remove(data, mode)
        image = Image.open(io.BytesIO(png))
        return np.asarray(image.getchannel("A") if image.mode == "RGBA" else image.convert("L"))

    def closed_form(self, data: bytes, trimap_path: str) -> Any:
        """rembg's matting solver (pymatting's closed form, as in ``alpha_matting_cutout``) on
        a given trimap: the solver alone, compared on the same trimap as alphacut's."""
        import numpy as np
        from PIL import Image
        from pymatting import estimate_alpha_cf

        image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) / 255.0
        trimap = np.asarray(Image.open(trimap_path).convert("L")) / 255.0
        alpha = estimate_alpha_cf(image, trimap)
        return np.clip(alpha * 255, 0, 255).astype(np.uint8)


def _warmup_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (120, 140, 160)).save(buffer, format="JPEG")
    return buffer.getvalue()


class Bare:
    """session.run alone on a plain ONNX Runtime session with default options: the floor.

    Only the symbolic dims are pinned (to 1x3x1024x1024), which makes the graph the same as the
    original static export.
    """

    def __init__(self, model: str) -> None:
        import numpy as np
        import onnxruntime as ort

        options = ort.SessionOptions()
        for name, value in (("batch", 1), ("height", 1024), ("width", 1024)):
            options.add_free_dimension_override_by_name(name, value)
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.feed = {
            self.session.get_inputs()[0].name: np.random.default_rng(0).random(
                (1, 3, 1024, 1024), dtype=np.float32
            )
        }
        self.session.run(None, self.feed)

    def run(self) -> float:
        started = time.perf_counter()
        self.session.run(None, self.feed)
        return time.perf_counter() - started


def main() -> None:
    impl, model = sys.argv[1], sys.argv[2]
    started = time.perf_counter()
    side = AlphacutSide(model) if impl == "alphacut" else RembgSide(model)
    bare: Bare | None = None
    reply(ready=True, load_seconds=time.perf_counter() - started, pid=os.getpid(), **memory())
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        try:
            if op == "quit":
                reply(bye=True)
                return
            if op == "remove":
                data = open(command["path"], "rb").read()
                if command.get("reset_peak"):
                    reset_peak()
                t = time.perf_counter()
                png, stages = side.remove(data, command["mode"])
                reply(seconds=time.perf_counter() - t, bytes=len(png), stages=stages, **memory())
            elif op in ("alpha", "trimap", "closed_form"):  # a uint8 array, saved as a PNG
                import numpy as np
                from PIL import Image

                data = open(command["path"], "rb").read()
                t = time.perf_counter()
                if op == "alpha":
                    result = side.alpha(data, command["mode"])
                elif op == "trimap":
                    result = side.trimap(data)
                else:
                    result = side.closed_form(data, command["trimap"])
                seconds = time.perf_counter() - t
                Image.fromarray(np.asarray(result, dtype=np.uint8)).save(command["out"])
                reply(seconds=seconds, **memory())
            elif op == "infer" and isinstance(side, RembgSide):
                wall, cpu = side.infer(command["path"])
                reply(wall=wall, cpu=cpu)
            elif op == "bare":
                bare = bare or Bare(model)
                reply(seconds=[bare.run() for _ in range(int(command.get("reps", 1)))])
            elif op == "memory":
                reply(**memory())
            else:
                reply(error=f"unknown op {op}")
        except Exception as exc:  # report, keep serving: one failure must not end the run
            reply(error=f"{type(exc).__name__}: {exc}")


def reply(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
