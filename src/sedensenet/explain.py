"""What a model looks at and what its attention learned: Grad-CAM heat-maps and SE channel gates per class.

Grad-CAM (Selvaraju et al., 2017) weights the channels of the last dense block's output (the map before
``norm5``) by the mean gradient of the target logit and keeps the positive part. The block output is caught
by a forward hook and re-rooted as a leaf tensor, so the gradient is taken there and nowhere else: nothing
earlier is back-propagated, parameter ``.grad`` fields are never touched, and the in-place ReLU after
``norm5`` (which acts on ``norm5``'s output, not on the block's) cannot spoil it. The memory-efficient
path (recomputing inside the block) only runs in training mode; Grad-CAM runs in eval mode and gives the
same maps for both.

SE channel weights: for every image of a labelled folder the gate vector of one SE layer is recorded
(by a forward hook on its ``gate`` submodule), averaged per true class and compared between classes.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from sedensenet.checkpoint import CheckpointMeta, load_checkpoint, resolve_checkpoint
from sedensenet.config import ConfigError
from sedensenet.data import build_transforms, check_image, load_image
from sedensenet.engine.decision import decide_labels, postprocess
from sedensenet.fileio import atomic_write, atomic_write_json, atomic_write_text
from sedensenet.models.se import SqueezeExcite

logger = logging.getLogger(__name__)

METHODS = ("gradcam",)
OVERLAY_ALPHA = 0.4
TOP_CHANNELS = 10


def _last_dense_block(model: nn.Module) -> nn.Module:
    features = getattr(model, "features", None)
    named = features.named_children() if isinstance(features, nn.Module) else []
    blocks = [(int(n.removeprefix("denseblock")), m) for n, m in named if re.fullmatch(r"denseblock\d+", n)]
    if not blocks:
        raise ValueError("Grad-CAM needs a DenseNet: the model has no features.denseblock{i} modules")
    return max(blocks, key=lambda b: b[0])[1]


def _target_index(target: int | list[int] | None, logits: torch.Tensor) -> torch.Tensor:
    batch, num_classes = logits.shape
    if target is None:
        return logits.argmax(1)
    index = torch.as_tensor([target] * batch if isinstance(target, int) else list(target), device=logits.device)
    if index.shape != (batch,):
        raise ValueError(f"target needs one class per image ({batch}), got {len(index)}")
    if bool(((index < 0) | (index >= num_classes)).any()):
        raise ValueError(f"target classes must be in 0..{num_classes - 1}, got {index.tolist()}")
    return index


def _normalise(cam: torch.Tensor) -> torch.Tensor:
    """Each map scaled to [0, 1]; a constant map becomes all zeros."""
    flat = cam.flatten(1)
    low = flat.min(1).values[:, None, None]
    span = (flat.max(1).values - flat.min(1).values)[:, None, None]
    return torch.where(span > 1e-12, (cam - low) / span.clamp_min(1e-12), torch.zeros_like(cam))


def _grad_cam(
    model: nn.Module, images: torch.Tensor, target: int | list[int] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps ``(B, H, W)`` and the logits ``(B, K)``."""
    captured: dict[str, torch.Tensor] = {}

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        captured["act"] = output.detach().requires_grad_(True)  # the gradient is taken here, see module doc
        return captured["act"]

    modes = {m: m.training for m in model.modules()}  # restored one by one: a frozen BN may be in eval already
    handle = _last_dense_block(model).register_forward_hook(hook)
    try:
        model.eval()
        with torch.enable_grad():
            logits = model(images)  # (B, K)
            index = _target_index(target, logits)
            score = logits.gather(1, index[:, None]).sum()
            (grads,) = torch.autograd.grad(score, captured["act"])  # (B, C, h, w)
    finally:
        handle.remove()
        for m, training in modes.items():
            m.training = training
    act = captured["act"].detach()
    weights = grads.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
    cam = F.relu((weights * act).sum(1, keepdim=True))  # (B, 1, h, w)
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return _normalise(cam), logits.detach()


def grad_cam(model: nn.Module, images: torch.Tensor, target: int | list[int] | None = None) -> torch.Tensor:
    """Grad-CAM heat-maps over the last dense block of a DenseNet.

    Args:
        model: a :class:`~sedensenet.models.DenseNet` (run in eval mode; its mode is restored afterwards).
        images: ``(B, C, H, W)`` normalised input batch.
        target: the class to explain: one index for all images, one per image, or None for the predicted class.

    Returns:
        ``(B, H, W)`` maps in [0, 1] (a map without any positive evidence is all zeros).
    """
    return _grad_cam(model, images, target)[0]


def resolve_target(target: str | int | None, classes: list[str], *, multilabel: bool = False) -> int | None:
    """The index of a class (a multi-label model's label) given by name or index (None stays None); ValueError
    listing them."""
    if target is None:
        return None
    if isinstance(target, str) and target in classes:
        return classes.index(target)
    text = str(target).strip()
    if text.isdigit() and int(text) < len(classes):
        return int(text)
    noun = "label" if multilabel else "class"
    raise ConfigError(f"unknown target {noun} {target!r}; choose one of {classes} or an index 0..{len(classes) - 1}")


def output_probabilities(logits: torch.Tensor, meta: CheckpointMeta | None) -> np.ndarray:
    """``(B, K)`` probabilities as predict computes them: softmax, or for a multi-label model each label's sigmoid
    with its temperature."""
    if meta is not None and meta.multilabel:
        return postprocess(logits.detach().float().sigmoid().cpu().numpy(), meta)
    return logits.detach().float().softmax(1).cpu().numpy()


@dataclass
class MapTarget:
    """One heat-map to draw: which image of the batch, which class (label), and why that one."""

    image: int
    target: int
    reason: str
    """``given`` (the caller's target), ``predicted`` (single-label), ``decided`` (a label decided present) or
    ``most probable, none decided``."""


def choose_targets(probs: np.ndarray, meta: CheckpointMeta | None, target: int | None) -> list[MapTarget]:
    """The maps to draw for a batch's probabilities ``(B, K)``: the given target for every image; else the predicted
    class, or for a multi-label model each label decided present (most probable first), or its most probable
    label when none is."""
    if target is not None:
        return [MapTarget(i, target, "given") for i in range(len(probs))]
    if meta is None or not meta.multilabel:
        return [MapTarget(i, int(p.argmax()), "predicted") for i, p in enumerate(probs)]
    maps = []
    for i, (p, present) in enumerate(zip(probs, decide_labels(probs, meta), strict=True)):
        order = [int(k) for k in np.argsort(-p, kind="stable") if present[k]]
        none = [MapTarget(i, int(p.argmax()), "most probable, none decided")]
        maps += [MapTarget(i, k, "decided") for k in order] or none
    return maps


@dataclass
class ExplainedImage:
    """One heat-map of an input: where its overlay went, the predicted class and the class the map is for.

    A multi-label model gets one per label decided present (or its most probable label when none is): ``predicted``
    joins the decided labels with ``|``, ``probability`` is the mapped label's."""

    source: Path
    output: Path
    predicted: str
    probability: float
    target: str
    reason: str = "predicted"
    """Why this target: ``given``, ``predicted``, ``decided``, ``most probable, none decided``."""
    labels: list[str] | None = None
    """Multi-label: the labels decided present, most probable first."""

    @property
    def title(self) -> str:
        """The grid's caption: what was predicted and which class (label) the map is for, and why."""
        if self.labels is None:
            return f"pred: {self.predicted} ({self.probability:.2f}) / target: {self.target}"
        decided = ", ".join(self.labels) or "none"
        return f"decided: {decided}\nmap: {self.target} ({self.probability:.2f}; {self.reason})"


@dataclass
class ExplainResult:
    """What :func:`explain_images` wrote and which inputs it could not read."""

    images: list[ExplainedImage]
    grid: Path | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def written(self) -> list[Path]:
        """Every file written: the per-image overlays, then the grid."""
        return [e.output for e in self.images] + ([self.grid] if self.grid else [])


def heatmap_colors(cam: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A map ``(h, w)`` in [0, 1] resized to ``size`` (height, width) and coloured with ``jet``: ``(H, W, 3)`` in
    [0, 1]."""
    from matplotlib import colormaps

    resized = F.interpolate(cam[None, None].float().cpu(), size=size, mode="bilinear", align_corners=False)
    return colormaps["jet"](resized[0, 0].clamp(0, 1).numpy())[..., :3]  # (H, W, 3)


def overlay(image: Image.Image, cam: torch.Tensor) -> np.ndarray:
    """The image (RGB uint8) blended with the jet-coloured map resized to the image's size."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # (H0, W0, 3)
    heat = heatmap_colors(cam, rgb.shape[:2])
    blended = (1 - OVERLAY_ALPHA) * rgb + OVERLAY_ALPHA * heat
    return np.clip(blended * 255 + 0.5, 0, 255).astype(np.uint8)


@dataclass
class ImageExplanation:
    """What :func:`explain_image` found for one image."""

    cam: torch.Tensor
    """``(H, W)`` Grad-CAM map in [0, 1] at the model's input size."""
    probs: np.ndarray
    """``(K,)`` class probabilities of the explained forward pass (multi-label: each label's, as predict gives)."""
    target: int
    """The class the map is for."""
    se_layer: str | None = None
    se_weights: np.ndarray | None = None
    """``(C,)`` gate values of ``se_layer`` (the model's last SE layer) for this image; None without SE."""


def explain_image(
    model: nn.Module, x: torch.Tensor, target: int | None = None, *, meta: CheckpointMeta | None = None
) -> ImageExplanation:
    """Grad-CAM and the last SE layer's channel gates for one preprocessed image ``x`` ``(C, S, S)``.

    ``meta``: the model's (default its ``.meta``); for a multi-label model ``probs`` are the labels' sigmoid
    outputs and the default target is the most probable label decided present, else the most probable label.
    The gates are read by a forward hook on the SE layer's ``gate`` submodule. Runs a forward and a backward
    pass on ``model`` (hooks are added and removed): give it a model no other thread is using.
    """
    meta = meta if meta is not None else getattr(model, "meta", None)
    if target is None and meta is not None and meta.multilabel:
        with torch.no_grad():
            target = choose_targets(output_probabilities(model.eval()(x[None]), meta), meta, None)[0].target
    layers = model.se_modules() if hasattr(model, "se_modules") else {}
    name, module = next(reversed(layers.items())) if layers else (None, None)
    gates: list[torch.Tensor] = []
    handle = module.gate.register_forward_hook(lambda m, i, out: gates.append(out.detach())) if module else None
    try:
        cams, logits = _grad_cam(model, x[None], target)
    finally:
        if handle is not None:
            handle.remove()
    probs = output_probabilities(logits, meta)[0]
    chosen = int(probs.argmax()) if target is None else target
    se = gates[-1].float().flatten().cpu().numpy() if gates else None  # (C,)
    return ImageExplanation(cams[0].cpu(), probs, chosen, name, se)


def _unique_path(output_dir: Path, stem: str, used: set[str]) -> Path:
    name, n = f"{stem}_gradcam.png", 1
    while name in used:
        n += 1
        name = f"{stem}_{n}_gradcam.png"
    used.add(name)
    return output_dir / name


def _file_stem(path: Path, label: str | None) -> str:
    """``<stem>`` or, for one label's map of a multi-label model, ``<stem>_<label>`` (characters a file name cannot
    hold replaced)."""
    return path.stem if label is None else path.stem + "_" + re.sub(r"[^\w.-]+", "_", label)


def _load_inputs(files: list[Path], meta: CheckpointMeta) -> tuple[list[tuple[Path, Image.Image]], list[Any]]:
    loaded, skipped = [], []
    for path in files:
        reason = check_image(path)
        if reason is None:
            try:
                loaded.append((path, load_image(path, meta.in_chans, dicom=meta.dicom_options())))
                continue
            except Exception as exc:  # any decode failure (it changed since the check): report and go on
                reason = str(exc)
        logger.warning("skipping %s: %s", path, reason)
        skipped.append((path, reason))
    return loaded, skipped


def explain_images(
    checkpoint: str | os.PathLike,
    images: list[str | os.PathLike],
    output_dir: str | os.PathLike,
    target: str | None = None,
    method: str = "gradcam",
    device: str = "auto",
    batch_size: int = 16,
) -> ExplainResult:
    """Grad-CAM overlays for image files, one PNG each at the image's own size, plus ``gradcam_grid.png``.

    A multi-label model's map is of one label's logit: ``target``'s, else one map per label decided present (at its
    stored threshold, as predict decides; named ``<stem>_<label>_gradcam.png``), or of the most probable label when
    none is; each caption says which.

    Args:
        checkpoint: a checkpoint or run folder.
        images: image files or folders (searched recursively).
        output_dir: where ``<stem>_gradcam.png`` (clashing names get a number) and the grid go.
        target: the class (label) to explain, by name or index; default each image's predicted class (decided
            labels).
        method: only ``"gradcam"`` for now.
        device: ``auto``, ``cpu``, ``cuda``, ``mps`` ...
        batch_size: images per forward/backward pass.

    Raises:
        ValueError: an unknown method or target class or label (the message lists them).
    """
    from sedensenet.engine.device import select_device
    from sedensenet.engine.samples import expand_inputs
    from sedensenet.reports import plot_gradcam_grid

    if method not in METHODS:
        raise ConfigError(f"unknown explain method {method!r}; choose one of: {', '.join(METHODS)}")
    dev = select_device(device)
    model, meta = load_checkpoint(resolve_checkpoint(checkpoint), map_location=dev)
    target_index = resolve_target(target, list(meta.classes), multilabel=meta.multilabel)
    transform = build_transforms(
        meta.image_size, train=False, augment="none", mean=meta.mean, std=meta.std, in_chans=meta.in_chans
    )
    loaded, skipped = _load_inputs(expand_inputs(images), meta)
    out_dir = Path(output_dir)
    used: set[str] = {"gradcam_grid.png"}
    explained, thumbs, overlays = [], [], []
    for start in range(0, len(loaded), batch_size):
        chunk = loaded[start : start + batch_size]
        x = torch.stack([_to_tensor(transform(im), meta.in_chans) for _, im in chunk]).to(dev)  # (B, C, S, S)
        for item, image, blended in _explain_chunk(model, meta, chunk, x, target_index, out_dir, used, batch_size):
            explained.append(item)
            thumbs.append(_thumbnail(image.convert("RGB")))
            overlays.append(_thumbnail(Image.fromarray(blended)))
    titles = [e.title for e in explained]
    grid = plot_gradcam_grid(thumbs, overlays, titles, out_dir / "gradcam_grid.png") if explained else None
    logger.info("wrote %d Grad-CAM overlays to %s (%d skipped)", len(explained), out_dir, len(skipped))
    return ExplainResult(explained, grid, skipped)


def _explain_chunk(
    model: nn.Module, meta: CheckpointMeta, chunk: list[tuple[Path, Image.Image]], x: torch.Tensor,
    target: int | None, out_dir: Path, used: set[str], batch_size: int,
) -> Iterator[tuple[ExplainedImage, Image.Image, np.ndarray]]:  # fmt: skip
    """Each map of a batch ``x`` of ``chunk``'s images (:func:`choose_targets`), written as an overlay PNG: the
    record, the input image and the overlay's pixels."""
    with torch.no_grad():
        probs = output_probabilities(model.eval()(x), meta)  # (B, K)
    maps = choose_targets(probs, meta, target)
    classes, multi = list(meta.classes), meta.multilabel
    present = decide_labels(probs, meta) if multi else None  # the decided set, also when a target was given
    for first in range(0, len(maps), batch_size):  # several labels per image: at most batch_size maps per pass
        part = maps[first : first + batch_size]
        cams, _ = _grad_cam(model, x[[m.image for m in part]], [m.target for m in part])
        for m, cam in zip(part, cams, strict=True):
            path, image = chunk[m.image]
            p = probs[m.image]
            decided = [classes[k] for k in np.argsort(-p, kind="stable") if present[m.image][k]] if multi else []
            predicted = "|".join(decided) if multi else classes[int(p.argmax())]
            shown = m.target if multi else int(p.argmax())
            blended = overlay(image, cam)
            out = _unique_path(out_dir, _file_stem(path, classes[m.target] if multi else None), used)
            atomic_write(out, lambda tmp, a=blended: Image.fromarray(a).save(tmp, format="PNG"))
            record = ExplainedImage(path, out, predicted, float(p[shown]), classes[m.target], m.reason,
                                    decided if multi else None)  # fmt: skip
            yield record, image, blended


def _to_tensor(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Repeat RGB channels for models with other than 1, 3 or 4 input channels (as the dataset does)."""
    if x.shape[0] != in_chans:
        x = x[[c % x.shape[0] for c in range(in_chans)]]  # (in_chans, H, W)
    return x


def _thumbnail(image: Image.Image, max_side: int = 320) -> np.ndarray:
    """A copy no larger than ``max_side`` for the grid, so many large inputs do not fill the memory."""
    image = image.copy()
    image.thumbnail((max_side, max_side))
    return np.asarray(image)


@dataclass
class SEWeightsResult:
    """Mean SE gate per class and channel of one SE layer, how the classes differ, and the files written."""

    matrix: np.ndarray
    """(num_classes, channels) mean gate values; rows follow ``classes``."""
    classes: list[str]
    layer: str
    counts: list[int]
    """Images per class."""
    distances: list[dict[str, Any]]
    """Per class pair: ``classes``, ``mean_abs_diff`` and ``cosine`` of their mean gate vectors."""
    top_channels: list[dict[str, Any]]
    """The most class-discriminative channels (largest F-ratio), with their per-class means."""
    paths: dict[str, Path]
    """``csv``, ``png`` and ``json``."""


def _se_layer(model: nn.Module, se_layer: str | None, source: Any) -> tuple[str, SqueezeExcite]:
    layers = model.se_modules() if hasattr(model, "se_modules") else {}
    if not layers:
        preset = getattr(getattr(model, "meta", None), "preset", None)
        raise ConfigError(
            f"{source}: this model (preset {preset}) has no SE layers, so it has no channel gates to show"
        )
    if se_layer is None:
        return next(reversed(layers.items()))  # registration order is forward order: the last SE layer
    if se_layer not in layers:
        raise ConfigError(f"unknown SE layer {se_layer!r}; this model has: {', '.join(layers)}")
    return se_layer, layers[se_layer]


def _collect_gates(predictor: Any, module: SqueezeExcite, samples: list[Any], batch_size: int) -> tuple[Any, Any]:
    """Gate vectors ``(N, C)`` of ``module`` for every sample and the labels they belong to ``(N,)``."""
    gates: list[torch.Tensor] = []

    def hook(gate: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        gates.append(output.detach().flatten(1).float().cpu())  # (B, C)

    handle = module.gate.register_forward_hook(hook)
    try:
        # The predictor's own loop: same preprocessing, channel handling and bad-file policy as `evaluate`;
        # its targets come from the loader, so they stay aligned with the gates even if a file is replaced.
        result = predictor.run_samples(samples, batch_size)
    finally:
        handle.remove()
    return torch.cat(gates).numpy().astype(np.float64), np.asarray(result.targets)


def label_rows(gates: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label: one row per (image, label it has) from gates ``(N, C)`` and targets ``(N, K)`` (1 present, 0
    absent, NaN ignored), so each label's mean gate is over the images that have it and the class statistics apply
    with labels as the groups (an image with two labels counts in both; one with none in neither)."""
    rows, labels = np.nonzero(np.nan_to_num(np.asarray(targets, dtype=np.float64), nan=0.0) > 0.5)
    return gates[rows], labels


def _class_statistics(gates: np.ndarray, labels: np.ndarray, present: list[int]) -> dict[str, np.ndarray]:
    """Per-class means, the one-way ANOVA F-ratio per channel and the share of variance between classes."""
    means = np.stack([gates[labels == k].mean(0) for k in present])  # (K, C)
    counts = np.asarray([(labels == k).sum() for k in present])
    grand = gates.mean(0)
    ss_between = (counts[:, None] * (means - grand) ** 2).sum(0)  # (C,)
    ss_within = sum(((gates[labels == k] - means[i]) ** 2).sum(0) for i, k in enumerate(present))
    k, n = len(present), len(labels)
    ms_between = ss_between / max(k - 1, 1)
    ms_within = ss_within / max(n - k, 1)
    f_ratio = ms_between / np.maximum(ms_within, 1e-12)
    eta2 = ss_between / np.maximum(ss_between + ss_within, 1e-12)
    return {"means": means, "counts": counts, "f_ratio": f_ratio, "eta_squared": eta2}


def _pair_distances(means: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    out = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = means[i], means[j]
            cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
            out.append(
                {"classes": [names[i], names[j]], "mean_abs_diff": float(np.abs(a - b).mean()), "cosine": cosine}
            )
    return out


def _se_csv(matrix: np.ndarray, names: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class", *(f"ch{c}" for c in range(matrix.shape[1]))])
    for name, row in zip(names, matrix, strict=True):
        writer.writerow([name, *(f"{v:.6f}" for v in row)])
    return buffer.getvalue()


def se_channel_weights(
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    output_dir: str | os.PathLike,
    split: str = "all",
    batch_size: int = 32,
    se_layer: str | None = None,
    device: str = "auto",
) -> SEWeightsResult:
    """Mean SE gate per class and channel over a labelled folder: what the attention layer learned. For a
    multi-label model the rows are labels, each over the images that have it (:func:`label_rows`).

    Writes ``se_weights.csv`` (a row per class, a column per channel), ``se_weights.png`` (the same as a
    heat-map with channels sorted by F-ratio, most class-discriminative first, above each class's deviation
    from the mean over classes) and ``se_weights.json`` (class pair distances, the top channels, the share of
    gate variance explained by the class, the layer).

    Args:
        checkpoint: a checkpoint or run folder of a model with SE layers.
        data: a class-per-folder tree (or ``builtin:NAME``); folder names must be classes of the model.
        output_dir: where the three files go.
        split: ``all``, ``auto``, ``train``, ``val`` or ``test``.
        batch_size: images per forward pass.
        se_layer: qualified SE module name; default the last SE layer (``features.se_head`` for the tutorial).
        device: ``auto``, ``cpu``, ``cuda``, ...

    Raises:
        ValueError: the model has no SE layers, or an unknown ``se_layer`` (the message lists them).
    """
    from sedensenet.engine.device import select_device
    from sedensenet.engine.predictor import Predictor
    from sedensenet.engine.samples import labelled_samples

    source = resolve_checkpoint(checkpoint)
    dev = select_device(device)
    model, meta = load_checkpoint(source, map_location=dev)
    layer, module = _se_layer(model, se_layer, source)
    predictor = Predictor(model, meta, device=dev)
    samples, _ = labelled_samples(meta, data, split)
    gates, labels = _collect_gates(predictor, module, samples, batch_size)
    if meta.multilabel:
        gates, labels = label_rows(gates, labels)
    present = sorted(set(labels.tolist()))
    names = [meta.classes[k] for k in present]
    missing = [c for k, c in enumerate(meta.classes) if k not in present]
    if missing:
        logger.warning("no images of class(es) %s in %s: they get no row", missing, data)
    stats = _class_statistics(gates, labels, present)
    order = np.argsort(-stats["f_ratio"], kind="stable")
    top = [
        {
            "channel": int(c),
            "f_ratio": float(stats["f_ratio"][c]),
            "class_means": dict(zip(names, stats["means"][:, c].tolist(), strict=True)),
        }
        for c in order[:TOP_CHANNELS]
    ]
    distances = _pair_distances(stats["means"], names)
    paths = _write_se_files(Path(output_dir), stats, names, layer, order, distances, top, str(data), split)
    logger.info("SE gates of %s over %d images written to %s", layer, len(labels), output_dir)
    return SEWeightsResult(stats["means"], names, layer, stats["counts"].tolist(), distances, top, paths)


def _write_se_files(
    out: Path,
    stats: dict[str, np.ndarray],
    names: list[str],
    layer: str,
    order: np.ndarray,
    distances: list[dict[str, Any]],
    top: list[dict[str, Any]],
    data: str,
    split: str,
) -> dict[str, Path]:
    from sedensenet.reports import plot_se_weights

    means = stats["means"]
    summary = {
        "layer": layer,
        "channels": int(means.shape[1]),
        "classes": names,
        "images_per_class": dict(zip(names, stats["counts"].tolist(), strict=True)),
        "data": data,
        "split": split,
        "class_variance_share": float(stats["eta_squared"].mean()),
        "distances": distances,
        "top_channels": top,
    }
    title = f"SE gates of {layer}: channels sorted by F-ratio (most class-discriminative first)"
    return {
        "csv": atomic_write_text(out / "se_weights.csv", _se_csv(means, names)),
        "png": plot_se_weights(means, names, out / "se_weights.png", order=order.tolist(), title=title),
        "json": atomic_write_json(out / "se_weights.json", summary),
    }


@dataclass
class ExplainRun:
    """What :func:`explain_model` wrote: the Grad-CAM result (when images were given), the SE channel weights (when
    a data folder was given) and the folder they went to."""

    output: Path
    images: ExplainResult | None = None
    se: SEWeightsResult | None = None


def explain_model(
    checkpoint: str | os.PathLike,
    images: list[str | os.PathLike] | tuple[str | os.PathLike, ...] = (),
    *,
    data: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    target: str | None = None,
    method: Literal["gradcam"] = "gradcam",
    split: Literal["auto", "train", "val", "test", "all"] = "all",
    se_layer: str | None = None,
    device: str = "auto",
    tune_malloc: bool = True,
) -> ExplainRun:
    """Grad-CAM heat-maps for images, and the SE channel weights each class receives on a data folder.

    Args:
        checkpoint: checkpoint .safetensors or run folder.
        images: images or folders to explain with Grad-CAM.
        data: labelled folder: mean SE gate per channel for each class (each label, over the images that have it)
            (se_weights.png).
        output: folder for the outputs (default: RUN/explain).
        target: class name (or index) to explain; default: the predicted class. A multi-label model: the label
            whose logit is mapped; default: one map per label decided present (the most probable when none is).
        method: how heat-maps are made.
        split: the split of ``data`` whose images are read.
        se_layer: SE module to read (default: the last one, e.g. features.se_head).
        device: auto, cpu, cuda, cuda:N or mps.
        tune_malloc: tune glibc's allocator for speed (the whole process; ``SEDENSENET_MALLOC=default`` opts out), as
            the ``explain`` command always has.

    Raises:
        ConfigError: neither images nor ``data`` given.
    """
    if not images and not data:
        raise ConfigError("give image files or folders for Grad-CAM, and/or --data DIR for the SE channel weights")
    if tune_malloc:
        from sedensenet.inference import tune_malloc as tune

        logger.debug("%s", tune())
    out = Path(output) if output else resolve_checkpoint(checkpoint).parent.parent / "explain"
    run = ExplainRun(out)
    if images:
        run.images = explain_images(checkpoint, list(images), out, target=target, method=method, device=device)
    if data:
        run.se = se_channel_weights(checkpoint, data, out, split=split, se_layer=se_layer, device=device)
    return run
