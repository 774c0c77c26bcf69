"""Memory-efficient training (Pleiss et al. 2017, shared storage): one autograd node per dense block, stem and
transition, keeping the block's feature buffer and a few bottleneck outputs and recomputing BN + ReLU in backward;
and default training's block, the same node keeping what the reference keeps instead (``keep=True``).

See :mod:`sedensenet.models.fast` for the design and for when these paths apply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from sedensenet.models.fast_norm import batch_norm_backward, batch_stats, grad_sums
from sedensenet.models.fast_storage import (
    aten,
    chan,
    conv2d,
    conv2d_backward,
    convolve,
    dense,
    low_precision,
    momentum,
    preferred_format,
    scale_shift,
    scratch,
    stat_dtype,
    update_running,
)

if TYPE_CHECKING:
    from sedensenet.models.densenet import DenseBlock, DenseLayer


def train_block(block: DenseBlock, x: torch.Tensor, keep: bool = False) -> torch.Tensor:
    """A dense block's training forward with batch statistics: one autograd node when gradients are needed.

    ``keep``: default training's variant, which keeps every layer's activations instead of recomputing them
    (:func:`_train_forward`).
    """
    params = [t for layer in block.values() for t in _layer_params(layer)]
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return _SharedStorageBlock.apply(block, keep, x, *params)
    with torch.autocast(x.device.type, enabled=False):
        return _train_forward(block, x, params, saved=None)[0]


def _layer_params(layer: DenseLayer) -> tuple[torch.Tensor, ...]:
    return (layer.norm1.weight, layer.norm1.bias, layer.conv1.weight, layer.norm2.weight, layer.norm2.bias,
            layer.conv2.weight)  # fmt: skip


def _train_forward(
    block: DenseBlock, x: torch.Tensor, params: list[torch.Tensor] | tuple[torch.Tensor, ...],
    saved: list[tuple[torch.Tensor, ...]] | None, keep: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Training-mode forward with batch statistics; returns the block's output and every channel's mean and variance.

    When ``saved`` is a list, each layer appends what its backward needs: the bottleneck output ``y1``, its
    batch mean and inverse std, and norm1's per-channel scale and shift.

    ``keep`` (default training): the features are concatenated one layer at a time instead of written into one
    buffer (each layer's input a dense tensor), and each layer also keeps its input and both activations (what
    the reference keeps), so backward recomputes nothing. It still computes norm1's statistics once per channel,
    and its backward accumulates every channel's gradient in one buffer: each layer adds ``a * d_z`` to the
    channels it read, in place, where autograd would compute BatchNorm's whole input gradient and then add it to
    the concatenation's in a new tensor (the channel-wise affine rest is applied once per channel).

    Under autocast (bf16/fp16 ``x``, run here with autocast off) this does what the reference does: the
    convolutions in ``x``'s dtype with their weights cast to it, BatchNorm statistics and per-channel arithmetic
    in float32 with the normalised values rounded to ``x``'s dtype, the buffer in ``x``'s dtype.
    """
    layers: list[DenseLayer] = list(block.values())
    b, c0, h, w = x.shape
    k = layers[0].conv2.out_channels
    total = c0 + len(layers) * k
    n = b * h * w
    fmt = preferred_format(x)
    if keep:
        features = x.contiguous(memory_format=fmt)
    else:
        features = torch.empty((b, total, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
        features[:, :c0].copy_(x)
    mean = torch.empty(total, dtype=stat_dtype(x), device=x.device)
    var = torch.empty_like(mean)
    mean[:c0], var[:c0] = batch_stats(x)
    scratch(block, (b, total, h, w), x, fmt)  # reserve once: backward's gradient needs the whole width
    for i, layer in enumerate(layers):
        c = c0 + i * k
        g1, b1, w1, g2, b2, w2 = params[6 * i : 6 * i + 6]
        scale1 = g1 * (var[:c] + layer.norm1.eps).rsqrt()
        shift1 = b1 - mean[:c] * scale1
        update_running(layer.norm1, mean[:c], var[:c], n)
        if keep:
            act1 = scale_shift(features, scale1, shift1).relu_()  # norm1 + relu1: (B, c, H, W)
        else:
            act1 = scratch(block, (b, c, h, w), x, fmt)
            scale_shift(features[:, :c], scale1, shift1, out=act1).relu_()
        y1 = conv2d(act1, layer.conv1, w1.to(x.dtype), training=True)  # (B, bn_size*k, H, W)
        n2 = layer.norm2
        act2, mean2, invstd2 = aten.native_batch_norm(
            y1, g2, b2, n2.running_mean, n2.running_var, True, momentum(n2), n2.eps
        )
        y2 = conv2d(act2.relu_(), layer.conv2, w2.to(x.dtype), training=True)  # (B, k, H, W)
        mean[c : c + k], var[c : c + k] = batch_stats(y2)
        if keep:
            saved.append((y1, mean2, invstd2, scale1, shift1, features, act1, act2))
            features = torch.cat([features, y2], 1)  # (B, c + k, H, W): y2's values are kept there
            continue
        del act2
        features[:, c : c + k].copy_(y2)
        if saved is not None:
            saved.append((None if recompute_bottleneck(layer, c) else y1, mean2, invstd2, scale1, shift1))
    return features, mean, var


RECOMPUTE_WIDTH = 9
"""Memory-efficient mode recomputes a layer's bottleneck convolution in backward instead of keeping its output
when its input has at most ``RECOMPUTE_WIDTH * growth_rate`` channels: then conv1 costs at most as many
multiply-adds as the 3x3 conv2 (``c * 4k`` against ``4k * k * 9`` per pixel). Those are the early, high-resolution
layers, whose kept outputs dominate the memory; DenseNet-121 at 128 px, batch 32 keeps ~120 MB less (of ~180 MB
of bottleneck outputs) for about 5% more multiply-adds per step."""


def recompute_bottleneck(layer: DenseLayer, in_channels: int) -> bool:
    """Whether memory-efficient backward recomputes ``layer``'s conv1 output (see :data:`RECOMPUTE_WIDTH`)."""
    return in_channels <= RECOMPUTE_WIDTH * layer.conv2.out_channels


class _SharedStorageBlock(torch.autograd.Function):
    """A dense block as one autograd node that keeps the buffer and the bottleneck outputs, nothing O(L^2)."""

    @staticmethod
    def forward(ctx: Any, block: DenseBlock, keep: bool, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        saved: list[tuple[torch.Tensor, ...]] = []
        with torch.autocast(x.device.type, enabled=False):  # the casts autocast would make are explicit
            buf, mean, var = _train_forward(block, x, params, saved, keep)
        ctx.block, ctx.c0, ctx.fmt, ctx.keep = block, x.shape[1], preferred_format(x), keep
        ctx.widths = [len(t) for t in saved]
        # Saved through autograd, not kept on ctx: freed once backward is done (unless retain_graph), where a
        # ctx attribute would live as long as the graph, into the next step's forward.
        ctx.save_for_backward(buf, mean, var, *params, *(t for layer in saved for t in layer))
        return buf

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        buf, mean, var, *rest = ctx.saved_tensors
        layers: list[DenseLayer] = list(ctx.block.values())
        params, rest = rest[: 6 * len(layers)], rest[6 * len(layers) :]
        layer_saved, start = [], 0
        for width in ctx.widths:
            layer_saved.append(rest[start : start + width])
            start += width
        fmt, c0 = ctx.fmt, ctx.c0
        b, total, h, w = buf.shape
        k = layers[0].conv2.out_channels
        n = b * h * w
        grad = scratch(ctx.block, (b, total, h, w), buf, fmt, slot=1)  # d(buf), accumulated in place
        if grad.data_ptr() != grad_out.data_ptr() or grad.stride() != grad_out.stride():
            grad.copy_(grad_out)  # (a transition in memory-efficient mode hands it over in place already)
        # The per-channel affine part of every norm1's input gradient, summed over the layers that read the
        # channel: d(buf)[c] += coef[c] * (buf[c] - mean[c]) + const[c], applied once the channel is complete.
        coef = torch.zeros(total, dtype=mean.dtype, device=buf.device)
        const = torch.zeros_like(coef)
        eps = {layer.norm1.eps for layer in layers}
        invstd = (var + eps.pop()).rsqrt() if len(eps) == 1 else None
        needs = ctx.needs_input_grad
        grads: list[torch.Tensor | None] = [None] * len(params)
        for i in reversed(range(len(layers))):
            layer, (y1, mean2, invstd2, scale1, shift1, *kept) = layers[i], layer_saved[i]
            c = c0 + i * k
            g1, _, w1, g2, b2, w2 = params[6 * i : 6 * i + 6]
            want = needs[3 + 6 * i : 3 + 6 * i + 6]
            w1_low, w2_low = w1.to(buf.dtype), w2.to(buf.dtype)  # (autocast's weight casts, under bf16/fp16)
            free = scratch(ctx.block, (b, c, h, w), buf, fmt)
            if kept:
                x_in, act1, act2 = kept
                y2 = (layer_saved[i + 1][5] if i + 1 < len(layers) else buf)[:, c : c + k]  # the next input's
            else:
                x_in, act1, y2 = buf[:, :c], free, buf[:, c : c + k]
                scale_shift(x_in, scale1, shift1, out=act1).relu_()  # norm1 + relu1, recomputed in the scratch
                if y1 is None:
                    y1 = conv2d(act1, layer.conv1, w1_low, training=True)  # what forward computed: bitwise
                scale2 = g2 * invstd2  # norm2 + relu2, recomputed from the bottleneck output
                act2 = scale_shift(y1, scale2, b2 - mean2 * scale2).relu_()
            # This layer's k new channels now have their whole gradient (a dense copy of the slice first: an
            # elementwise kernel reading k channels out of every pixel of the buffer runs ~10x slower).
            d_y2 = _affine_grad(grad[:, c : c + k].contiguous(memory_format=fmt), y2, mean[c : c + k],
                                coef[c : c + k], const[c : c + k])  # fmt: skip
            d_act2, d_w2 = conv2d_backward(d_y2, act2, w2_low, layer.conv2, want[5])
            d_z2 = aten.threshold_backward.grad_input(d_act2, act2, 0, grad_input=d_act2)
            del act2
            d_y1, d_g2, d_b2 = aten.native_batch_norm_backward(
                d_z2, y1, g2, None, None, mean2, invstd2, True, layer.norm2.eps, [True, want[3], want[4]]
            )
            del d_z2, d_act2, y1
            d_act1, d_w1 = conv2d_backward(d_y1, act1, w1_low, layer.conv1, want[2])
            del d_y1
            d_z1 = aten.threshold_backward.grad_input(d_act1, act1, 0, grad_input=d_act1)  # (B, c, H, W)
            # BatchNorm backward with the shared statistics: d_x = a * d_z + coef_i * (x - mean) + const_i,
            # where a = g * invstd, coef_i = -a * invstd * d_gamma / n and const_i = -a * d_beta / n.
            invstd1 = invstd[:c] if invstd is not None else (var[:c] + layer.norm1.eps).rsqrt()
            d_g1, d_b1 = _norm1_param_grads(d_z1, x_in, free, mean[:c], invstd1)
            del act1
            a = g1 * invstd1
            grad[:, :c].addcmul_(d_z1, chan(a.to(grad.dtype)))  # bf16: a rounded once, as the products are
            del d_z1, d_act1
            coef[:c] -= a * invstd1 * d_g1 / n
            const[:c] -= a * d_b1 / n
            grads[6 * i : 6 * i + 6] = [d_g1 if want[0] else None, d_b1 if want[1] else None, _as(d_w1, w1), d_g2,
                                        d_b2, _as(d_w2, w2)]  # fmt: skip
        d_x = None
        if needs[2]:
            x = layer_saved[0][5] if ctx.keep else buf[:, :c0]
            d_x = _affine_grad(grad[:, :c0].contiguous(memory_format=fmt), x, mean[:c0], coef[:c0], const[:c0])
        return (None, None, d_x, *grads)


def _as(grad: torch.Tensor | None, param: torch.Tensor) -> torch.Tensor | None:
    """A weight's gradient in the weight's dtype (bf16/fp16 convolution gradients of float32 weights)."""
    return grad if grad is None else grad.to(param.dtype)


def _affine_grad(grad: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, coef: torch.Tensor,
                 const: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """``grad + coef * (x - mean) + const`` per channel, in ``grad``'s dtype (float32 arithmetic for bf16/fp16)."""
    if not low_precision(x):
        return torch.addcmul(grad + chan(const), x - chan(mean), chan(coef))
    return scale_shift(x, coef, const - mean * coef).add_(grad)


def _norm1_param_grads(
    d_z: torch.Tensor, x: torch.Tensor, free: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """norm1's weight and bias gradients ``sum(d_z * (x - mean)) * invstd`` and ``sum(d_z)`` per channel.

    In float32/64 two reductions, using ``free`` (scratch of ``x``'s shape) for the product; for bf16/fp16
    BatchNorm's backward reductions (:func:`~sedensenet.models.fast_norm.grad_sums`, folded when it pays), which
    accumulate in float32 (as the reference's do) without rounding each product to bf16, on a dense copy of ``x``
    in ``free`` (on a channel slice of the buffer the kernel takes a strided path ~5x slower than the copy and
    the dense kernel together).
    """
    if low_precision(x):
        return grad_sums(d_z, x if dense(x) else free.copy_(x), mean, invstd)
    d_b = d_z.sum((0, 2, 3))
    product = torch.mul(d_z, x, out=free)
    return (product.sum((0, 2, 3)) - mean * d_b) * invstd, d_b


def transition_forward(transition: nn.Module, x: torch.Tensor, keep: bool = False) -> torch.Tensor:
    """BN-ReLU-AvgPool as one node, then the 1x1 convolution.

    Memory-efficient mode keeps nothing but the node's (already kept) input and recomputes BN + ReLU in backward;
    ``keep`` (default training on CPU) keeps the activation too, as the reference's pooling does. Either way the
    pooling's backward is a broadcast copy and ReLU's is applied in place (:func:`_pool_backward`).
    """
    norm = transition.norm
    pooled = _BNReLUPool.apply(transition, norm, transition.pool, not keep, keep, x, norm.weight, norm.bias)
    return convolve(transition.conv, pooled)  # (B, C_out, H/2, W/2): pooling first is exact for a 1x1 convolution


def _bn_relu_forward(
    owner: nn.Module, bn: nn.BatchNorm2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, keep: bool = False
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Training BN (batch statistics, running averages updated) + ReLU of ``x``, into the owner's scratch (a new
    tensor with ``keep``, which outlives the call).

    Returns the activation and ``(mean, invstd, scale, shift)``, which :func:`_bn_relu_again` needs.
    """
    mean, var = batch_stats(x)
    update_running(bn, mean, var, x.shape[0] * x.shape[2] * x.shape[3])
    invstd = (var + bn.eps).rsqrt()
    scale = weight * invstd
    shift = bias - mean * scale
    act = scale_shift(x, scale, shift).relu_() if keep else _bn_relu_again(owner, x, scale, shift)
    return act, (mean, invstd, scale, shift)


def _bn_relu_again(owner: nn.Module, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``relu(x * scale + shift)`` per channel into the owner's scratch (the forward's values, recomputed)."""
    act = scratch(owner, tuple(x.shape), x, preferred_format(x))
    return scale_shift(x, scale, shift, out=act).relu_()


class _BNReLUPool(torch.autograd.Function):
    """BN + ReLU + pooling (a transition's average pooling or the stem's max pooling) as one node that keeps only
    its input: BN + ReLU, and max pooling's indices, are recomputed in backward into the owner's scratch; with
    ``keep``, the activation is kept instead."""

    @staticmethod
    def forward(
        ctx: Any, owner: nn.Module, bn: nn.BatchNorm2d, pool: nn.Module, handoff: bool, keep: bool,
        x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        act, stats = _bn_relu_forward(owner, bn, x, weight, bias, keep)  # (B, C, H, W)
        ctx.owner, ctx.bn, ctx.pool, ctx.handoff = owner, bn, pool, handoff
        ctx.save_for_backward(x, weight, *stats, *([act] if keep else []))
        return _pool_forward(pool, act)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, mean, invstd, scale, shift, *kept = ctx.saved_tensors
        act = kept[0] if kept else _bn_relu_again(ctx.owner, x, scale, shift)
        d_act = _pool_backward(ctx.pool, grad, act)
        d_act = aten.threshold_backward.grad_input(d_act, act, 0, grad_input=d_act)
        want = ctx.needs_input_grad[5:]
        d_x, d_w, d_b = batch_norm_backward(d_act, x, weight, mean, invstd, want[0])
        del d_act
        if d_x is not None and ctx.handoff:
            # Hand the gradient to the dense block before us in the scratch slot its backward accumulates in,
            # so it need not keep a second copy alive (the engine holds the one we return).
            d_x = scratch(ctx.owner, tuple(x.shape), x, preferred_format(x), slot=1).copy_(d_x)
        return None, None, None, None, None, d_x, d_w if want[1] else None, d_b if want[2] else None


def _pool_forward(pool: nn.Module, act: torch.Tensor) -> torch.Tensor:
    if isinstance(pool, nn.MaxPool2d):
        return _max_pool(pool, act)[0]
    return F.avg_pool2d(act, pool.kernel_size, pool.stride, 0, False, pool.count_include_pad)


def _pool_backward(pool: nn.Module, grad: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """The pooling's input gradient, a new tensor in ``act``'s layout.

    Average pooling whose windows tile the input (a transition's 2x2, stride 2) spreads ``grad / window`` over each
    window with one broadcast copy: the same values as ``avg_pool2d_backward``, which first zero-fills its
    output and then adds into it (bf16, 64 x 216 x 32 x 32, 1 thread: 8.8 ms against 18.8 ms with the ReLU's
    backward).
    """
    kernel, stride = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size)
    if isinstance(pool, nn.MaxPool2d):
        _, indices = _max_pool(pool, act)
        return aten.max_pool2d_with_indices_backward(
            grad, act, kernel, stride, _pair(pool.padding), _pair(pool.dilation), False, indices
        )
    (kh, kw), (b, c, h, w) = kernel, act.shape
    if kernel != stride or h % kh or w % kw:
        return aten.avg_pool2d_backward(grad, act, kernel, stride, [0, 0], False, pool.count_include_pad, None)
    d_act = torch.empty_like(act, memory_format=preferred_format(act))
    spread = (grad / (kh * kw)).view(b, c, h // kh, 1, w // kw, 1).expand(b, c, h // kh, kh, w // kw, kw)
    d_act.view(b, c, h // kh, kh, w // kw, kw).copy_(spread)
    return d_act


def _pair(v: int | tuple[int, ...]) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


def stem_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """conv0, then BN-ReLU-max-pool as one node that keeps only conv0's output (indices recomputed)."""
    features = model.features
    y = convolve(features.conv0, x)  # (B, 64, H/2, W/2)
    norm = features.norm0
    return _BNReLUPool.apply(model, norm, features.pool0, False, False, y, norm.weight, norm.bias)


def _max_pool(pool: nn.MaxPool2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return aten.max_pool2d_with_indices(
        x, _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size), _pair(pool.padding),
        _pair(pool.dilation), False,
    )  # fmt: skip
