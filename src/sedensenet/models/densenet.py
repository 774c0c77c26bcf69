"""DenseNet (Huang et al., 2017) with optional Squeeze-and-Excitation, torchvision-compatible.

Module and state-dict names follow torchvision's ``densenet121/161/169/201`` exactly
(``features.conv0``, ``features.denseblock1.denselayer1.norm1``, ``features.transition1.conv``,
``features.norm5``, ``classifier``), so its ImageNet checkpoints load with only the SE and
classifier keys new. SE modules get names of their own:

- ``"head"``:       ``features.se_head``, once after the last dense block (the tutorial's model);
- ``"block"``:      ``features.se{i}``, after dense block ``i``;
- ``"transition"``: ``features.transition{i}.se``, after each transition's 1x1 convolution;
- ``"layer"``:      ``features.denseblock{b}.denselayer{l}.se``, on each dense layer's new features.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from sedensenet.errors import UserError
from sedensenet.models import fast
from sedensenet.models.se import SqueezeExcite

SE_PLACEMENTS = ("head", "block", "transition", "layer")
STEMS = ("imagenet", "cifar")


class ModelConfigError(UserError, ValueError):
    """Model settings (a preset name, a DenseNet setting) that do not describe a network; the message says why."""


@dataclass
class DenseNetConfig:
    """Every architectural setting of a DenseNet; stored in each checkpoint so a model can be rebuilt."""

    growth_rate: int = 32
    """Channels each dense layer adds (k)."""
    block_config: tuple[int, ...] = (6, 12, 24, 16)
    """Dense layers in each dense block."""
    num_init_features: int = 64
    """Channels out of the stem."""
    bn_size: int = 4
    """Bottleneck width factor: the 1x1 convolution has ``bn_size * growth_rate`` channels."""
    compression: float = 0.5
    """Fraction of channels a transition keeps (theta in the DenseNet-BC paper)."""
    drop_rate: float = 0.0
    """Dropout after each dense layer (torchvision's ``drop_rate``)."""
    head_drop_rate: float = 0.0
    """Dropout before the classifier."""
    num_classes: int = 1000
    """Classifier outputs; 0 removes the classifier (features only)."""
    in_chans: int = 3
    """Input image channels: 1 for grayscale, 3 for RGB, 4 or more for multi-spectral."""
    norm_eps: float = 1e-5
    """BatchNorm epsilon (Keras' DenseNet uses 1.001e-5)."""
    stem: str = "imagenet"
    """``imagenet``: 7x7/2 convolution, BN, ReLU, 3x3/2 max-pool. ``cifar``: one 3x3 convolution."""
    memory_efficient: bool = False
    """Recompute concatenation, BN and ReLU in backward instead of storing them."""
    se_placement: tuple[str, ...] = ()
    """Where SE layers go: any of ``head``, ``block``, ``transition``, ``layer``."""
    se_rd_ratio: float = 1 / 16
    """SE squeeze width as a fraction of the channels (the SE paper's 1/r)."""
    se_rd_channels: int | None = None
    """SE squeeze width in channels; overrides ``se_rd_ratio`` (the tutorial's layer is 16)."""
    se_rd_divisor: int = 1
    """The ratio-derived squeeze width is rounded to a multiple of this."""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    """Free-form notes carried along (e.g. the preset name); not used by the network."""

    def __post_init__(self) -> None:
        self.block_config = tuple(int(b) for b in self.block_config)
        if isinstance(self.se_placement, str):
            self.se_placement = tuple(p for p in self.se_placement.replace(",", " ").split() if p)
        placement = tuple(self.se_placement)
        unknown = [p for p in placement if p not in SE_PLACEMENTS]
        if unknown:
            raise ModelConfigError(f"unknown se_placement {unknown}: choose from {list(SE_PLACEMENTS)}")
        self.se_placement = tuple(p for p in SE_PLACEMENTS if p in placement)
        if not self.block_config or any(b < 1 for b in self.block_config):
            raise ModelConfigError(f"block_config needs one or more positive layer counts, got {self.block_config}")
        for name in ("growth_rate", "num_init_features", "bn_size", "in_chans"):
            if getattr(self, name) < 1:
                raise ModelConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ModelConfigError(f"num_classes must be 0 (no classifier) or more, got {self.num_classes}")
        if not 0 < self.compression <= 1:
            raise ModelConfigError(f"compression must be in (0, 1], got {self.compression}")
        for name in ("drop_rate", "head_drop_rate"):
            if not 0 <= getattr(self, name) < 1:
                raise ModelConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.stem not in STEMS:
            raise ModelConfigError(f"unknown stem {self.stem!r}: choose from {list(STEMS)}")
        if self.norm_eps <= 0:
            raise ModelConfigError(f"norm_eps must be positive, got {self.norm_eps}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready dictionary (tuples as lists)."""
        d = asdict(self)
        d["block_config"] = list(self.block_config)
        d["se_placement"] = list(self.se_placement)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DenseNetConfig:
        """Rebuild from ``to_dict`` output; unknown keys are an error that names them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ModelConfigError(f"unknown DenseNet setting(s) {unknown}; valid: {sorted(names)}")
        return cls(**d)

    def min_input_size(self) -> int:
        """Smallest height/width whose feature map survives every stride (1x1 at the end)."""
        size = 1
        while _final_size(size, self) < 1:
            size += 1
        return size


def _final_size(size: int, config: DenseNetConfig) -> int:
    if config.stem == "imagenet":
        size = (size + 2 * 3 - 7) // 2 + 1  # conv0 7x7/2, pad 3
        size = (size + 2 * 1 - 3) // 2 + 1 if size >= 2 else 0  # pool0 3x3/2, pad 1
    for _ in range(len(config.block_config) - 1):
        size //= 2  # transition average pool 2x2/2
    return size


def _se(channels: int, config: DenseNetConfig) -> SqueezeExcite:
    return SqueezeExcite(
        channels, rd_ratio=config.se_rd_ratio, rd_channels=config.se_rd_channels, rd_divisor=config.se_rd_divisor
    )


class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1(bn_size*k)-BN-ReLU-Conv3x3(k): the pre-activation bottleneck layer of DenseNet-B."""

    def __init__(
        self,
        *,
        num_input_features: int,
        growth_rate: int,
        bn_size: int,
        drop_rate: float = 0.0,
        norm_eps: float = 1e-5,
        memory_efficient: bool = False,
        se: nn.Module | None = None,
    ) -> None:
        super().__init__()
        width = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(num_input_features, eps=norm_eps)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, width, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(width, eps=norm_eps)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        if se is not None:
            self.se = se
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def bottleneck(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Concatenate the block's features so far and squeeze them to ``bn_size * k`` channels."""
        x = torch.cat(inputs, 1)  # (B, C_in + i*k, H, W)
        return self.conv1(self.relu1(self.norm1(x)))

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and self.training and any(t.requires_grad for t in inputs):
            # Recompute concat + BN + ReLU + conv1 in backward: the concatenation is never stored.
            out = cp.checkpoint(lambda *ts: self.bottleneck(list(ts)), *inputs, use_reentrant=False)
        else:
            out = self.bottleneck(inputs)
        out = self.conv2(self.relu2(self.norm2(out)))  # (B, k, H, W)
        if hasattr(self, "se"):
            out = self.se(out)
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers, each fed the concatenation of the block input and all earlier outputs.

    Memory-efficient training and inference without autograd take the fast paths of :mod:`sedensenet.models.fast`
    where they apply; ``fast = False`` (or :func:`set_fast`) always runs the reference path below.
    """

    fast: bool = True
    fresh_output: bool = True
    """``forward`` returns a new tensor that no other code holds (every path ends in a new buffer or a
    concatenation): the fast path's inference lets an SE layer right after the block scale it in place."""

    def __init__(
        self,
        *,
        num_layers: int,
        num_input_features: int,
        growth_rate: int,
        bn_size: int,
        drop_rate: float = 0.0,
        norm_eps: float = 1e-5,
        memory_efficient: bool = False,
        se_config: DenseNetConfig | None = None,
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = DenseLayer(
                num_input_features=num_input_features + i * growth_rate,
                growth_rate=growth_rate,
                bn_size=bn_size,
                drop_rate=drop_rate,
                norm_eps=norm_eps,
                memory_efficient=memory_efficient,
                se=_se(growth_rate, se_config) if se_config is not None else None,
            )
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast and fast.block_applies(self, x):
            return fast.forward_block(self, x)
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)  # (B, C_in + L*k, H, W)


class Transition(nn.Sequential):
    """BN-ReLU-Conv1x1(compression * C)-[SE]-AvgPool2x2: halves the resolution between dense blocks.

    Without SE the fast path pools before the 1x1 convolution (both are linear per pixel and channel, so they
    commute exactly, up to rounding); ``memory_efficient`` recomputes BN + ReLU in backward instead of keeping them.
    """

    fast: bool = True

    def __init__(
        self,
        *,
        num_input_features: int,
        num_output_features: int,
        norm_eps: float = 1e-5,
        se: nn.Module | None = None,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        self.memory_efficient = memory_efficient
        self.add_module("norm", nn.BatchNorm2d(num_input_features, eps=norm_eps))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(num_input_features, num_output_features, kernel_size=1, bias=False))
        if se is not None:
            self.add_module("se", se)
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast and fast.transition_applies(self, x):
            return fast.forward_transition(self, x)
        return super().forward(x)


class DenseNet(nn.Module):
    """DenseNet / SE-DenseNet classifier built from a :class:`DenseNetConfig`.

    ``forward_features`` returns the final ReLU'd feature map ``(B, num_features, H/32, W/32)``
    (``H/4`` for the CIFAR stem with three blocks), ``forward_head`` pools and classifies it.

    On CPU the fast path runs the network in ``channels_last`` layout (oneDNN's preferred one); the values
    are the same, and ``fast = False`` (or :func:`set_fast`) keeps the caller's layout. The network owns the one
    scratch storage its parts' fast paths share (:func:`sedensenet.models.fast.share_scratch`).
    """

    fast: bool = True

    def __init__(self, config: DenseNetConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        if config is None:
            config = DenseNetConfig(**overrides)
        elif overrides:
            config = DenseNetConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        c = config
        placement = set(c.se_placement)
        if c.stem == "imagenet":
            stem = [
                ("conv0", nn.Conv2d(c.in_chans, c.num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
                ("norm0", nn.BatchNorm2d(c.num_init_features, eps=c.norm_eps)),
                ("relu0", nn.ReLU(inplace=True)),
                ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
            ]
        else:
            stem = [("conv0", nn.Conv2d(c.in_chans, c.num_init_features, kernel_size=3, padding=1, bias=False))]
        self.features = nn.Sequential(OrderedDict(stem))

        num_features = c.num_init_features
        for i, num_layers in enumerate(c.block_config, start=1):
            block = DenseBlock(
                num_layers=num_layers,
                num_input_features=num_features,
                growth_rate=c.growth_rate,
                bn_size=c.bn_size,
                drop_rate=c.drop_rate,
                norm_eps=c.norm_eps,
                memory_efficient=c.memory_efficient,
                se_config=c if "layer" in placement else None,
            )
            self.features.add_module(f"denseblock{i}", block)
            num_features += num_layers * c.growth_rate
            if "block" in placement:
                self.features.add_module(f"se{i}", _se(num_features, c))
            if i != len(c.block_config):
                out_features = int(num_features * c.compression)
                se = _se(out_features, c) if "transition" in placement else None
                transition = Transition(
                    num_input_features=num_features,
                    num_output_features=out_features,
                    norm_eps=c.norm_eps,
                    se=se,
                    memory_efficient=c.memory_efficient,
                )
                self.features.add_module(f"transition{i}", transition)
                num_features = out_features
        if "head" in placement:
            self.features.add_module("se_head", _se(num_features, c))
        self.features.add_module("norm5", nn.BatchNorm2d(num_features, eps=c.norm_eps))
        self.features.add_module("relu5", nn.ReLU(inplace=True))

        self.num_features = num_features
        self.head_drop = nn.Dropout(c.head_drop_rate)
        self.classifier: nn.Module = nn.Linear(num_features, c.num_classes) if c.num_classes else nn.Identity()
        self._min_size = c.min_input_size()
        self._init_weights()
        fast.share_scratch(self)  # one scratch storage for the fast paths of the stem, blocks and transitions

    def _init_weights(self) -> None:
        for m in self.modules():
            # Body convolutions (bias-free) get Kaiming init as in torchvision; SE convolutions keep
            # PyTorch's default fan-in uniform init.
            if isinstance(m, nn.Conv2d) and m.bias is None:
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming the problem when ``x`` cannot go through this network."""
        if x.dim() != 4:
            raise ValueError(f"expected a batch of images (B, C, H, W), got a tensor of shape {tuple(x.shape)}")
        if x.shape[1] != self.config.in_chans:
            raise ValueError(
                f"the model takes {self.config.in_chans}-channel images but got {x.shape[1]} channels; "
                f"build it with in_chans={x.shape[1]} or convert the images"
            )
        h, w = int(x.shape[2]), int(x.shape[3])
        if min(h, w) < self._min_size:
            raise ValueError(
                f"input {h}x{w} is too small for this DenseNet: the minimum is {self._min_size}x{self._min_size} "
                f"({len(self.config.block_config) - 1} transitions and the {self.config.stem} stem)"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch -> final feature map after norm5 and ReLU."""
        if not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()):
            self.check_input(x)
        if self.fast and fast.features_applies(self, x):
            return fast.forward_features(self, x)
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> logits (or the pooled, pre-classifier features with ``pre_logits=True``)."""
        pooled = fast.global_pool(x) if self.fast else F.adaptive_avg_pool2d(x, 1)
        x = torch.flatten(pooled, 1)  # (B, num_features)
        x = self.head_drop(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one for ``num_classes`` outputs (0 removes it)."""
        self.config.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if num_classes:
            nn.init.zeros_(self.classifier.bias)
        params = list(self.parameters())
        if params:
            self.classifier.to(params[0].device)

    def se_modules(self) -> dict[str, SqueezeExcite]:
        """Every SE layer by its qualified name."""
        return {name: m for name, m in self.named_modules() if isinstance(m, SqueezeExcite)}

    def describe(self) -> str:
        """A few lines on what this network is (and, once loaded from a checkpoint, what it was trained for)."""
        c = self.config
        se = ", ".join(c.se_placement) if self.se_modules() else "none"
        lines = [
            f"DenseNet {c.extra.get('preset', '')!r}: blocks {list(c.block_config)}, growth rate {c.growth_rate}, "
            f"SE: {se}; {count_parameters(self):,} parameters; {c.in_chans} input channel(s), {c.num_classes} outputs"
        ]
        classes = getattr(self, "classes", None)  # set by sedensenet.load_model
        if classes is not None:
            lines.append(f"classes: {classes}")
        if getattr(self, "meta", None) is not None:
            lines.append(str(self.meta))
        lines.append("print(model) lists every layer; sedensenet.summary(model) gives the table by stage")
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """IPython and Jupyter show :meth:`describe`; ``repr()`` stays PyTorch's full module tree."""
        printer.text(self.describe())


def set_fast(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch the fast paths of every DenseNet part in ``model`` on or off (off: the reference implementation)."""
    for m in model.modules():
        if isinstance(m, (DenseNet, DenseBlock, Transition, SqueezeExcite)):
            m.fast = enabled
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those that require gradients)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
