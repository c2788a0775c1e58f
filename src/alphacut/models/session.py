"""ONNX Runtime session creation: execution providers, threads, memory, on-disk graph cache."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnxruntime as ort

log = logging.getLogger(__name__)

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}
# Where a saved optimised graph keeps its weights (models/session.py, create_session).
EXTERNAL_DATA_FILE = "session.optimized_model_external_initializers_file_name"
EXTERNAL_DATA_MIN_BYTES = "session.optimized_model_external_initializers_min_size_in_bytes"
# Symbolic dimension names written by our fp32 conversion (see convert.py).
BATCH_DIM, HEIGHT_DIM, WIDTH_DIM = "batch", "height", "width"


class InputSizeMismatch(ValueError):
    """The model file has fixed spatial dims that differ from the requested input size."""


def physical_cores() -> int:
    """Physical cores available to this process: ONNX Runtime gains nothing from SMT siblings."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
    siblings: set[str] = set()
    try:
        for cpu in cpus:
            path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
            siblings.add(path.read_text().strip())
    except OSError:
        return len(cpus)
    return max(1, min(len(cpus), len(siblings) or len(cpus)))


def cpu_fingerprint() -> str:
    """Short hash of the CPU model and its instruction-set flags.

    A graph saved at ORT_ENABLE_ALL contains NCHWc layout nodes whose block size follows the
    vector width of the CPU that optimised it (AVX2: 8, AVX-512: 16). A model folder can be
    shared (NFS, a baked container image), so the cache file name carries the CPU it was made on.
    """
    model, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model.startswith("cpu:"):
                    model = "cpu:" + value.strip()
                elif key == "flags":
                    flags = value.strip()
                    break
    except OSError:
        pass
    return hashlib.sha256(f"{model}|{flags}".encode()).hexdigest()[:10]


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


def provider_options(provider: str, cache_dir: Path | None) -> dict[str, Any]:
    """Per-provider options: TensorRT builds engines for minutes, so keep them on disk."""
    if provider == "TensorrtExecutionProvider" and cache_dir is not None:
        return {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir / "tensorrt"),
            "trt_timing_cache_enable": True,
        }
    if provider == "CUDAExecutionProvider":
        # Grow the GPU arena by what is asked, not by doubling: a second 1024^2 batch should
        # not reserve twice the memory it needs.
        return {"arena_extend_strategy": "kSameAsRequested"}
    return {}


def session_options(
    threads: int = 0,
    input_size: int = 0,
    batch_size: int = 1,
) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # Single-flight inference (inference.py) means one run at a time: all physical cores go to
    # that run, and inter-op parallelism would only oversubscribe them.
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle intra-op threads sleep: spinning would steal CPU from the next request's decoding.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The arena keeps RSS flat; a memory pattern would be planned on top of it and raise the
    # peak by half (docs/performance.md, "Memory").
    options.enable_mem_pattern = False
    # Pin symbolic dims so ORT plans memory and folds shape arithmetic as for a static graph.
    # Names that the model does not use are ignored by ORT.
    if batch_size <= 1:
        options.add_free_dimension_override_by_name(BATCH_DIM, 1)
    if input_size > 0:
        options.add_free_dimension_override_by_name(HEIGHT_DIM, input_size)
        options.add_free_dimension_override_by_name(WIDTH_DIM, input_size)
    return options


def cache_path(cache_dir: Path, model_path: Path, input_size: int, batch_size: int) -> Path:
    """Where the optimised graph of this model file is saved: the name carries the model's
    size and mtime (a replaced model file, even one given an older mtime by ``cp -p``, is a
    new name), the ONNX Runtime version, the CPU fingerprint, the batch and the input size."""
    stat = model_path.stat()
    version = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    # "opt2": the weights are in a side file (create_session); "opt" files held them inline.
    return cache_dir / f"{_graph_prefix(model_path, input_size, batch_size)}.{version}.opt2.onnx"


def _graph_prefix(model_path: Path, input_size: int, batch_size: int) -> str:
    """What the names of every saved graph of this model file, for these dims, start with."""
    batch = "1" if batch_size <= 1 else "n"
    size = str(input_size) if input_size > 0 else "model"
    return f"{model_path.stem}.ort{ort.__version__}.{cpu_fingerprint()}.b{batch}.s{size}"


def create_session(
    model_path: Path,
    providers: tuple[str, ...] = (),
    threads: int = 0,
    cache_dir: Path | None = None,
    input_size: int = 0,
    batch_size: int = 1,
) -> ort.InferenceSession:
    """One session per model per process; callers must reuse it (it is thread-safe).

    ``input_size`` (0: the model's own) and ``batch_size`` pin the model's symbolic dims;
    a model with fixed spatial dims that differ from ``input_size`` raises InputSizeMismatch.
    """
    chosen = choose_providers(providers)
    provider_list = [(name, provider_options(name, cache_dir)) for name in chosen]
    # Each attempt gets options of its own: loading and saving set fields on theirs.
    make_options = functools.partial(session_options, threads, input_size, batch_size)
    session, loaded = None, model_path
    if cache_dir is not None and chosen[0] == "CPUExecutionProvider":
        # Optimising the graph takes seconds; save the result once and reuse it on start-up.
        cached = cache_path(cache_dir, model_path, input_size, batch_size)
        session = _load_saved_graph(cached, make_options(), provider_list)
        if session is not None:
            loaded = cached
        else:  # None when the save failed, not the model: then loaded below without saving
            session = _optimise_and_save(model_path, cached, make_options(), provider_list)
    if session is None:
        session = ort.InferenceSession(
            str(model_path), sess_options=make_options(), providers=provider_list
        )
    _check_session(session, chosen, input_size, model_path)
    log.info(
        "loaded model %s with providers %s (%d threads%s)",
        loaded.name,
        session.get_providers(),
        session.get_session_options().intra_op_num_threads,
        ", cached graph" if loaded != model_path else "",
    )
    return session


def _load_saved_graph(
    cached: Path, options: ort.SessionOptions, providers: list[Any]
) -> ort.InferenceSession | None:
    """The saved optimised graph, or None when there is none or it does not load (damaged, or
    its weights file removed by a newer save)."""
    if not cached.is_file():
        return None
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(cached), sess_options=options, providers=providers)
    except Exception as exc:
        log.warning("the saved graph %s did not load (%s); optimising again", cached, exc)
        return None


def _optimise_and_save(
    model_path: Path, cached: Path, options: ort.SessionOptions, providers: list[Any]
) -> ort.InferenceSession | None:
    """A session on the model, optimised at ORT_ENABLE_ALL, its graph saved at ``cached``;
    None when the graph could not be written (a full disk, the folder gone).

    The weights go to a side file next to it, which later starts map instead of parsing
    (ISNet: session creation 0.2 s -> 0.02 s, and processes share the weights' pages). Both
    are written under names no other process uses, so a process starting at the same moment
    never loads a half-written file.
    """
    token = f"{os.getpid()}-{secrets.token_hex(4)}"  # unique across processes and threads
    written = cached.with_name(f".{cached.name}.{token}.tmp")
    weights = cached.with_name(f"{cached.name}.{token}.data")
    saving = _saving_marker(weights)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        saving.touch()  # other saves leave these weights alone until the rename below
    except OSError as exc:
        log.warning("cannot write the optimised-model cache in %s: %s", cached.parent, exc)
        return None
    options.optimized_model_filepath = str(written)
    options.add_session_config_entry(EXTERNAL_DATA_FILE, weights.name)
    options.add_session_config_entry(EXTERNAL_DATA_MIN_BYTES, "1024")
    # ORT warns that NCHWc nodes are hardware specific; the cache name carries the CPU
    # fingerprint, so the warning does not apply here.
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
    except Exception as exc:
        _remove(written, weights, saving)
        # Most likely the save (a full disk, the folder gone): try once more without it, which
        # raises the model's own error if the model is what failed.
        log.warning("optimising and saving %s failed (%s); loading without saving", cached, exc)
        return None
    except BaseException:
        _remove(written, weights, saving)
        raise
    if not written.is_file():
        _remove(weights, saving)
        return session
    # One saver at a time renames and cleans up, so the graph left in place always has its
    # weights: of saves that ran at once, the last to rename keeps its files.
    with _save_lock(cached):
        try:
            os.replace(written, cached)
        except OSError as exc:
            log.warning("cannot write the optimised-model cache %s: %s", cached, exc)
            _remove(written, weights)
        else:
            # Earlier saves' graphs and weights (a process that maps some keeps its pages)
            # and what dead saves left.
            _remove(*_stale_files(cached, weights))
        _remove(saving)
    return session


def _saving_marker(weights: Path) -> Path:
    return weights.with_name(weights.name + ".saving")


def _stale_files(cached: Path, keep: Path) -> list[Path]:
    """What earlier saves of this model's graph left: graphs of other versions of the model
    file (and the format before side files), their weights and lock files, except the weights
    of saves still running (marker younger than an hour), and temporary graphs older than an
    hour."""
    prefix = cached.name.rsplit(".", 3)[0]  # drop ".<version>.opt2.onnx"
    stale: list[Path] = []
    try:
        entries = list(cached.parent.iterdir())
    except OSError:
        return stale
    for path in entries:
        name = path.name
        if not name.startswith((f"{prefix}.", f".{prefix}.")) or path in (cached, keep):
            continue
        if name.endswith(".data"):
            marker = _saving_marker(path)
            if not _younger_than_an_hour(marker):
                stale += [path, marker]
        elif name.endswith(".tmp"):
            if not _younger_than_an_hour(path):
                stale.append(path)
        elif name.endswith(".onnx") or (name.endswith(".lock") and name != f"{cached.name}.lock"):
            stale.append(path)
    return stale


def _younger_than_an_hour(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime < 3600
    except OSError:
        return False


@contextlib.contextmanager
def _save_lock(cached: Path) -> Iterator[None]:
    """An exclusive lock on ``cached``.lock (flock: between processes and between threads).
    Where there is none to take (no fcntl on Windows, NFS without locks, a lock file of
    another user), saving goes on without it: a graph that lost its weights is re-made."""
    handle = None
    try:
        import fcntl

        handle = open(cached.with_name(cached.name + ".lock"), "a+b")  # noqa: SIM115
        fcntl.flock(handle, fcntl.LOCK_EX)
    except (ImportError, OSError) as exc:
        log.debug("saving %s without a lock: %s", cached, exc)
        if handle is not None:
            handle.close()
            handle = None
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the lock


def _remove(*paths: Path) -> None:
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


def _check_session(
    session: ort.InferenceSession, chosen: list[str], input_size: int, model_path: Path
) -> None:
    active = session.get_providers()
    wanted_gpu = [p for p in chosen if p in GPU_PROVIDERS]
    if wanted_gpu and not any(p in GPU_PROVIDERS for p in active):
        # ORT lists CUDA as available whenever onnxruntime-gpu is installed, then quietly
        # runs on the CPU if the CUDA/cuDNN libraries fail to load: say so loudly.
        log.warning(
            "requested %s but the session runs on %s: check the CUDA/cuDNN install "
            "(ONNX Runtime's own error is above)",
            ", ".join(wanted_gpu),
            active,
        )
    inputs = session.get_inputs()
    shape = inputs[0].shape if inputs else []
    if input_size > 0 and len(shape) == 4:
        fixed = [d for d in shape[2:] if isinstance(d, int)]
        if fixed and any(d != input_size for d in fixed):
            raise InputSizeMismatch(
                f"{model_path.name} has a fixed input size of {shape[2]}x{shape[3]}, so input "
                f"size {input_size} cannot be used; regenerate the fp32 conversion with "
                "`alphacut models pull` (it makes the size dynamic) or use the model's size"
            )
