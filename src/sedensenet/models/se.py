"""Squeeze-and-Excitation channel attention (Hu et al., 2018)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sedensenet.models import fast


def make_divisible(value: float, divisor: int = 1, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never dropping more than 10% below it."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class SqueezeExcite(nn.Module):
    """Global average pool -> reduce -> activation -> expand -> gate -> scale the input's channels.

    The squeeze width is either ``rd_channels`` (an absolute width: the tutorial's Keras layer is
    ``rd_channels=16``) or ``make_divisible(channels * rd_ratio, rd_divisor)`` (the SE paper's
    reduction ratio, r=16 by default). The two 1x1 convolutions are the paper's two fully connected
    layers (both with bias) and work on channels_last tensors unchanged.

    The gate is a submodule of its own (as in timm's ``SEModule``), so the attention a model learned can be
    read back with a forward hook on ``se.gate`` (``sedensenet explain`` does); the module keeps no state.
    ``fast = False`` (or :func:`~sedensenet.models.densenet.set_fast`) squeezes with plain ``mean``.
    """

    fast: bool = True

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act: Callable[[], nn.Module] = nn.ReLU,
        gate: Callable[[], nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"SqueezeExcite needs at least one channel, got {channels}")
        if rd_channels is None:
            if not 0 < rd_ratio <= 1:
                raise ValueError(f"se rd_ratio must be in (0, 1], got {rd_ratio}")
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor)
        if rd_channels < 1:
            raise ValueError(f"se rd_channels must be at least 1, got {rd_channels}")
        self.channels = channels
        self.rd_channels = rd_channels
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=True)
        self.act = act()
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=True)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.excitation(x)

    def excitation(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel gate ``(B, C, 1, 1)`` for ``x``: squeeze, reduce, activate, expand, gate."""
        s = fast.spatial_mean(x, enabled=self.fast)  # (B, C, 1, 1): x.mean((2, 3)), faster on CPU
        return self.gate(self.fc2(self.act(self.fc1(s))))

    def scale_(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(x)`` written into ``x``, for a caller that owns ``x`` and needs no gradient through it.

        The fast path's inference uses it on a dense block's fresh output: multiplying in place saves a new
        ``(B, C, H, W)`` tensor per SE layer (the product's memory traffic and, under glibc, its page faults).
        Out of place when the gate's dtype would promote ``x``'s (as ``x * gate`` does), and the module's own call
        when a subclass changes ``forward``.
        """
        if type(self).forward is not SqueezeExcite.forward:
            return self(x)
        gate = self.excitation(x)
        return x.mul_(gate) if gate.dtype == x.dtype else x * gate

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rd_channels={self.rd_channels}"
