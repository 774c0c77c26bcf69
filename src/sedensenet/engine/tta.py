"""Test-time augmentation: each batch seen in a few views (flipped, zoomed) in one pass, probabilities averaged.

The views are made from the normalised batch before the backend is called, so every backend (eager, compiled,
ONNX Runtime in memory or an exported ``.onnx`` file) runs them unchanged: one call on ``V * B`` images. Every
view keeps the input size, which an exported file requires.

Horizontal flips swap left and right. Where that changes the meaning of an image (chest X-rays with the heart on
the left, text, asymmetric anatomy) use ``vflip`` or ``scale`` alone, or none.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from sedensenet.config import TTA_MODES, ConfigError

ZOOM = 0.875
"""Side of the zoomed-in view as a fraction of the image's: about 77% of the area, inside the 70-100% that
training's random resized crops take."""


def check_tta(mode: str) -> str:
    """``mode`` when it is one of :data:`~sedensenet.config.TTA_MODES`; a ``ConfigError`` naming them otherwise."""
    if mode not in TTA_MODES:
        raise ConfigError(f"unknown test-time augmentation {mode!r}: choose from {', '.join(TTA_MODES)}")
    return mode


def _zoom(x: torch.Tensor) -> torch.Tensor:
    """The central ``ZOOM`` of each side, resized back to ``(H, W)`` (bilinear, antialiased)."""
    h, w = x.shape[-2:]
    ch, cw = max(1, round(h * ZOOM)), max(1, round(w * ZOOM))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top : top + ch, left : left + cw]
    return F.interpolate(crop.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True).to(x.dtype)


def make_views(x: torch.Tensor, mode: str) -> torch.Tensor:
    """The views of a batch ``(B, C, H, W)`` stacked view by view: ``(V * B, C, H, W)``, the original first."""
    views = [x]
    if mode in ("flip", "flip+scale"):
        views.append(x.flip(-1))
    if mode == "vflip":
        views.append(x.flip(-2))
    if mode in ("scale", "flip+scale"):
        zoomed = _zoom(x)
        views.append(zoomed)
        if mode == "flip+scale":
            views.append(zoomed.flip(-1))
    return torch.cat(views)  # (V * B, C, H, W)


def view_count(mode: str) -> int:
    """How many views a mode runs per image."""
    return {"none": 1, "flip": 2, "vflip": 2, "scale": 2, "flip+scale": 4}[check_tta(mode)]


class TTAModule(nn.Module):
    """Calls ``runner`` once on every view of a batch and returns the log of the views' mean probabilities.

    A softmax of the output gives the averaged probabilities, and cross-entropy on it is the loss of the averaged
    prediction, so the evaluation loop needs no change. Multi-label (``multilabel``): each label's sigmoid
    probabilities are averaged and their logit returned, so a sigmoid of the output gives the mean.
    """

    def __init__(self, runner: nn.Module, mode: str, *, multilabel: bool = False) -> None:
        super().__init__()
        self.runner = runner
        self.mode = check_tta(mode)
        self.multilabel = multilabel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        logits = self.runner(make_views(x, self.mode)).float()  # (V * B, classes)
        if self.multilabel:
            probs = logits.sigmoid().view(-1, b, logits.shape[-1]).mean(0)
            return torch.logit(probs, eps=1e-7)
        probs = logits.softmax(-1).view(-1, b, logits.shape[-1]).mean(0)  # (B, classes)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def with_tta(runner: nn.Module, mode: str, *, multilabel: bool = False) -> nn.Module:
    """``runner`` itself for ``none`` (the outputs bit for bit as without TTA), else a :class:`TTAModule`."""
    return runner if check_tta(mode) == "none" else TTAModule(runner, mode, multilabel=multilabel)
