"""Fast inference and run-time choices: the ONNX stack, the compile decision, the CPU allocator.

- :func:`export_onnx` is the one ONNX exporter (used in memory here and for files by :mod:`sedensenet.export`);
  :class:`OnnxRuntimeModule` runs a model exported in memory, :class:`OnnxModel` an exported ``.onnx`` file.

- :func:`optimize_for_inference` turns a model into a module that computes the same logits (within
  ``1e-4``) faster: ONNX Runtime on CPU when it is installed (exported in memory, verified against the eager
  model), else the eager model's own fast path (channels_last, BN folding, one buffer per dense block).
- :func:`should_compile` decides ``--compile auto``: compile only when the run is long enough to repay it.
- :func:`tune_malloc` keeps glibc from handing large tensors back to the kernel after every use.

Measured on a 2-core CPU VM (``benchmarks/README.md`` has the table), DenseNet-121 + SE inference at 224 px,
batch 32, against torchvision's eager model: ONNX Runtime 3.4-3.7x under glibc's default allocator (1.8x when
both run with jemalloc), the eager fast path 2.1x (1.6x). Compiling a training step takes about two minutes
on that CPU and the compiled step was no faster than the eager fast path.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import io
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sedensenet.checkpoint import CheckpointError, CheckpointMeta, meta_from_json
from sedensenet.config import INFERENCE_BACKENDS, ConfigError
from sedensenet.models import set_fast

log = logging.getLogger(__name__)

BACKENDS = INFERENCE_BACKENDS
"""The one list of inference backends (defined in :mod:`sedensenet.config`, so the CLI can offer it without torch)."""
INT8_BACKEND = "onnxruntime-int8"
"""The backend that runs an exported int8 ``.onnx`` model (see :func:`int8_model_path`)."""
MIN_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
ONNX_META_KEY = "sedensenet"
"""The ``metadata_props`` key of an exported ``.onnx`` file that holds the checkpoint metadata as JSON."""

# --compile auto: what compiling costs and what it gains, per device type (measured, see benchmarks/README.md).
COMPILE_SECONDS = {"cpu": 127.0, "cuda": 60.0}
"""First-compile time of a DenseNet-121 training step: measured on CPU (2 cores), an estimate for CUDA."""
COMPILE_SPEEDUP = {"cpu": 0.93, "cuda": 1.35}
"""Speed of a compiled training step relative to the eager fast path: measured on CPU (slower: compiling
never pays there), an estimate for CUDA with AMP until ``bench.py --device cuda`` measures it."""
SECONDS_PER_STEP = {"cpu": 1.5, "cuda": 0.15}
"""A training step's time when the caller has no measurement (DenseNet-121, 224 px, batch 16 / 64)."""


class OnnxExportError(RuntimeError):
    """PyTorch could not export the model to ONNX (the message carries the exporter's reason)."""


@contextlib.contextmanager
def quiet_deprecations() -> Iterator[None]:
    """Keep torch.jit's and the TorchScript-based ONNX exporter's per-call deprecation warnings out of the log:
    they are still the offline, dependency-free path."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.* is deprecated")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*legacy TorchScript-based ONNX")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message="The feature will be removed")
        yield


def export_onnx(model: nn.Module, example: torch.Tensor, opset: int = MIN_OPSET, dynamic_size: bool = False) -> bytes:
    """``model`` (eval mode) as ONNX bytes with a dynamic batch axis (and height and width with ``dynamic_size``).

    PyTorch's TorchScript-based exporter (``dynamo=False``) runs offline, needs only ``onnx`` and exports a
    DenseNet in well under a second; the ``torch.export``-based one (which needs ``onnxscript``) is tried only
    when that fails and ``onnxscript`` is installed.
    """
    kwargs: dict[str, Any] = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    buffer = io.BytesIO()
    try:
        with quiet_deprecations(), torch.no_grad():
            dynamic = {INPUT_NAME: axes, OUTPUT_NAME: {0: "batch"}}
            torch.onnx.export(model, (example,), buffer, dynamic_axes=dynamic, dynamo=False, **kwargs)
        return buffer.getvalue()
    except Exception as legacy_error:  # removed in a future PyTorch, or an operator it cannot handle
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            raise OnnxExportError(f"ONNX export failed: {legacy_error}") from legacy_error
        log.info("TorchScript-based ONNX export failed (%s); trying the torch.export-based exporter", legacy_error)
    shapes = {i: torch.export.Dim.AUTO for i in axes}
    program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=(shapes,), **kwargs)
    return program.model_proto.SerializeToString()


class _OrtRunner(nn.Module):
    """An ONNX Runtime session called like a model: a float batch ``(B, C, H, W)`` in, logits on its device out."""

    session: Any

    def _start(self, source: str | bytes, options: Any = None, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(source, options, providers=providers or ["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(logits).to(x.device)  # (B, num_classes)


class OnnxRuntimeModule(_OrtRunner):
    """A model exported to ONNX in memory and run by ONNX Runtime on CPU; call it like the model (eval mode).

    Takes a float tensor ``(B, C, H, W)`` (any batch size and image size the network accepts) and returns the
    logits as a tensor on the input's device. It holds a snapshot of the weights: optimise again after training.
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_bytes = export_onnx(model, example, dynamic_size=True)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self._start(onnx_bytes, options)


class OnnxModel(_OrtRunner):
    """An exported ``.onnx`` file run by ONNX Runtime, usable where a model is expected.

    Calling it on a float tensor batch ``(B, C, H, W)`` (normalised as the metadata says) returns the logits
    as a tensor on the input's device; ``.to()``, ``.eval()`` and ``.train()`` work as on any module (there
    are no parameters to move), so :class:`~sedensenet.engine.predictor.Predictor` uses it unchanged.

    Attributes:
        meta: the checkpoint metadata rebuilt from the file.
        classes: the class names, in output order.
    """

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"ONNX file not found: {self.path}")
        try:
            self._start(str(self.path), providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for unreadable files
            raise CheckpointError(f"{self.path} is not a readable ONNX model: {e}") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(ONNX_META_KEY)
        if raw is None:
            raise CheckpointError(
                f"{self.path} has no sedensenet metadata (classes, preprocessing): "
                "only files written by `sedensenet export` can be used for prediction"
            )
        self.meta: CheckpointMeta = meta_from_json(raw, self.path)
        self.classes = list(self.meta.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.meta.image_size
        expected = (self.meta.in_chans, size, size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"{self.path.name} takes (B, {', '.join(map(str, expected))}) input, got {tuple(x.shape)}")
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, classes={len(self.classes)}"


def int8_model_path(source: Path) -> Path:
    """The int8 model for ``source``: itself when it is an ``.onnx`` file, else ``<checkpoint>.int8.onnx`` beside
    the checkpoint, where ``sedensenet export CKPT --format onnx --quantize int8`` writes it by default."""
    if source.suffix == ".onnx":
        return source
    path = source.with_suffix(".int8.onnx")
    if not path.is_file():
        raise CheckpointError(
            f"no int8 model beside {source} ({path.name}): make it with "
            f"`sedensenet export {source} --format onnx --quantize int8` (calibrated and measured against fp32)"
        )
    return path


def is_int8(model: OnnxModel) -> bool:
    """Whether an exported model was quantized by ``sedensenet export --quantize int8``."""
    return "quantization" in model.meta.extra


class EagerInference(nn.Module):
    """The model in eval mode under ``torch.inference_mode``: its own fast path, no autograd bookkeeping."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x)


def _default_example(model: nn.Module, device: torch.device) -> torch.Tensor:
    config = getattr(model, "config", None)
    in_chans = getattr(config, "in_chans", 3)
    size = max(64, config.min_input_size()) if config is not None else 224
    return torch.randn(2, in_chans, size, size, device=device)


ONNX_MIN_IMAGES = 256
"""``auto`` uses ONNX Runtime for jobs of at least this many images: exporting, optimising and verifying the
graph takes 5-13 s for DenseNet-121, which 3x faster batches repay after a few hundred images."""


def optimize_for_inference(
    model: nn.Module,
    example: torch.Tensor | None = None,
    backend: str = "auto",
    atol: float = 1e-4,
    images: int | None = None,
    low_precision: bool = False,
) -> nn.Module:
    """A module computing ``model(x)`` in eval mode, faster; the model itself is put in eval mode.

    Args:
        model: a DenseNet (or any module ONNX can export when ``backend`` is ``onnxruntime``).
        example: an input batch for export and verification; default random ``(2, C, 64, 64)`` images.
        backend: ``auto`` (ONNX Runtime on CPU when installed, else ``eager``), ``onnxruntime``, ``eager``
            (the model's fast path under inference mode), ``compile`` (``torch.compile`` with frozen weights:
            tens of seconds to compile, worth it for long runs only) or ``reference`` (the model itself, its
            fast paths switched off).
        atol: the largest absolute logit difference to the eager model that is accepted; a backend that
            differs more is not used (a warning says so) and the eager module is returned.
        images: how many images the caller will run, when known: ``auto`` keeps the eager path (no set-up
            time) for fewer than :data:`ONNX_MIN_IMAGES`.
        low_precision: the caller runs the eager path under bf16/fp16 autocast: ``auto`` keeps it (see
            :func:`resolve_backend`).

    Returns:
        A module to call on image batches; ONNX Runtime and compiled modules hold a snapshot of the weights.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown inference backend {backend!r}: choose from {list(BACKENDS)}")
    if backend == INT8_BACKEND:
        raise ConfigError(
            f"the {INT8_BACKEND} backend runs an int8 model exported from a checkpoint "
            "(`sedensenet export CKPT --format onnx --quantize int8`), not a model in memory"
        )
    model.eval()
    if backend == "reference":
        set_fast(model, False)
        return model
    device = next(iter(model.parameters()), torch.empty(0)).device
    eager = EagerInference(model)
    backend = resolve_backend(backend, device.type, images, low_precision)
    if backend == "eager":
        return eager
    example = _default_example(model, device) if example is None else example.to(device)
    try:
        fast = _build(model, example, backend)
        with torch.inference_mode():
            diff = (fast(example).float() - eager(example).float()).abs().max().item()
    except Exception as e:  # an exporter or runtime failure must not stop inference: fall back, loudly
        log.warning("inference backend %s failed (%s: %s); using the eager model", backend, type(e).__name__, e)
        return eager
    if not diff <= atol:
        log.warning(
            "inference backend %s differs from the eager model by %.2e > %.0e; using eager", backend, diff, atol
        )
        return eager
    log.info("inference backend: %s (max |logit difference| to eager %.1e)", backend, diff)
    return fast


def resolve_backend(backend: str, device_type: str, images: int | None, low_precision: bool = False) -> str:
    """``auto`` made concrete for a job of ``images`` images on ``device_type``: ONNX Runtime on CPU for jobs of
    :data:`ONNX_MIN_IMAGES` or more (or of unknown size) when it is installed, else ``eager``; others unchanged.

    ``low_precision``: the eager path runs under bf16 autocast (``--amp`` on a CPU with bf16 units), which is
    faster than ONNX Runtime's float32 (1.57x at 224 px, batch 32: benchmarks/README.md), so ``auto`` keeps it.
    """
    if backend != "auto":
        return backend
    if low_precision:
        return "eager"
    big = images is None or images >= ONNX_MIN_IMAGES
    return "onnxruntime" if device_type == "cpu" and big and _has_onnxruntime() else "eager"


def _build(model: nn.Module, example: torch.Tensor, backend: str) -> nn.Module:
    if backend == "onnxruntime":
        if example.device.type != "cpu":
            raise ValueError("the onnxruntime backend runs on CPU; use backend='eager' or 'compile' on a GPU")
        return OnnxRuntimeModule(model, example)
    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    compiled = torch.compile(frozen, options={"freezing": True})
    return EagerInference(compiled)


def _has_onnxruntime() -> bool:
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def should_compile(
    device_type: str, steps_per_epoch: int, epochs: int, seconds_per_step_estimate: float | None = None
) -> tuple[bool, str]:
    """Decide ``--compile auto``: compile when the time it saves exceeds the time it costs.

    Args:
        device_type: ``"cpu"`` or ``"cuda"`` (others are never compiled).
        steps_per_epoch: training steps per epoch.
        epochs: epochs planned.
        seconds_per_step_estimate: a measured eager step time (e.g. from the first steps); a per-device
            default for DenseNet-121 otherwise.

    Returns:
        ``(compile, reason)``, the reason being a sentence for the log.
    """
    if device_type not in COMPILE_SECONDS:
        return False, f"not compiling: no compile estimate for device {device_type!r}"
    steps = max(0, steps_per_epoch) * max(0, epochs)
    per_step = seconds_per_step_estimate if seconds_per_step_estimate else SECONDS_PER_STEP[device_type]
    speedup = COMPILE_SPEEDUP[device_type]
    cost = COMPILE_SECONDS[device_type]
    if speedup <= 1:
        return False, (
            f"not compiling: on {device_type} a compiled step measured {speedup:.2f}x the eager fast path's speed, "
            f"and compiling costs ~{cost:,.0f} s"
        )
    saved = steps * per_step * (1 - 1 / speedup)
    verdict = "compiling" if saved > cost else "not compiling"
    reason = (
        f"{verdict}: {steps:,} steps x {per_step:.2f} s at an expected {speedup:.2f}x would save ~{saved:,.0f} s, "
        f"compiling costs ~{cost:,.0f} s on {device_type}"
    )
    return saved > cost, reason


def tune_malloc_for_training(memory_efficient: bool) -> str | None:
    """:func:`tune_malloc` unless the run is memory-efficient (tuning trades 5-20% more peak memory for speed, the
    wrong trade in that mode); ``None`` when nothing was tried. The caller decides whether to tune at all
    (``sedensenet.train(tune_malloc=...)``)."""
    if memory_efficient:
        return None
    return tune_malloc()


def tune_malloc() -> str:
    """Make glibc keep freed memory for reuse instead of returning large blocks to the kernel each time.

    PyTorch frees and reallocates tensors of tens of megabytes every step; glibc serves those with fresh
    ``mmap`` calls whose pages the kernel must fault in and zero each time (17-35% of CPU time measured
    here). Turning off ``mmap`` for allocations and trimming (``mallopt``) made DenseNet training and inference
    as fast as with jemalloc. Does nothing when another allocator is preloaded, off glibc, or when the
    environment sets ``SEDENSENET_MALLOC=default``. Affects the whole process: ``train``, ``predict`` and
    ``evaluate`` call it unless given ``tune_malloc=False``; library code below them never does.

    Returns:
        What was done, for the log.
    """
    if os.environ.get("SEDENSENET_MALLOC", "").lower() in ("default", "off", "0"):
        return "allocator left as is (SEDENSENET_MALLOC)"
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return f"allocator left as is ({os.path.basename(preload.split(':')[0])} preloaded)"
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        if libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 2**31 - 1):
            return "glibc malloc tuned: no mmap for large blocks, no trimming"
    return "allocator left as is (not glibc)"


def allocator_name() -> str:
    """Which allocator this process runs with: ``jemalloc``, ``tcmalloc``, ``mimalloc`` or ``glibc``."""
    with contextlib.suppress(OSError), open("/proc/self/maps") as maps:
        text = maps.read()
        for name in ("jemalloc", "tcmalloc", "mimalloc"):
            if name in text:
                return name
    return "glibc"


def describe(obj: Any) -> str:
    """A short name for what :func:`optimize_for_inference` returned."""
    if isinstance(obj, OnnxRuntimeModule):
        return "onnxruntime"
    if isinstance(obj, OnnxModel):
        return "onnxruntime (exported file)"
    if isinstance(obj, EagerInference):
        return "compile" if hasattr(obj.model, "_orig_mod") else "eager"
    return type(obj).__name__
