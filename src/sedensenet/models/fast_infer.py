"""Inference without autograd: the dense block's shared feature buffer, norm1 from running statistics into the
network's scratch, and norm2 folded into conv1. See :mod:`sedensenet.models.fast` for when it applies."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from sedensenet.models.fast_storage import conv2d, preferred_format, scale_shift, scratch

if TYPE_CHECKING:
    from sedensenet.models.densenet import DenseBlock


def eval_block(block: DenseBlock, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode forward with running statistics, no autograd: the buffer, and norm2 folded into conv1."""
    layers = list(block.values())
    b, c0, h, w = x.shape
    k = layers[0].conv2.out_channels
    fmt = preferred_format(x)
    buf = torch.empty((b, c0 + len(layers) * k, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
    buf[:, :c0].copy_(x)
    scratch(block, (b, c0 + (len(layers) - 1) * k, h, w), x, fmt)
    for i, layer in enumerate(layers):
        c = c0 + i * k
        n1, n2 = layer.norm1, layer.norm2
        scale1 = n1.weight * (n1.running_var + n1.eps).rsqrt()
        act1 = scratch(block, (b, c, h, w), x, fmt)
        scale_shift(buf[:, :c], scale1, n1.bias - n1.running_mean * scale1, out=act1).relu_()
        # norm2 directly follows conv1: fold it into conv1's weight and a bias (exact up to rounding; under
        # autocast folded in float32, then cast to the data's dtype as autocast casts conv1's weight).
        scale2 = n2.weight * (n2.running_var + n2.eps).rsqrt()
        weight1 = (layer.conv1.weight * scale2.view(-1, 1, 1, 1)).to(x.dtype)
        y1 = conv2d(act1, layer.conv1, weight1, (n2.bias - n2.running_mean * scale2).to(x.dtype)).relu_()
        buf[:, c : c + k].copy_(conv2d(y1, layer.conv2, layer.conv2.weight.to(x.dtype)))
    return buf
