"""ONNX Runtime session creation: execution providers, threads, on-disk graph cache."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}


def physical_cores() -> int:
    """Physical cores available to this process: ONNX Runtime gains nothing from SMT siblings."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        available = os.cpu_count() or 1
    siblings: set[str] = set()
    try:
        for cpu in os.sched_getaffinity(0):
            path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
            siblings.add(path.read_text().strip())
    except (OSError, AttributeError):
        return available
    return max(1, min(available, len(siblings) or available))


def choose_providers(requested: tuple[str, ...]) -> list[str]:
    """Map setting names (tensorrt, cuda, openvino, cpu) to available ORT providers.

    Unavailable providers are skipped with a log line; the CPU provider is always last, so a
    GPU worker without a working CUDA install still serves (slowly) instead of failing.
    """
    available = set(ort.get_available_providers())
    wanted = [name.lower() for name in requested] or ["cuda", "cpu"]
    chosen: list[str] = []
    for name in wanted:
        provider = PROVIDER_NAMES.get(name, name)
        if provider in available:
            if provider not in chosen:
                chosen.append(provider)
        elif requested:
            log.warning("execution provider %s is not available here; falling back", provider)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def create_session(
    model_path: Path,
    providers: tuple[str, ...] = (),
    threads: int = 0,
    cache_dir: Path | None = None,
) -> ort.InferenceSession:
    """One session per model per process; callers must reuse it (it is thread-safe)."""
    chosen = choose_providers(providers)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Let idle intra-op threads sleep instead of spinning: with a single-flight queue the
    # threads sit idle between requests, and spinning would steal CPU from decode/encode.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if cache_dir is not None and chosen[0] == "CPUExecutionProvider":
        # Optimising the graph takes seconds; save the result once and reuse it on start-up.
        cache_dir.mkdir(parents=True, exist_ok=True)
        cached = cache_dir / f"{model_path.stem}.ort{ort.__version__}.opt.onnx"
        if cached.is_file() and cached.stat().st_mtime >= model_path.stat().st_mtime:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            model_path = cached
        else:
            options.optimized_model_filepath = str(cached)
    session = ort.InferenceSession(str(model_path), sess_options=options, providers=chosen)
    log.info(
        "loaded model %s with providers %s (%d threads)",
        model_path.name,
        session.get_providers(),
        options.intra_op_num_threads,
    )
    return session
