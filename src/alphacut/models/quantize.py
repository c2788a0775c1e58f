"""Static int8 quantisation of a model: QDQ, per-channel int8 weights, calibrated on photos.

ONNX Runtime runs a QDQ graph (QuantizeLinear/DequantizeLinear around each quantised node) with
fused int8 convolution kernels: 2-4x faster than fp32 here (docs/performance.md).
Activation ranges come from running the fp32 model on the MIT-licensed photos shipped in
``calibration/`` (see its README). What each setting costs in quality is in docs/quality.md.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from alphacut.models.processing import preprocess
from alphacut.models.registry import BUILTIN_MODELS, ModelSpec, known_models

CALIBRATION_DIR = Path(__file__).resolve().parent / "calibration"

CalibrationMethodName = Literal["percentile", "minmax"]


@dataclass(frozen=True)
class QuantizeRecipe:
    """How to quantise; the defaults are the measured best for ISNet (docs/quality.md)."""

    # "percentile": each activation's range ends at the percentile of |x| (clipped to the
    # observed min/max); "minmax" keeps every outlier and collapsed ISNet's masks.
    method: CalibrationMethodName = "percentile"
    percentile: float = 99.995
    # Symmetric uint8 activations (zero point 128) waste half the codes on ReLU outputs.
    activation_symmetric: bool = False
    reduce_range: bool = False
    # Nodes kept in fp32 (their inputs and outputs are not quantised), by node name.
    float_nodes: tuple[str, ...] = ()
    photos: int = 0  # use the first N calibration photos; 0: all of them


class PhotoCalibrationReader:
    """Feeds preprocessed photos to the calibrator (ORT's CalibrationDataReader protocol)."""

    def __init__(self, photos: Sequence[Path], spec: ModelSpec, input_name: str) -> None:
        self.photos = list(photos)
        self.spec = spec
        self.input_name = input_name
        self.next_index, self.end_index = 0, len(self.photos)

    def __len__(self) -> int:
        return len(self.photos)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.next_index, self.end_index = start_index, min(end_index, len(self.photos))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.next_index >= self.end_index:
            return None
        with Image.open(self.photos[self.next_index]) as image:
            batch = preprocess(image, self.spec)[np.newaxis]
        self.next_index += 1
        return {self.input_name: batch}


def calibration_photos(folder: Path = CALIBRATION_DIR) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


def quantized_name(name: str) -> str:
    return f"{name}-int8"


def quantized_spec(source: ModelSpec) -> ModelSpec:
    """The spec of the int8 variant: a built-in entry if one exists, else a side-car model."""
    builtin = BUILTIN_MODELS.get(quantized_name(source.name))
    if builtin is not None:
        return builtin
    return replace(
        source,
        name=quantized_name(source.name),
        filename=f"{quantized_name(source.name)}.onnx",
        description=f"{source.name}, static int8 (alphacut models quantize)",
        npm_resource=None,
        sha256=None,
        size_bytes=None,
        built_from=source.name,
    )


def _write_sidecar(spec: ModelSpec, model_dir: Path) -> None:
    """Describe a non-built-in int8 model so that known_models() finds it."""
    sidecar = {
        "input_size": spec.input_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "licence": spec.licence,
        "description": spec.description,
        "output_transform": spec.output_transform,
    }
    (model_dir / f"{spec.name}.json").write_text(json.dumps(sidecar, indent=2) + "\n")


def _input_name(model_path: Path) -> str:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    return str(next(inp.name for inp in model.graph.input if inp.name not in initializers))


def calibrate(
    model_path: Path,
    spec: ModelSpec,
    photos: Sequence[Path],
    recipe: QuantizeRecipe,
    cache_path: Path,
) -> None:
    """Run the fp32 model on the photos and save each tensor's (low, high) to ``cache_path``."""
    try:
        from onnxruntime.quantization.calibrate import (
            CalibrationMethod,
            TensorsData,
            create_calibrator,
            save_tensors_data,
        )
    except ImportError as exc:  # the calibration cache API is recent (1.32 has it)
        raise RuntimeError(f"quantisation needs a newer onnxruntime: {exc}") from None

    reader = PhotoCalibrationReader(photos, spec, _input_name(model_path))
    with tempfile.TemporaryDirectory(prefix="alphacut-calib-") as tmp:
        calibrator = create_calibrator(
            model_path,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            # Signed-value histograms (min/max recorded); the threshold is computed below.
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"symmetric": False, "percentile": recipe.percentile},
        )
        # One photo per pass: every intermediate tensor of one 1024 px inference is ~2 GB.
        for index in range(len(photos)):
            reader.set_range(index, index + 1)
            calibrator.collect_data(reader)
        collector = calibrator.collector
        ranges: dict[str, tuple[np.float32, np.float32]]
        if recipe.method == "minmax":
            ranges = {
                name: (np.float32(hist[2]), np.float32(hist[3]))
                for name, hist in collector.histogram_dict.items()
            }
        else:
            # The symmetric threshold t (percentile of the histogram), clipped by ORT to the
            # observed [min, max]: a ReLU output gets (0, t), all 256 uint8 codes.
            collector.symmetric = True
            ranges = {
                name: (np.float32(result[0]), np.float32(result[1]))
                for name, result in collector.compute_collection_result().items()
            }
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, ranges), cache_path)


def quantize_with_ranges(
    model_path: Path, dest: Path, recipe: QuantizeRecipe, cache_path: Path
) -> None:
    """Write the QDQ model for the ranges in ``cache_path`` (seconds; no inference)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    extra_options: dict[str, Any] = {"ActivationSymmetric": recipe.activation_symmetric}
    quantize_static(
        str(model_path),
        str(dest),
        calibration_data_reader=None,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=recipe.reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(recipe.float_nodes),
        calibrate_method=CalibrationMethod.MinMax,
        extra_options=extra_options,
        calibration_cache_path=str(cache_path),
    )


def quantize_model(
    name: str,
    model_dir: Path,
    recipe: QuantizeRecipe | None = None,
    photos: Sequence[Path] | None = None,
    progress: Callable[[str], None] = lambda _msg: None,
) -> Path:
    """Quantise the installed model ``name`` to ``<name>-int8`` in ``model_dir``; its path."""
    recipe = recipe or QuantizeRecipe()
    source = known_models(model_dir).get(name)
    if source is None:
        raise ValueError(f"unknown model {name!r}")
    source_path = source.runtime_path(model_dir)
    if not source_path.is_file():
        raise FileNotFoundError(f"{source_path} is missing; run `alphacut models pull {name}`")
    target = quantized_spec(source)
    photos = list(photos if photos is not None else calibration_photos())
    if recipe.photos:
        photos = photos[: recipe.photos]
    if not photos:
        raise ValueError("no calibration photos")
    dest = target.path(model_dir)
    with tempfile.TemporaryDirectory(prefix="alphacut-quantize-", dir=model_dir) as tmp:
        cache_path = Path(tmp) / "ranges.json"
        progress(f"calibrating {source_path.name} on {len(photos)} photos ({recipe.method})")
        calibrate(source_path, source, photos, recipe, cache_path)
        progress(f"writing {dest.name}")
        partial = Path(tmp) / dest.name
        quantize_with_ranges(source_path, partial, recipe, cache_path)
        os.replace(partial, dest)  # never leave a half-written model under the real name
    if target.name not in BUILTIN_MODELS:
        _write_sidecar(target, model_dir)
    return dest
