"""torchvision's ImageNet DenseNet weights into any preset of the same depth, without unpickling code."""

from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sedensenet.errors import UserError

log = logging.getLogger(__name__)

# torchvision's published files (torchvision.models.DenseNet121_Weights.IMAGENET1K_V1 and friends).
TORCHVISION_URLS = {
    "densenet121": "https://download.pytorch.org/models/densenet121-a639ec97.pth",
    "densenet161": "https://download.pytorch.org/models/densenet161-8d451a50.pth",
    "densenet169": "https://download.pytorch.org/models/densenet169-b2777c0a.pth",
    "densenet201": "https://download.pytorch.org/models/densenet201-c1103571.pth",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Old torchvision checkpoints name dense-layer modules 'norm.1', 'conv.2', ...; today's name them 'norm1'.
_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


class WeightsError(UserError, ValueError):
    """A weights file that cannot be used: unreadable, unsafe, or for another architecture."""


@dataclass
class LoadReport:
    """What :func:`load_state_dict_into` did: keys the file did not provide, keys it had that were unused."""

    new_keys: list[str] = field(default_factory=list)
    unused_keys: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a PyTorch file, refusing anything but tensors.

    PyTorch files are read with ``torch.load(weights_only=True)``: a pickle that would run code is
    rejected before anything runs.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise WeightsError(f"weights file {path} is empty (0 bytes)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"{path} is not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"refused to load {path}: it holds Python objects other than tensors, which could run code "
            f"when unpickled ({str(e).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise WeightsError(f"{path} is not a readable PyTorch weights file (truncated or corrupt?): {e}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return obj


def rename_torchvision_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map old torchvision key names (``norm.1``) to current ones (``norm1``) and drop a ``module.`` prefix."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        m = _OLD_KEY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt an RGB first-convolution kernel to ``in_chans`` channels (as timm does).

    One channel: the RGB kernels summed (a gray image gives the RGB model's response to gray RGB).
    More than three: RGB repeated and rescaled by ``3 / in_chans`` so activations keep their scale.
    """
    out_c, rgb, kh, kw = weight.shape
    if in_chans == rgb:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = -(-in_chans // rgb)
    return weight.repeat(1, repeat, 1, 1)[:, :in_chans] * (rgb / in_chans)


def load_state_dict_into(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "weights") -> LoadReport:
    """Load a torchvision-style DenseNet state dict into ``model``.

    SE keys are new; the classifier is kept only when its shape fits; the first convolution is adapted
    when the channel count differs. Any other missing key or shape disagreement is a WeightsError naming
    the keys, since it means the file is for another architecture.
    """
    state_dict = rename_torchvision_keys(state_dict)
    target = model.state_dict()
    report = LoadReport()
    if not any(k.startswith("features.") for k in state_dict):
        raise WeightsError(f"{source} is not a torchvision DenseNet state dict (no 'features.*' keys)")
    conv0 = state_dict.get("features.conv0.weight")
    if conv0 is not None and conv0.shape[1] != target["features.conv0.weight"].shape[1]:
        state_dict["features.conv0.weight"] = adapt_input_conv(conv0, target["features.conv0.weight"].shape[1])
        report.adapted.append("features.conv0.weight")
    for key in ("classifier.weight", "classifier.bias"):
        if key in state_dict and (key not in target or state_dict[key].shape != target[key].shape):
            del state_dict[key]
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in state_dict.items()
        if k in target and v.shape != target[k].shape
    ]
    if mismatched:
        raise WeightsError(
            f"{source} is for another architecture; {len(mismatched)} shape(s) disagree, e.g. "
            + "; ".join(mismatched[:5])
        )
    report.unused_keys = sorted(k for k in state_dict if k not in target)
    report.new_keys = sorted(k for k in target if k not in state_dict)
    unexpected_new = [k for k in report.new_keys if not _may_be_new(k)]
    if unexpected_new or report.unused_keys:
        raise WeightsError(
            f"{source} does not fit this model: missing {unexpected_new[:5]}"
            f"{' …' if len(unexpected_new) > 5 else ''}, unused {report.unused_keys[:5]}"
            f"{' …' if len(report.unused_keys) > 5 else ''} (is it a DenseNet of another depth?)"
        )
    model.load_state_dict(state_dict, strict=False)
    if report.new_keys:
        log.info("%s: %d new keys initialised fresh (SE/classifier)", source, len(report.new_keys))
    return report


def _may_be_new(key: str) -> bool:
    # Files older than PyTorch 0.4.1 have no BatchNorm num_batches_tracked; it is a counter, not a weight.
    return (
        key.endswith("num_batches_tracked")
        or key.startswith("classifier.")
        or ".se" in key
        or key.startswith("features.se")
    )


def torchvision_weights_path(arch: str) -> Path:
    """Where torch.hub keeps torchvision's file for ``arch`` (``$TORCH_HOME/hub/checkpoints/...``)."""
    url = TORCHVISION_URLS[arch]
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def fetch_torchvision_weights(arch: str) -> Path:
    """Return torchvision's ImageNet file for ``arch`` from torch.hub's cache, downloading it if needed."""
    if arch not in TORCHVISION_URLS:
        raise WeightsError(f"torchvision publishes no ImageNet weights for {arch}; have: {sorted(TORCHVISION_URLS)}")
    path = torchvision_weights_path(arch)
    if path.is_file():
        return path
    url = TORCHVISION_URLS[arch]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except Exception as e:  # noqa: BLE001 - any network failure gets the same advice
        raise WeightsError(
            f"could not download torchvision's {arch} weights ({e.__class__.__name__}: {e}). Offline? Fetch\n"
            f"  {url}\non a connected machine and put it at\n  {path}\n"
            f"or pass the file directly: pretrained='/path/to/{os.path.basename(url)}'"
        ) from None
    return path


def load_pretrained(model: nn.Module, pretrained: bool | str | os.PathLike, arch: str | None) -> LoadReport:
    """Load ImageNet weights into ``model``: ``True`` uses torch.hub's cache (``arch`` names the file), a path
    loads that file."""
    if pretrained is True:
        if arch is None:
            raise WeightsError("this preset has no torchvision ImageNet weights; pass a weights file instead")
        path = fetch_torchvision_weights(arch)
    else:
        path = Path(pretrained)
    report = load_state_dict_into(model, read_state_dict(path), source=str(path))
    log.info("loaded ImageNet weights from %s (%d new keys)", path, len(report.new_keys))
    return report
