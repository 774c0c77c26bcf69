"""The tutorial's Keras SE-DenseNet weights into a sedensenet checkpoint, read with h5py (no TensorFlow).

Files people who followed the tutorial have, all read here:

- tf.keras 2.x ``model.save('m.h5')`` (weights under ``model_weights/<layer name>/``, optimizer state beside
  them) and ``model.save_weights('w.h5')`` (the same layer groups at the top level). Layers are found by the
  names the tutorial gives them (``conv1/conv``, ``conv2_block1_0_bn``, ..., ``bn``, ``fc1000``).
- Keras 3 ``model.save_weights('m.weights.h5')`` and ``.keras`` archives (a zip holding ``model.weights.h5``)
  from tf.keras 2.x or Keras 3. These key variables by layer TYPE and creation order (``layers/conv2d_5/vars/0``),
  so the n-th ``Conv2D`` / ``BatchNormalization`` is matched to the n-th one the tutorial's code creates.

The SE layer (a subclassed ``Model`` that creates its two ``Dense`` layers in ``build``) has an automatic name
(``squeeze_excitation_layer``, ``_1``, ... by how many were built in the session), so it is found by what it
holds: two dense kernels and their biases.

Layout changes: Keras is NHWC. Conv kernels ``(kh, kw, in, out)`` become ``(out, in, kh, kw)``; Dense kernels
``(in, out)`` become ``(out, in)`` (``(out, in, 1, 1)`` for the SE's 1x1 convolutions); BatchNorm
gamma/beta/moving mean/moving variance become weight/bias/running_mean/running_var with Keras' epsilon.
Keras' ``ZeroPadding2D(3)`` + valid 7x7/2 convolution is our padding-3 convolution, ``ZeroPadding2D(1)`` +
``MaxPooling2D(3, 2)`` our ``MaxPool2d(3, 2, padding=1)`` (Keras pads with zeros, torch with -inf, but the
input is post-ReLU >= 0, so the maxima are the same).

The tutorial feeds raw 0..255 pixels (``image_dataset_from_directory``, no rescaling), so a converted
checkpoint carries ``mean=(0, 0, 0)`` and ``std=(1/255,) * 3``: our ``(x / 255 - mean) / std`` gives the
network the same 0..255 values Keras saw.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sedensenet.checkpoint import CheckpointMeta, save_checkpoint
from sedensenet.config import DEFAULT_MODEL
from sedensenet.errors import MissingDependencyError, UserError
from sedensenet.models.densenet import DenseNet
from sedensenet.models.registry import get_preset, model_config

log = logging.getLogger(__name__)

KERAS_MEAN = [0.0, 0.0, 0.0]
KERAS_STD = [1 / 255, 1 / 255, 1 / 255]
"""The converted checkpoint's preprocessing: ``(x / 255 - 0) / (1 / 255)`` is the raw 0..255 pixel Keras saw."""

_MAX_LISTED = 12  # names shown per category in an error message


class KerasConvertError(UserError, ValueError):
    """A Keras file that cannot be converted; the message names the file, the layers and the shapes involved."""


@dataclass
class KerasLayer:
    """One Keras layer with weights, as stored in the file."""

    key: str
    """Where it is: the layer name (files keyed by name) or the ``layers/<type>_<n>`` path (keyed by order)."""
    kind: str
    """``conv``, ``bn``, ``dense``, ``se`` (two dense layers inside one layer) or ``unknown``."""
    arrays: list[np.ndarray]
    """Its variables in Keras' order and layout (kernel[, bias]; gamma, beta, moving mean, moving variance)."""
    name: str | None = None
    """The layer name the file records, when it does."""


@dataclass
class KerasFile:
    """Every weighted layer of a Keras file, and what the file says about itself."""

    path: Path
    format: str
    """``tf.keras 2 full model (.h5)``, ``tf.keras 2 weights (.h5)``, ``Keras 3 weights (.weights.h5)``, or
    ``.keras archive (Keras <version>)``."""
    by_name: bool
    """True: layers are matched by name; False: by type and creation order."""
    layers: list[KerasLayer]
    absent: list[str] = field(default_factory=list)
    """Layers the file lists (``layer_names``) whose group is not there."""
    config: dict[str, Any] | None = None
    """The model's JSON config, when the file carries one (full-model .h5, .keras)."""
    keras_version: str | None = None
    container: str = "layers"
    """Files keyed by order: the group holding the model's layers."""


@dataclass(frozen=True)
class Slot:
    """One weighted layer of the tutorial's model: its Keras name, kind and our state-dict prefix."""

    name: str
    kind: str
    prefix: str


# --------------------------------------------------------------------------------------------------- reading


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise MissingDependencyError(
            "reading Keras files needs h5py: pip install h5py (or pip install 'sedensenet[keras]')"
        ) from None
    return h5py


def read_keras_file(path: str | os.PathLike) -> KerasFile:
    """Read every weighted layer of a Keras ``.h5`` / ``.weights.h5`` / ``.keras`` file, detecting its format."""
    path = Path(path)
    if path.is_dir():
        raise KerasConvertError(
            f"{path} is a directory (a TensorFlow SavedModel?); give the file from model.save_weights('w.h5'), "
            "model.save('m.h5'), model.save_weights('m.weights.h5') or model.save('m.keras')"
        )
    if not path.is_file():
        raise KerasConvertError(f"Keras file not found: {path}")
    h5py = _h5py()
    if zipfile.is_zipfile(path):
        return _read_archive(path, h5py)
    if not h5py.is_hdf5(str(path)):
        raise KerasConvertError(
            f"{path} is neither an HDF5 file nor a .keras archive (zip); give the file written by "
            "model.save('m.h5'), model.save_weights('w.h5'), model.save_weights('m.weights.h5') "
            "or model.save('m.keras')"
        )
    try:
        with h5py.File(path, "r") as f:
            return _read_h5(f, path)
    except OSError as e:
        raise KerasConvertError(f"{path} is not a readable HDF5 file (truncated or corrupt?): {e}") from None


def _read_archive(path: Path, h5py: Any) -> KerasFile:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if "model.weights.h5" not in names:
                raise KerasConvertError(
                    f"{path} is a zip but not a .keras archive: no model.weights.h5 in {names[:10]}"
                )
            weights = z.read("model.weights.h5")
            config = json.loads(z.read("config.json")) if "config.json" in names else None
            meta = json.loads(z.read("metadata.json")) if "metadata.json" in names else {}
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError) as e:
        raise KerasConvertError(f"{path}: unreadable .keras archive ({e})") from None
    try:
        with h5py.File(io.BytesIO(weights), "r") as f:
            kf = _read_h5(f, path)
    except OSError as e:
        raise KerasConvertError(f"{path}: its model.weights.h5 is not readable HDF5 ({e})") from None
    kf.keras_version = meta.get("keras_version")
    kf.format = f".keras archive (Keras {kf.keras_version or 'version unknown'})"
    kf.config = config
    return kf


def _read_h5(f: Any, path: Path) -> KerasFile:
    version = _text(f.attrs.get("keras_version"))
    if "model_weights" in f and "layer_names" in f["model_weights"].attrs:
        layers, absent = _read_named_layers(f["model_weights"])
        config = _json_attr(f.attrs.get("model_config"))
        return KerasFile(path, "tf.keras 2 full model (.h5)", True, layers, absent, config, version)
    if "layer_names" in f.attrs:
        layers, absent = _read_named_layers(f)
        return KerasFile(path, "tf.keras 2 weights (.h5)", True, layers, absent, None, version)
    for container in _CONTAINERS:
        if container in f and hasattr(f[container], "keys"):
            layers = _read_ordered_layers(f[container], container)
            return KerasFile(path, "Keras 3 weights (.weights.h5)", False, layers, container=container)
    raise KerasConvertError(
        f"{path} is HDF5 but not a Keras model or weights file: no 'layer_names' (tf.keras 2) and no 'layers' "
        f"group (Keras 3); its top level holds {sorted(f.keys())[:10]}"
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _json_attr(value: Any) -> dict[str, Any] | None:
    text = _text(value)
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


_BN_ORDER = ("gamma", "beta", "moving_mean", "moving_variance")
# Where Keras 3 (and tf.keras >= 2.14 ``.keras``) keep a functional model's layers; tf.keras 2.13 used the second.
_CONTAINERS = ("layers", "_layer_checkpoint_dependencies")


def _read_named_layers(group: Any) -> tuple[list[KerasLayer], list[str]]:
    """tf.keras 2 layout: ``layer_names`` on the group, ``weight_names`` on each layer's group."""
    layers, absent = [], []
    for name in (_text(n) for n in group.attrs["layer_names"]):
        if name not in group:
            absent.append(name)
            continue
        g = group[name]
        weight_names = [_text(w) for w in g.attrs.get("weight_names", [])]
        missing = [w for w in weight_names if w not in g]
        if missing:
            absent.extend(f"{name}: {w}" for w in missing)
            continue
        if not weight_names:
            continue
        short = [re.sub(r":\d+$", "", w).rsplit("/", 1)[-1] for w in weight_names]
        arrays = [np.asarray(g[w]) for w in weight_names]
        if sorted(short) == sorted(_BN_ORDER):  # put BN variables in a known order whatever the file's order
            arrays = [arrays[short.index(v)] for v in _BN_ORDER]
        layers.append(KerasLayer(name, _classify(arrays), arrays, name))
    return layers, absent


def _read_ordered_layers(group: Any, container: str) -> list[KerasLayer]:
    """Keras 3 layout: ``layers/<type>[_<n>]/vars/<i>``, nested layers below their parent's group."""
    layers = []
    for key in group:
        var_groups = list(_var_groups(group[key]))
        arrays = [a for _, arrays in var_groups for a in arrays]
        if not arrays:
            continue
        own = group[key].get("vars")
        name = _text(own.attrs.get("name")) if own is not None else None
        kind = _classify(arrays) if len(var_groups) == 1 or _classify(arrays) == "se" else "unknown"
        layers.append(KerasLayer(f"{container}/{key}", kind, arrays, name))
    return layers


def _var_groups(group: Any) -> Iterator[tuple[str, list[np.ndarray]]]:
    """Every ``vars`` group with variables at or below ``group``, in natural name order (``dense`` < ``dense_1``)."""
    if "vars" in group and len(group["vars"]):
        v = group["vars"]
        yield group.name, [np.asarray(v[k]) for k in sorted(v, key=int)]
    for key in sorted((k for k in group if k != "vars" and hasattr(group[k], "keys")), key=_natural):
        yield from _var_groups(group[key])


def _natural(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _classify(arrays: list[np.ndarray]) -> str:
    dims = [a.ndim for a in arrays]
    return {(4,): "conv", (1, 1, 1, 1): "bn", (2, 1): "dense", (2, 1, 2, 1): "se"}.get(tuple(dims), "unknown")


# --------------------------------------------------------------------------------------------- the tutorial


def tutorial_layout(blocks: Sequence[int], se: bool = True) -> list[Slot]:
    """The tutorial's weighted layers in the order its code creates them, with our state-dict prefixes."""
    slots = [Slot("conv1/conv", "conv", "features.conv0"), Slot("conv1/bn", "bn", "features.norm0")]
    for b, num_layers in enumerate(blocks, start=1):
        for i in range(1, num_layers + 1):
            k, t = f"conv{b + 1}_block{i}", f"features.denseblock{b}.denselayer{i}"
            slots += [
                Slot(f"{k}_0_bn", "bn", f"{t}.norm1"),
                Slot(f"{k}_1_conv", "conv", f"{t}.conv1"),
                Slot(f"{k}_1_bn", "bn", f"{t}.norm2"),
                Slot(f"{k}_2_conv", "conv", f"{t}.conv2"),
            ]
        if b < len(blocks):
            slots += [
                Slot(f"pool{b + 1}_bn", "bn", f"features.transition{b}.norm"),
                Slot(f"pool{b + 1}_conv", "conv", f"features.transition{b}.conv"),
            ]
    if se:
        slots.append(Slot("squeeze_excitation_layer", "se", "features.se_head"))
    return slots + [Slot("bn", "bn", "features.norm5"), Slot("fc1000", "dense", "classifier")]


def _ordered_key(kind: str, index: int, container: str = "layers") -> str:
    """Keras 3's key for the ``index``-th layer of a kind: ``layers/conv2d``, ``layers/conv2d_1``, ..."""
    base = {"conv": "conv2d", "bn": "batch_normalization", "dense": "dense"}[kind]
    return f"{container}/{base}" if index == 0 else f"{container}/{base}_{index}"


def _same_name(a: str, b: str) -> bool:
    return a.replace("/", "_") == b.replace("/", "_")  # Keras 3 forbids '/', so its users write conv1_conv


def _find(kf: KerasFile, slot: Slot, slots: Sequence[Slot] | None = None) -> KerasLayer | None:
    """The file's layer for ``slot``: by name, or by kind and creation order (``slots`` gives the order)."""
    if slot.kind == "se":
        found = [layer for layer in kf.layers if layer.kind == "se"]
        return found[0] if len(found) == 1 else None
    if kf.by_name:
        return next((layer for layer in kf.layers if _same_name(layer.key, slot.name)), None)
    order = [s for s in (slots or []) if s.kind == slot.kind]
    key = _ordered_key(slot.kind, order.index(slot), kf.container)
    return next((layer for layer in kf.layers if layer.key == key), None)


# -------------------------------------------------------------------------------------------- inference


def infer_architecture(kf: KerasFile) -> dict[str, Any]:
    """What the file says about the network: blocks, growth rate, stem width, classes, SE width, BN epsilon.

    Each value is left out when the file does not show it (a layer missing); the model preset fills the gap
    and the layer-by-layer match then reports what is missing.
    """
    blocks = _infer_blocks(kf)
    out: dict[str, Any] = {"block_config": blocks} if blocks else {}
    by_slot = {s.name: _find(kf, s, tutorial_layout(blocks or [1])) for s in tutorial_layout(blocks or [1])}
    stem, bottleneck, conv3 = by_slot["conv1/conv"], by_slot["conv2_block1_1_conv"], by_slot["conv2_block1_2_conv"]
    if stem is not None and stem.kind == "conv":
        out["in_chans"], out["num_init_features"] = stem.arrays[0].shape[2:]
    if conv3 is not None and conv3.kind == "conv":
        out["growth_rate"] = conv3.arrays[0].shape[3]
        width = bottleneck.arrays[0].shape[3] if bottleneck is not None and bottleneck.kind == "conv" else 0
        if width and width % out["growth_rate"] == 0:
            out["bn_size"] = width // out["growth_rate"]
    head = by_slot["fc1000"]
    if head is not None and head.kind == "dense":
        out["num_classes"] = head.arrays[0].shape[1]
    se = by_slot["squeeze_excitation_layer"]
    if se is not None:
        out["se_rd_channels"] = se.arrays[0].shape[1]
    out.update(_config_hints(kf))
    return {k: int(v) if isinstance(v, (np.integer, int)) else v for k, v in out.items()}


def _infer_blocks(kf: KerasFile) -> list[int] | None:
    """Dense layers per block: from the names ``conv<b>_block<i>_*``, or from the run of conv kernel sizes."""
    if kf.by_name:
        counts: dict[int, int] = {}
        for layer in kf.layers:
            m = re.match(r"conv(\d+)_block(\d+)_", layer.key)
            if m:
                counts[int(m[1])] = max(counts.get(int(m[1]), 0), int(m[2]))
        ok = counts and sorted(counts) == list(range(2, 2 + len(counts)))
        return [counts[b] for b in sorted(counts)] if ok else None
    sizes: dict[int, int] = {}  # position in creation order -> kernel size; a deleted layer leaves a gap
    for layer in kf.layers:
        m = re.fullmatch(rf"{kf.container}/conv2d(?:_(\d+))?", layer.key)
        if m and layer.kind == "conv":
            sizes[int(m[1] or 0)] = layer.arrays[0].shape[0]
    return _blocks_from_kernel_sizes([sizes.get(i) for i in range(1, max(sizes, default=0) + 1)])


def _blocks_from_kernel_sizes(sizes: list[int | None]) -> list[int] | None:
    """Parse the convolutions after the stem: (1x1, 3x3) per dense layer, one 1x1 per transition.

    ``None`` (a gap in the file's numbering, or the end of the list) matches either size, so one missing
    layer still gives the block list and the error can name that layer.
    """
    blocks, i = [0], 0
    while i < len(sizes):
        after = sizes[i + 1] if i + 1 < len(sizes) else None
        if sizes[i] in (1, None) and after in (3, None):
            blocks[-1], i = blocks[-1] + 1, i + 2
        elif sizes[i] in (1, None) and blocks[-1]:
            blocks, i = blocks + [0], i + 1
        else:
            return None
    return blocks if all(blocks) else None


def _config_hints(kf: KerasFile) -> dict[str, Any]:
    """BN epsilon and a square input size from the model config a full-model file carries."""
    if kf.config is None:
        return {}
    eps, sizes = set(), set()
    for d in _walk_dicts(kf.config):
        cfg = d.get("config") if isinstance(d.get("config"), dict) else {}
        if d.get("class_name") == "BatchNormalization" and "epsilon" in cfg:
            eps.add(float(cfg["epsilon"]))
        if d.get("class_name") == "InputLayer":
            shape = cfg.get("batch_input_shape") or cfg.get("batch_shape") or []
            if len(shape) == 4 and shape[1] and shape[1] == shape[2]:
                sizes.add(int(shape[1]))
    if len(eps) > 1:
        raise KerasConvertError(f"{kf.path}: its BatchNormalization layers use different epsilons {sorted(eps)}")
    hints: dict[str, Any] = {"norm_eps": eps.pop()} if eps else {}
    if len(sizes) == 1:
        hints["image_size"] = sizes.pop()
    return hints


def _walk_dicts(obj: Any) -> Iterator[dict[str, Any]]:
    if isinstance(obj, dict):
        yield obj
        obj = list(obj.values())
    if isinstance(obj, list):
        for item in obj:
            yield from _walk_dicts(item)


# ---------------------------------------------------------------------------------------------- matching


def _conv(a: np.ndarray) -> np.ndarray:
    return a.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)


def _dense(a: np.ndarray) -> np.ndarray:
    return a.T  # (in, out) -> (out, in)


def _dense_as_conv(a: np.ndarray) -> np.ndarray:
    return a.T[:, :, None, None]  # (in, out) -> (out, in, 1, 1): the SE's Dense layers are our 1x1 convolutions


def _same(a: np.ndarray) -> np.ndarray:
    return a


# Per kind: (Keras variable, our parameter, Keras layout -> ours, our shape -> Keras shape) in the file's order.
_Spec = tuple[str, str, Callable[[np.ndarray], np.ndarray], Callable[[tuple[int, ...]], tuple[int, ...]]]
_SPECS: dict[str, list[_Spec]] = {
    "conv": [("kernel", "weight", _conv, lambda s: (s[2], s[3], s[1], s[0]))],
    "bn": [
        ("gamma", "weight", _same, tuple),
        ("beta", "bias", _same, tuple),
        ("moving_mean", "running_mean", _same, tuple),
        ("moving_variance", "running_var", _same, tuple),
    ],
    "dense": [("kernel", "weight", _dense, lambda s: (s[1], s[0])), ("bias", "bias", _same, tuple)],
    "se": [
        ("dense1 kernel", "fc1.weight", _dense_as_conv, lambda s: (s[1], s[0])),
        ("dense1 bias", "fc1.bias", _same, tuple),
        ("dense2 kernel", "fc2.weight", _dense_as_conv, lambda s: (s[1], s[0])),
        ("dense2 bias", "fc2.bias", _same, tuple),
    ],
}
_KIND_WORDS = {
    "conv": "a Conv2D kernel (no bias)",
    "bn": "BatchNormalization gamma/beta/mean/variance",
    "dense": "a Dense kernel and bias",
    "se": "two Dense layers (the SE layer)",
    "unknown": "variables of another kind",
}


@dataclass
class LayerMatch:
    """The outcome of matching the tutorial's layers against a file's."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    """Our state-dict entries converted from the file (every one whose shape fits)."""
    missing: list[str] = field(default_factory=list)
    """Tutorial layers the file lacks."""
    unused: list[str] = field(default_factory=list)
    """File layers with weights that no tutorial layer took."""
    disagree: list[str] = field(default_factory=list)
    """Variables whose shape (or layer kind) differs from the model's, in Keras' layout."""
    renamed: list[str] = field(default_factory=list)
    """Keras 3 files that record names: layers whose name is not the tutorial's at that position."""


def _label(slot: Slot, layer: KerasLayer, kf: KerasFile) -> str:
    if kf.by_name and slot.kind != "se":
        return layer.key
    if slot.kind != "se" and layer.name and not _same_name(layer.name, slot.name):
        return f"{slot.name} ({layer.key}, named {layer.name!r} in the file)"
    return f"{slot.name} ({layer.key})"


def match_layers(kf: KerasFile, slots: Sequence[Slot], expected: dict[str, torch.Tensor]) -> LayerMatch:
    """Pair each tutorial layer with the file's, convert its variables and check them against ``expected``."""
    result, used = LayerMatch(), set()
    for slot in slots:
        layer = _find(kf, slot, slots)
        if layer is None:
            result.missing.append(_missing_label(slot, slots, kf))
            continue
        used.add(id(layer))
        label = _label(slot, layer, kf)
        if layer.kind != slot.kind:
            shapes = ", ".join(str(a.shape) for a in layer.arrays)
            result.disagree.append(f"{label}: expected {_KIND_WORDS[slot.kind]}, the file has arrays {shapes}")
            continue
        if not kf.by_name and slot.kind != "se" and layer.name and not _same_name(layer.name, slot.name):
            result.renamed.append(f"{layer.key} is named {layer.name!r}, the tutorial's layer there is {slot.name!r}")
        for (var, ours, to_torch, to_keras), array in zip(_SPECS[slot.kind], layer.arrays, strict=True):
            key, value = f"{slot.prefix}.{ours}", to_torch(array)
            want = tuple(expected[key].shape)
            if tuple(value.shape) != want:
                result.disagree.append(f"{label} {var}: file {array.shape}, model expects {to_keras(want)}")
            else:
                result.tensors[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    result.unused = [layer.key for layer in kf.layers if id(layer) not in used]
    return result


def _missing_label(slot: Slot, slots: Sequence[Slot], kf: KerasFile) -> str:
    if slot.kind == "se":
        found = [layer.key for layer in kf.layers if layer.kind == "se"]
        what = f"{len(found)} candidates: {found}" if found else "no layer holding two Dense layers"
        return f"{slot.name} (the SE layer after the last dense block; {what})"
    if kf.by_name:
        return slot.name
    order = [s for s in slots if s.kind == slot.kind]
    return f"{slot.name} ({_ordered_key(slot.kind, order.index(slot), kf.container)})"


# -------------------------------------------------------------------------------------------- conversion


def convert_keras(
    path: str | os.PathLike,
    model: str = DEFAULT_MODEL,
    num_classes: int | None = None,
    blocks: Sequence[int] | None = None,
    classes: Sequence[str] | None = None,
    image_size: int | None = None,
) -> tuple[DenseNet, CheckpointMeta]:
    """Build our model from a Keras file of the tutorial's SE-DenseNet.

    Args:
        path: ``.h5`` (tf.keras 2 ``model.save`` or ``save_weights``), ``.weights.h5`` (Keras 3) or ``.keras``.
        model: the preset to start from (``keras_se_densenet121/169/201``); the file's growth rate, stem width,
            bottleneck width and SE width replace the preset's.
        num_classes: classifier outputs; taken from the file when not given, checked against it when given.
        blocks: dense layers per block (``[6, 12, 48, 32]``); from the file when not given, checked when given.
        classes: class names in Keras' label order (its sorted folder names); ``"0"``, ``"1"``, ... when not given.
        image_size: the size images are resized to; from the file's model config when it has one, else 224.

    Returns:
        The model (eval mode) and the checkpoint metadata, with ``mean=(0, 0, 0)``, ``std=(1/255,) * 3`` so our
        preprocessing feeds it the raw 0..255 pixels the tutorial's Keras model was trained on.

    Raises:
        KerasConvertError: the file is unreadable, or its layers do not fit; the message lists the missing and
            unused layers (by name or by ``layers/<type>_<n>`` path) and the shapes that disagree.
        ImportError: h5py is not installed.
    """
    kf = read_keras_file(path)
    found = infer_architecture(kf)
    config = model_config(model, **_settings(model, found, num_classes, blocks, classes))
    net = DenseNet(config)
    expected = net.state_dict()
    match = match_layers(kf, tutorial_layout(config.block_config), expected)
    _raise_on_problems(kf, match, model, config.to_dict(), found)
    left = sorted(k for k in set(expected) - set(match.tensors) if not k.endswith("num_batches_tracked"))
    if left:  # every parameter comes from the file: a gap here is a bug in the layout table
        raise KerasConvertError(f"{kf.path}: no Keras weights for {left[:_MAX_LISTED]}")
    net.load_state_dict(match.tensors, strict=False)
    names = list(classes) if classes else [str(i) for i in range(config.num_classes)]
    if not classes:
        log.warning("Keras files do not store class names; using %s (pass classes in label order)", names)
    meta = CheckpointMeta(
        model=config.to_dict(),
        classes=names,
        image_size=int(image_size or found.get("image_size") or get_preset(model).default_image_size),
        mean=list(KERAS_MEAN),
        std=list(KERAS_STD),
        resize="squash",
        extra={"converted_from": kf.path.name, "keras_format": kf.format, "keras_version": kf.keras_version},
    )
    log.info("converted %s (%s): blocks %s, %d classes", kf.path, kf.format, list(config.block_config), len(names))
    return net.eval(), meta


def _settings(
    model: str,
    found: dict[str, Any],
    num_classes: int | None,
    blocks: Sequence[int] | None,
    classes: Sequence[str] | None,
) -> dict[str, Any]:
    """The ``model_config`` arguments: the caller's choices, else the file's, else the preset's."""
    preset = get_preset(model).settings  # ValueError naming the valid presets
    if tuple(preset.get("se_placement", ())) != ("head",) or preset.get("stem", "imagenet") != "imagenet":
        raise KerasConvertError(
            f"{model} is not the tutorial's architecture (ImageNet stem, one SE after the last dense block); "
            "use keras_se_densenet121, keras_se_densenet169 or keras_se_densenet201"
        )
    if classes is not None and num_classes is not None and len(classes) != num_classes:
        raise KerasConvertError(f"{len(classes)} class names given for num_classes={num_classes}")
    if classes is not None:
        num_classes = len(classes)
    if blocks is not None:
        blocks = [int(b) for b in blocks]
        if not blocks or min(blocks) < 1:
            raise KerasConvertError(f"blocks needs one or more positive layer counts, got {blocks}")
    taken = ("growth_rate", "num_init_features", "bn_size", "se_rd_channels", "norm_eps")
    out = {k: found[k] for k in taken if k in found}
    out["block_config"] = tuple(blocks or found.get("block_config") or preset["block_config"])
    out["num_classes"] = int(num_classes if num_classes is not None else found.get("num_classes", 1000))
    out["in_chans"] = found.get("in_chans", 3)
    return out


def _raise_on_problems(
    kf: KerasFile, match: LayerMatch, model: str, config: dict[str, Any], found: dict[str, Any]
) -> None:
    """Raise KerasConvertError listing what did not match; warn about Keras 3 names out of the tutorial's order."""
    if not (match.missing or match.unused or match.disagree):
        if match.renamed:  # converted by position, as Keras itself loads: say so, since the names suggest otherwise
            log.warning("%s: layer names differ from the tutorial's build order: %s", kf.path, _listing(match.renamed))
        return
    how = "name" if kf.by_name else "type and creation order"
    lines = [
        f"{kf.path} ({kf.format}; layers matched by {how}) does not fit {model} with blocks "
        f"{config['block_config']}, growth rate {config['growth_rate']}, {config['num_classes']} classes:"
    ]
    if match.missing:
        lines.append(f"  missing from the file ({len(match.missing)}): {_listing(match.missing)}")
    if kf.absent:
        lines.append(f"  listed in the file's layer_names but absent ({len(kf.absent)}): {_listing(kf.absent)}")
    if match.unused:
        lines.append(f"  in the file but not used ({len(match.unused)}): {_listing(match.unused)}")
    if match.disagree:
        lines.append(f"  shapes disagree ({len(match.disagree)}):")
        lines += [f"    {d}" for d in match.disagree[:_MAX_LISTED]]
        lines += [f"    ... and {len(match.disagree) - _MAX_LISTED} more"] if len(match.disagree) > _MAX_LISTED else []
    if "block_config" not in found:
        lines.append("  the file's layers do not show its block list: give blocks (e.g. 6,12,48,32)")
    own = {k: found[k] for k in ("block_config", "num_classes") if k in found and found[k] != config[k]}
    if own:
        said = ", ".join(f"{k} {v}" for k, v in own.items())
        lines.append(
            f"  the file itself looks like {said}: leave blocks / num_classes (--blocks / --num-classes) out "
            "to take them from the file"
        )
    raise KerasConvertError("\n".join(lines))


def _listing(items: Sequence[str]) -> str:
    more = f", ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def convert_keras_file(
    path: str | os.PathLike,
    output: str | os.PathLike,
    model: str = DEFAULT_MODEL,
    num_classes: int | None = None,
    blocks: Sequence[int] | None = None,
    classes: Sequence[str] | None = None,
    image_size: int | None = None,
) -> Path:
    """Convert the tutorial's Keras model (.h5, .weights.h5 or .keras) into a sedensenet checkpoint.

    See :func:`convert_keras`; the arguments are ``sedensenet convert-keras``'s. Returns the path written.

    Args:
        path: Keras file: tf.keras 2 .h5 (model or weights), Keras 3 .weights.h5, or .keras.
        output: checkpoint to write (.safetensors).
        model: preset the Keras model corresponds to.
        num_classes: classes of the Keras model (read from the file by default).
        blocks: the tutorial's block list, e.g. 6,12,48,32 (read from the file by default).
        classes: class names in index order (Keras files do not store them).
        image_size: input size (read from the file when it has a model config).
    """
    net, meta = convert_keras(
        path, model=model, num_classes=num_classes, blocks=blocks, classes=classes, image_size=image_size
    )
    return save_checkpoint(output, net, meta)
