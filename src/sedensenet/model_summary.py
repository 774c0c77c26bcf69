"""A model summary by stage, what Keras' ``model.summary()`` gives the tutorial's readers, plus MACs/FLOPs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sedensenet.display import Table
from sedensenet.models import DenseNet, create_model, get_preset, list_models


@dataclass
class StageRow:
    """One line of the summary: a stage of the network, its output shape and parameter count."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int


@dataclass
class ModelSummary:
    """Stages and totals of a model at one input size; ``str()`` gives the printed table."""

    rows: list[StageRow]
    input_shape: tuple[int, ...]
    total_params: int
    trainable_params: int
    non_trainable_params: int
    buffers: int
    buffer_elements: int
    macs: int
    size_mb: float
    title: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def flops(self) -> int:
        """Floating-point operations (multiply and add counted apart: 2 x MACs)."""
        return 2 * self.macs

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        rows = [[r.name, r.kind, "x".join(str(s) for s in r.output_shape), r.params] for r in self.rows]
        notes = str(self).splitlines()[len(self.rows) + 4 + bool(self.title) :]  # Input, totals, notes
        return Table(["Stage", "Type", "Output shape", "Params"], rows, title=self.title, notes=notes)._repr_html_()

    def __str__(self) -> str:
        widths = (34, 22, 22, 14)
        header = ("Stage", "Type", "Output shape", "Params")
        line = "-" * sum(widths)
        out = [self.title] if self.title else []
        out += [line, "".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), line]
        for r in self.rows:
            shape = "x".join(str(s) for s in r.output_shape)
            out.append(f"{r.name:<34}{r.kind:<22}{shape:<22}{r.params:>14,}")
        out += [
            line,
            f"Input: {'x'.join(str(s) for s in self.input_shape)}",
            f"Total params:         {self.total_params:,}",
            f"Trainable params:     {self.trainable_params:,}",
            f"Non-trainable params: {self.non_trainable_params:,}",
            f"Buffers:              {self.buffers:,} ({self.buffer_elements:,} values: BatchNorm statistics)",
            f"MACs:                 {self.macs / 1e9:.3f} G   (FLOPs: {self.flops / 1e9:.3f} G, multiply+add as 2)",
            f"Size (params+buffers): {self.size_mb:.2f} MB",
        ]
        out += self.notes
        return "\n".join(out)


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass (convolutions and linear layers), via torch.utils.flop_counter."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def models_table(filter: str = "", *, num_classes: int = 1000) -> Table:
    """The presets whose name contains ``filter`` (``sedensenet models``) as a table sized from its content."""
    return presets_table(preset_rows(filter, num_classes))


def presets_table(rows: Sequence[PresetRow]) -> Table:
    """Parameters and GMACs (multiply-accumulates, for 3-channel inputs at the preset's default size), SE placement
    and description, one row per preset, with columns sized from their content."""
    cells = [[r.name, r.params, r.macs / 1e9, r.image_size, r.se_placement, r.description] for r in rows]
    return Table(["name", "params", "GMACs", "size", "SE placement", "description"], cells)


def summary(
    model: nn.Module, input_size: int | tuple[int, ...] = 224, batch_size: int = 1, title: str = ""
) -> ModelSummary:
    """Summarise ``model`` for inputs of ``input_size`` (an int side, ``(H, W)`` or ``(C, H, W)``).

    For a :class:`DenseNet`, rows are the stem, each dense block, SE layer and transition, and the head;
    any other module gets one row per direct child.
    """
    in_chans = getattr(getattr(model, "config", None), "in_chans", 3)
    if isinstance(input_size, int):
        input_size = (in_chans, input_size, input_size)
    elif len(input_size) == 2:
        input_size = (in_chans, *input_size)
    example = torch.zeros(batch_size, *input_size, device=next(model.parameters()).device)
    stages = _stages(model)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        st.hook_on.register_forward_hook(lambda _m, _i, out, name=st.name: shapes.__setitem__(name, tuple(out.shape)))
        for st in stages
    ]
    try:
        macs = count_macs(model, example)
    finally:
        for h in hooks:
            h.remove()
    rows = [
        StageRow(st.name, st.kind, shapes.get(st.name, ()), sum(p.numel() for m in st.owners for p in m.parameters()))
        for st in stages
    ]
    params = list(model.parameters())
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    nbytes = sum(p.numel() * p.element_size() for p in params) + sum(b.numel() * b.element_size() for b in buffers)
    return ModelSummary(
        rows=rows,
        input_shape=(batch_size, *input_size),
        total_params=total,
        trainable_params=trainable,
        non_trainable_params=total - trainable,
        buffers=len(buffers),
        buffer_elements=sum(b.numel() for b in buffers),
        macs=macs,
        size_mb=nbytes / 2**20,
        title=title,
    )


@dataclass
class _Stage:
    name: str
    kind: str
    hook_on: nn.Module
    """The module whose output is the stage's output (hooked during a real forward pass)."""
    owners: list[nn.Module]
    """The modules whose parameters the stage counts."""


def _stages(model: nn.Module) -> list[_Stage]:
    if not isinstance(model, DenseNet):
        return [_Stage(n, type(m).__name__, m, [m]) for n, m in model.named_children()]
    feats = model.features
    stem = [n for n in ("conv0", "norm0", "relu0", "pool0") if n in feats._modules]
    stages = [_Stage(f"stem ({'+'.join(stem)})", "Stem", feats._modules[stem[-1]], [feats._modules[n] for n in stem])]
    for name, module in feats.named_children():
        if name not in stem and name not in ("norm5", "relu5"):
            stages.append(_Stage(f"features.{name}", type(module).__name__, module, [module]))
    stages.append(_Stage("head (norm5+relu+pool+fc)", "Head", model.classifier, [feats.norm5, model.classifier]))
    return stages


def preset_summary(model: str, num_classes: int = 1000, image_size: int = 224, in_chans: int = 3) -> ModelSummary:
    """A model's stages, output shapes, parameters and MACs/FLOPs (like Keras' model.summary()).

    Args:
        model: preset name (see 'sedensenet models').
        num_classes: classes of the classifier.
        image_size: side of the square input.
        in_chans: input channels.
    """
    net = create_model(model, num_classes=num_classes, in_chans=in_chans)
    return summary(net, image_size, title=f"{model} ({num_classes} classes)")


@dataclass(frozen=True)
class PresetRow:
    """One preset as ``sedensenet models`` lists it."""

    name: str
    params: int
    macs: int
    image_size: int
    se_placement: str
    description: str


def preset_rows(filter: str = "", num_classes: int = 1000) -> list[PresetRow]:
    """The model presets with parameters and GFLOPs (MACs) at their default input size.

    Args:
        filter: only names containing this.
        num_classes: classes of the classifier the figures are counted with.
    """
    rows = []
    for name in list_models(filter):
        preset = get_preset(name)
        net = create_model(name, num_classes=num_classes)
        size = preset.default_image_size
        macs = count_macs(net, torch.zeros(1, 3, size, size))
        params = sum(p.numel() for p in net.parameters())
        rows.append(PresetRow(name, params, macs, size, ",".join(net.config.se_placement) or "-", preset.description))
    return rows
