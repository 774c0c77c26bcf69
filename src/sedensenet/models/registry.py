"""Named presets: a plain table from name to architecture settings, and the builders that use it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sedensenet.models.densenet import DenseNet, DenseNetConfig, ModelConfigError

_IMAGENET = {"growth_rate": 32, "num_init_features": 64}
_DEPTHS = {
    "121": {**_IMAGENET, "block_config": (6, 12, 24, 16)},
    "161": {"growth_rate": 48, "num_init_features": 96, "block_config": (6, 12, 36, 24)},
    "169": {**_IMAGENET, "block_config": (6, 12, 32, 32)},
    "201": {**_IMAGENET, "block_config": (6, 12, 48, 32)},
    "264": {**_IMAGENET, "block_config": (6, 12, 64, 48)},
}
_SE_PAPER = {"se_placement": ("block",), "se_rd_ratio": 1 / 16}
# The tutorial's Keras model: one SE of 16 units after the last dense block, Keras' BN epsilon.
_KERAS = {"se_placement": ("head",), "se_rd_channels": 16, "norm_eps": 1.001e-5}
_BC100 = {"growth_rate": 12, "num_init_features": 24, "block_config": (16, 16, 16), "stem": "cifar"}


@dataclass(frozen=True)
class Preset:
    """A named architecture: its settings, a one-line description and the torchvision weights it can take."""

    settings: dict[str, Any]
    description: str
    torchvision_weights: str | None = None
    default_image_size: int = 224
    tags: tuple[str, ...] = field(default=())


PRESETS: dict[str, Preset] = {}
for _depth, _arch in _DEPTHS.items():
    _tv = f"densenet{_depth}" if _depth != "264" else None
    PRESETS[f"densenet{_depth}"] = Preset(dict(_arch), f"DenseNet-{_depth} (torchvision layout, no SE)", _tv)
    PRESETS[f"se_densenet{_depth}"] = Preset(
        {**_arch, **_SE_PAPER}, f"SE-DenseNet-{_depth}: SE (r=16) after every dense block", _tv
    )
    if _depth in ("121", "169", "201"):
        PRESETS[f"keras_se_densenet{_depth}"] = Preset(
            {**_arch, **_KERAS}, f"the tutorial's Keras DenseNet{_depth} + SE(16) after the last block", _tv
        )
PRESETS["densenet_bc_100"] = Preset(dict(_BC100), "DenseNet-BC (L=100, k=12) for small images, CIFAR stem", None, 32)
PRESETS["se_densenet_bc_100"] = Preset(
    {**_BC100, **_SE_PAPER}, "DenseNet-BC (L=100, k=12) + SE (r=16) after every dense block", None, 32
)
PRESETS["se_densenet_tiny"] = Preset(
    {
        "growth_rate": 4,
        "num_init_features": 8,
        "block_config": (2, 2),
        "bn_size": 2,
        "stem": "cifar",
        "se_placement": ("head", "block", "transition", "layer"),
        "se_rd_channels": 2,
    },
    "tiny SE-DenseNet with SE in every placement, for tests and smoke runs",
    None,
    16,
)


def list_models(filter: str = "") -> list[str]:
    """Names of every preset (containing ``filter`` when given), sorted."""
    return sorted(name for name in PRESETS if filter in name)


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name raises :class:`ModelConfigError` (a ValueError) listing the
    valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ModelConfigError(f"unknown model {name!r}; available models: {', '.join(list_models())}") from None


def model_config(name: str, num_classes: int = 1000, in_chans: int = 3, **overrides: Any) -> DenseNetConfig:
    """The :class:`DenseNetConfig` of preset ``name`` with the given changes applied."""
    settings = {**get_preset(name).settings, "num_classes": num_classes, "in_chans": in_chans, **overrides}
    settings["extra"] = {**settings.get("extra", {}), "preset": name}
    return DenseNetConfig(**settings)


def create_model(
    name: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    pretrained: bool | str = False,
    **overrides: Any,
) -> DenseNet:
    """Build preset ``name``.

    Args:
        name: a preset from :func:`list_models`, e.g. ``"keras_se_densenet201"``.
        num_classes: classifier outputs (0 for a feature extractor).
        in_chans: input channels; with pretrained weights the first convolution is adapted.
        pretrained: ``True`` loads torchvision's ImageNet weights through torch.hub's cache,
            a path loads them from that file (``.pth`` or ``.safetensors``).
        **overrides: any :class:`DenseNetConfig` field, e.g. ``memory_efficient=True``, ``drop_rate=0.2``.
    """
    model = DenseNet(model_config(name, num_classes=num_classes, in_chans=in_chans, **overrides))
    if pretrained:
        from sedensenet.models.weights import load_pretrained

        load_pretrained(model, pretrained, arch=get_preset(name).torchvision_weights)
    return model
