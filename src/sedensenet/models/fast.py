"""Fast paths of the dense block: shared storage for memory-efficient training, one buffer for inference.

The textbook dense block (the reference path of :class:`~sedensenet.models.densenet.DenseBlock`, and
torchvision's) concatenates every earlier feature map for each layer, normalises the copy, and autograd keeps
both the copy and its normalised version for backward: O(L^2) memory per block. On CPU in channels_last
layout that path is also the fastest one we measured for training, so it stays the default. The two paths
here replace it where they win:

**Memory-efficient training** (``memory_efficient=True``), after Pleiss et al. 2017, "Memory-Efficient
Implementation of DenseNets" (its shared-storage variant, not checkpointing: only the cheapest convolutions, the
early layers' 1x1 bottlenecks, are recomputed):

- the block owns one buffer ``(B, C_in + L*k, H, W)``; layer ``i`` reads the channels before it as a view
  and writes its ``k`` new channels into the next slice: no concatenation, and the buffer *is* the output;
- the batch mean and variance of a channel are computed once, when it is written: every later ``norm1``
  would compute the same statistics from the same values;
- ``norm1`` + ReLU write into one scratch buffer shared by all layers (and kept between steps, so glibc does
  not map fresh pages each time), and are recomputed in backward; ``norm2`` + ReLU are recomputed from the
  saved bottleneck output. What is kept per layer: the bottleneck output (``bn_size * k`` channels), except in
  the early layers, where recomputing it costs no more than the 3x3 convolution (:data:`RECOMPUTE_WIDTH`);
- backward walks the layers in reverse, accumulating the buffer's gradient in place; the parts of BN's input
  gradient that are affine in the input per channel are summed as vectors and applied once per channel;
- the stem's BN + ReLU + max-pool and each transition's BN + ReLU + average-pool are single nodes as well,
  keeping only their input (which is kept anyway) and recomputing the rest into the same scratch storage.

**Inference** (eval mode without autograd): the same buffer, ``norm1`` from running statistics into the
shared scratch, and ``norm2`` folded into ``conv1`` (it directly follows it).

Results equal the reference path up to float rounding (tests/perf compare outputs, gradients and running
statistics, exactly in float64). The fast paths step aside whenever their assumptions do not hold: tracing,
scripting, ``torch.compile``, dispatch modes (FLOP counting), autocast, hooks on the layers, per-layer SE,
dropout in training, BN without affine parameters, and gradients through a block in eval mode.
Not thread-safe per network (the scratch storage is shared): run one forward or backward of a model at a time.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

if TYPE_CHECKING:
    from sedensenet.models.densenet import DenseBlock, DenseLayer

_aten = torch.ops.aten


class ScratchKey:
    """Names the scratch storage that the dense blocks and transitions of one network share.

    They run one after another and use the scratch only within one call, so one storage (the size the
    largest block needs) serves them all. :class:`~sedensenet.models.densenet.DenseNet` gives its parts one key;
    a block used on its own gets its own.
    """


_SCRATCH: weakref.WeakKeyDictionary[ScratchKey, torch.Tensor] = weakref.WeakKeyDictionary()


def plain_eager() -> bool:
    """True when ops run eagerly on real tensors: not traced, scripted, compiled or under a dispatch mode."""
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return _get_current_dispatch_mode() is None


def rewrites_ok() -> bool:
    """True when exact graph rewrites (pooling before a transition's convolution) may be used.

    They are fine for eager, tracing (ONNX export) and torch.compile, but not under a dispatch mode such as
    FLOP counting, where the caller wants the textbook network's operations.
    """
    if torch.jit.is_scripting():
        return False
    if torch.compiler.is_compiling():
        return True
    return _get_current_dispatch_mode() is None


def has_hooks(module: nn.Module) -> bool:
    """Whether ``module`` or a descendant has hooks (they would not run when the fast path bypasses them)."""
    glob = nn.modules.module
    if glob._global_forward_hooks or glob._global_forward_pre_hooks or glob._global_backward_hooks:
        return True
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks for m in module.modules()
    )


def preferred_format(x: torch.Tensor) -> torch.memory_format:
    """``channels_last`` when ``x`` is laid out that way (channels innermost), else the contiguous format."""
    if x.dim() == 4 and x.stride(1) == 1 and x.shape[1] > 1 and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def block_supported(block: DenseBlock, x: torch.Tensor) -> bool:
    """Whether a fast path applies to ``block`` on ``x`` (memory-efficient training or inference)."""
    if not plain_eager() or x.dim() != 4 or not x.is_floating_point() or x.shape[0] * x.shape[2] * x.shape[3] < 2:
        return False
    if torch.is_autocast_enabled(x.device.type) or has_hooks(block):
        return False
    layers: list[DenseLayer] = list(block.values())
    if not layers:
        return False
    training = block.training
    for layer in layers:
        if (
            hasattr(layer, "se")
            or (layer.drop_rate > 0 and training)
            or not (layer.norm1.affine and layer.norm2.affine)
        ):
            return False
        if layer.conv1.bias is not None or layer.conv2.bias is not None:
            return False
        if not layer.training == layer.norm1.training == layer.norm2.training == training:
            return False
        if training and not layer.memory_efficient:
            return False  # default training: the reference path is the fastest (see the module doc)
        if not training and (layer.norm1.running_mean is None or layer.norm2.running_mean is None):
            return False
    if not training:
        # The inference path writes into a buffer in place, which autograd cannot follow.
        return not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in block.parameters())))
    return True


def dense_block_forward(block: DenseBlock, x: torch.Tensor) -> torch.Tensor:
    """The block's output ``(B, C_in + L*k, H, W)`` through the fast path (see the module doc)."""
    layers: list[DenseLayer] = list(block.values())
    if not block.training:
        return _eval_forward(block, layers, x)
    params = [t for layer in layers for t in _layer_params(layer)]
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return _SharedStorageBlock.apply(block, x, *params)
    return _train_forward(block, x, params, saved=None)[0]


def _layer_params(layer: DenseLayer) -> tuple[torch.Tensor, ...]:
    return (layer.norm1.weight, layer.norm1.bias, layer.conv1.weight, layer.norm2.weight, layer.norm2.bias,
            layer.conv2.weight)  # fmt: skip


def _v(t: torch.Tensor) -> torch.Tensor:
    """A per-channel vector as ``(1, C, 1, 1)`` for broadcasting."""
    return t.view(1, -1, 1, 1)


def _conv(x: torch.Tensor, conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _conv_backward(
    grad: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, conv: nn.Conv2d, weight_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of a bias-free convolution with respect to its input and (when asked) its weight."""
    gi, gw, _ = _aten.convolution_backward(
        grad, inp, weight, None, list(conv.stride), list(conv.padding), list(conv.dilation), False, [0, 0],
        conv.groups, [True, weight_grad, False],
    )  # fmt: skip
    return gi, gw


def _momentum(bn: nn.BatchNorm2d) -> float:
    """The running-average factor nn.BatchNorm2d would use now (and its ``num_batches_tracked`` step)."""
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            return 1.0 / float(bn.num_batches_tracked)
    return 0.0 if bn.momentum is None else float(bn.momentum)


def _update_running(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
    """Running statistics as nn.BatchNorm2d updates them in training (unbiased variance)."""
    factor = _momentum(bn)
    if bn.running_mean is not None and bn.running_var is not None:
        bn.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        bn.running_var.mul_(1 - factor).add_(var, alpha=factor * n / (n - 1))


def _batch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel batch mean and biased variance, through BatchNorm's own statistics kernel.

    (``torch.var_mean`` over ``(0, 2, 3)`` takes 5-15x longer on CPU; ``eps=0`` makes ``var = invstd**-2``.)
    """
    _, mean, invstd = _aten.native_batch_norm(x, None, None, None, None, True, 0.0, 0.0)
    return mean, invstd.pow(-2)


def _scratch(owner: nn.Module, shape: tuple[int, ...], like: torch.Tensor, fmt: torch.memory_format,
             slot: int = 0) -> torch.Tensor:  # fmt: skip
    """A ``(B, C, H, W)`` tensor in layout ``fmt`` over the network's kept scratch storage (``slot`` 0 or 1).

    The storage is kept between calls (grown when too small): allocating tens of megabytes afresh each
    step costs a page fault per 4 KiB under glibc's default allocator.
    """
    b, c, h, w = shape
    size = b * c * h * w
    key = owner.__dict__.get("scratch_key")
    if key is None:
        key = owner.__dict__["scratch_key"] = ScratchKey()
    kept = _SCRATCH.get(key)
    if (
        kept is None
        or kept.shape[0] < 2
        or kept.shape[1] < size
        or kept.dtype != like.dtype
        or kept.device != like.device
    ):
        old = kept.shape[1] if kept is not None and kept.dtype == like.dtype and kept.device == like.device else 0
        kept = torch.empty((2, max(size, old)), dtype=like.dtype, device=like.device)
        _SCRATCH[key] = kept
    flat = kept[slot, :size]
    if fmt == torch.channels_last:
        return flat.view(b, h, w, c).permute(0, 3, 1, 2)
    return flat.view(b, c, h, w)


def _train_forward(
    block: DenseBlock, x: torch.Tensor, params: list[torch.Tensor] | tuple[torch.Tensor, ...],
    saved: list[tuple[torch.Tensor, ...]] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Training-mode forward with batch statistics; returns the buffer and every channel's mean and variance.

    When ``saved`` is a list, each layer appends what its backward needs: the bottleneck output ``y1``, its
    batch mean and inverse std, and norm1's per-channel scale and shift.
    """
    layers: list[DenseLayer] = list(block.values())
    b, c0, h, w = x.shape
    k = layers[0].conv2.out_channels
    total = c0 + len(layers) * k
    n = b * h * w
    fmt = preferred_format(x)
    buf = torch.empty((b, total, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
    buf[:, :c0].copy_(x)
    mean = torch.empty(total, dtype=x.dtype, device=x.device)
    var = torch.empty_like(mean)
    mean[:c0], var[:c0] = _batch_stats(x)
    _scratch(block, (b, total, h, w), x, fmt)  # reserve once: backward's gradient needs the whole width
    for i, layer in enumerate(layers):
        c = c0 + i * k
        g1, b1, w1, g2, b2, w2 = params[6 * i : 6 * i + 6]
        scale1 = g1 * (var[:c] + layer.norm1.eps).rsqrt()
        shift1 = b1 - mean[:c] * scale1
        _update_running(layer.norm1, mean[:c], var[:c], n)
        act1 = _scratch(block, (b, c, h, w), x, fmt)
        torch.addcmul(_v(shift1), buf[:, :c], _v(scale1), out=act1).relu_()  # norm1 + relu1: (B, c, H, W)
        y1 = _conv(act1, layer.conv1, w1)  # (B, bn_size*k, H, W)
        n2 = layer.norm2
        act2, mean2, invstd2 = _aten.native_batch_norm(
            y1, g2, b2, n2.running_mean, n2.running_var, True, _momentum(n2), n2.eps
        )
        y2 = _conv(act2.relu_(), layer.conv2, w2)  # (B, k, H, W)
        del act2
        buf[:, c : c + k].copy_(y2)
        mean[c : c + k], var[c : c + k] = _batch_stats(y2)
        if saved is not None:
            saved.append((None if recompute_bottleneck(layer, c) else y1, mean2, invstd2, scale1, shift1))
    return buf, mean, var


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
    def forward(ctx: Any, block: DenseBlock, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        saved: list[tuple[torch.Tensor, ...]] = []
        buf, mean, var = _train_forward(block, x, params, saved)
        ctx.block, ctx.c0, ctx.fmt, ctx.layer_saved = block, x.shape[1], preferred_format(x), saved
        ctx.save_for_backward(buf, mean, var, *params)
        return buf

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        buf, mean, var, *params = ctx.saved_tensors
        layers: list[DenseLayer] = list(ctx.block.values())
        fmt, c0 = ctx.fmt, ctx.c0
        b, total, h, w = buf.shape
        k = layers[0].conv2.out_channels
        n = b * h * w
        grad = _scratch(ctx.block, (b, total, h, w), buf, fmt, slot=1)  # d(buf), accumulated in place
        if grad.data_ptr() != grad_out.data_ptr() or grad.stride() != grad_out.stride():
            grad.copy_(grad_out)  # (a transition in memory-efficient mode hands it over in place already)
        # The per-channel affine part of every norm1's input gradient, summed over the layers that read the
        # channel: d(buf)[c] += coef[c] * (buf[c] - mean[c]) + const[c], applied once the channel is complete.
        coef = torch.zeros(total, dtype=buf.dtype, device=buf.device)
        const = torch.zeros_like(coef)
        eps = {layer.norm1.eps for layer in layers}
        invstd = (var + eps.pop()).rsqrt() if len(eps) == 1 else None
        needs = ctx.needs_input_grad
        grads: list[torch.Tensor | None] = [None] * len(params)
        for i in reversed(range(len(layers))):
            layer, (y1, mean2, invstd2, scale1, shift1) = layers[i], ctx.layer_saved[i]
            c = c0 + i * k
            g1, _, w1, g2, b2, w2 = params[6 * i : 6 * i + 6]
            want = needs[2 + 6 * i : 2 + 6 * i + 6]
            # This layer's k new channels now have their whole gradient.
            d_y2 = torch.addcmul(
                grad[:, c : c + k] + _v(const[c : c + k]), buf[:, c : c + k] - _v(mean[c : c + k]), _v(coef[c : c + k])
            ).contiguous(memory_format=fmt)
            x_in = buf[:, :c]
            act1 = _scratch(ctx.block, (b, c, h, w), buf, fmt)  # norm1 + relu1, recomputed into the scratch
            torch.addcmul(_v(shift1), x_in, _v(scale1), out=act1).relu_()
            if y1 is None:
                y1 = _conv(act1, layer.conv1, w1)  # the same operation on the same values: bitwise the same
            scale2 = g2 * invstd2  # norm2 + relu2, recomputed from the bottleneck output
            act2 = torch.addcmul(_v(b2 - mean2 * scale2), y1, _v(scale2)).relu_()
            d_act2, d_w2 = _conv_backward(d_y2, act2, w2, layer.conv2, want[5])
            d_z2 = _aten.threshold_backward.grad_input(d_act2, act2, 0, grad_input=d_act2)
            del act2
            d_y1, d_g2, d_b2 = _aten.native_batch_norm_backward(
                d_z2, y1, g2, None, None, mean2, invstd2, True, layer.norm2.eps, [True, want[3], want[4]]
            )
            del d_z2, d_act2, y1
            d_act1, d_w1 = _conv_backward(d_y1, act1, w1, layer.conv1, want[2])
            del d_y1
            d_z1 = _aten.threshold_backward.grad_input(d_act1, act1, 0, grad_input=d_act1)  # (B, c, H, W)
            # BatchNorm backward with the shared statistics: d_x = a * d_z + coef_i * (x - mean) + const_i,
            # where a = g * invstd, coef_i = -a * invstd * d_gamma / n and const_i = -a * d_beta / n.
            invstd1 = invstd[:c] if invstd is not None else (var[:c] + layer.norm1.eps).rsqrt()
            d_b1 = d_z1.sum((0, 2, 3))
            product = torch.mul(d_z1, x_in, out=act1)  # the scratch is free again
            d_g1 = (product.sum((0, 2, 3)) - mean[:c] * d_b1) * invstd1
            del product, act1
            a = g1 * invstd1
            grad[:, :c].addcmul_(d_z1, _v(a))
            del d_z1, d_act1
            coef[:c] -= a * invstd1 * d_g1 / n
            const[:c] -= a * d_b1 / n
            grads[6 * i : 6 * i + 6] = [d_g1 if want[0] else None, d_b1 if want[1] else None, d_w1, d_g2, d_b2, d_w2]
        d_x = None
        if needs[1]:
            d_x = torch.addcmul(grad[:, :c0] + _v(const[:c0]), buf[:, :c0] - _v(mean[:c0]), _v(coef[:c0]))
        return (None, d_x, *grads)


def _eval_forward(block: DenseBlock, layers: list[DenseLayer], x: torch.Tensor) -> torch.Tensor:
    """Eval-mode forward with running statistics, no autograd: the buffer, and norm2 folded into conv1."""
    b, c0, h, w = x.shape
    k = layers[0].conv2.out_channels
    fmt = preferred_format(x)
    buf = torch.empty((b, c0 + len(layers) * k, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
    buf[:, :c0].copy_(x)
    _scratch(block, (b, c0 + (len(layers) - 1) * k, h, w), x, fmt)
    for i, layer in enumerate(layers):
        c = c0 + i * k
        n1, n2 = layer.norm1, layer.norm2
        scale1 = n1.weight * (n1.running_var + n1.eps).rsqrt()
        act1 = _scratch(block, (b, c, h, w), x, fmt)
        torch.addcmul(_v(n1.bias - n1.running_mean * scale1), buf[:, :c], _v(scale1), out=act1).relu_()
        # norm2 directly follows conv1: fold it into conv1's weight and a bias (exact up to rounding).
        scale2 = n2.weight * (n2.running_var + n2.eps).rsqrt()
        weight1 = layer.conv1.weight * scale2.view(-1, 1, 1, 1)
        y1 = _conv(act1, layer.conv1, weight1, n2.bias - n2.running_mean * scale2).relu_()
        buf[:, c : c + k].copy_(_conv(y1, layer.conv2, layer.conv2.weight))
    return buf


def transition_supported(transition: nn.Module, x: torch.Tensor) -> bool:
    """Whether the memory-efficient BN-ReLU-pool node applies to a transition in training."""
    norm, pool = transition.norm, transition.pool
    if not (transition.training and norm.training and norm.affine and plain_eager()):
        return False
    if x.dim() != 4 or not x.is_floating_point() or x.shape[0] * x.shape[2] * x.shape[3] < 2:
        return False
    if torch.is_autocast_enabled(x.device.type) or has_hooks(transition) or not torch.is_grad_enabled():
        return False
    return isinstance(pool, nn.AvgPool2d) and pool.padding == 0 and not pool.ceil_mode and pool.divisor_override is None


def transition_forward(transition: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """BN-ReLU-AvgPool as one node that keeps nothing but its (already kept) input, then the 1x1 convolution."""
    norm = transition.norm
    pooled = _BNReLUPool.apply(transition, norm, transition.pool, True, x, norm.weight, norm.bias)
    return transition.conv(pooled)  # (B, C_out, H/2, W/2): pooling first is exact for a 1x1 convolution


def _bn_relu_forward(owner: nn.Module, bn: nn.BatchNorm2d, x: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:  # fmt: skip
    """Training BN (batch statistics, running averages updated) + ReLU of ``x`` into the owner's scratch.

    Returns the activation and ``(mean, invstd, scale, shift)``, which :func:`_bn_relu_again` needs.
    """
    mean, var = _batch_stats(x)
    _update_running(bn, mean, var, x.shape[0] * x.shape[2] * x.shape[3])
    invstd = (var + bn.eps).rsqrt()
    scale = weight * invstd
    shift = bias - mean * scale
    return _bn_relu_again(owner, x, scale, shift), (mean, invstd, scale, shift)


def _bn_relu_again(owner: nn.Module, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``relu(x * scale + shift)`` per channel into the owner's scratch (the forward's values, recomputed)."""
    act = _scratch(owner, tuple(x.shape), x, preferred_format(x))
    return torch.addcmul(_v(shift), x, _v(scale), out=act).relu_()


class _BNReLUPool(torch.autograd.Function):
    """BN + ReLU + pooling (a transition's average pooling or the stem's max pooling) as one node that keeps only
    its input: BN + ReLU, and max pooling's indices, are recomputed in backward into the owner's scratch."""

    @staticmethod
    def forward(
        ctx: Any, owner: nn.Module, bn: nn.BatchNorm2d, pool: nn.Module, handoff: bool, x: torch.Tensor,
        weight: torch.Tensor, bias: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        act, stats = _bn_relu_forward(owner, bn, x, weight, bias)  # (B, C, H, W)
        ctx.owner, ctx.bn, ctx.pool, ctx.handoff = owner, bn, pool, handoff
        ctx.save_for_backward(x, weight, *stats)
        return _pool_forward(pool, act)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, mean, invstd, scale, shift = ctx.saved_tensors
        act = _bn_relu_again(ctx.owner, x, scale, shift)
        d_act = _pool_backward(ctx.pool, grad, act)
        d_act = _aten.threshold_backward.grad_input(d_act, act, 0, grad_input=d_act)
        want = ctx.needs_input_grad[4:]
        d_x, d_w, d_b = _aten.native_batch_norm_backward(
            d_act, x, weight, None, None, mean, invstd, True, ctx.bn.eps, list(want)
        )
        del d_act
        if d_x is not None and ctx.handoff:
            # Hand the gradient to the dense block before us in the scratch slot its backward accumulates in,
            # so it need not keep a second copy alive (the engine holds the one we return).
            d_x = _scratch(ctx.owner, tuple(x.shape), x, preferred_format(x), slot=1).copy_(d_x)
        return None, None, None, None, d_x, d_w, d_b


def _pool_forward(pool: nn.Module, act: torch.Tensor) -> torch.Tensor:
    if isinstance(pool, nn.MaxPool2d):
        return _max_pool(pool, act)[0]
    return F.avg_pool2d(act, pool.kernel_size, pool.stride, 0, False, pool.count_include_pad)


def _pool_backward(pool: nn.Module, grad: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    kernel, stride = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size)
    if isinstance(pool, nn.MaxPool2d):
        _, indices = _max_pool(pool, act)
        return _aten.max_pool2d_with_indices_backward(
            grad, act, kernel, stride, _pair(pool.padding), _pair(pool.dilation), False, indices
        )
    return _aten.avg_pool2d_backward(grad, act, kernel, stride, [0, 0], False, pool.count_include_pad, None)


def _pair(v: int | tuple[int, ...]) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


def stem_supported(features: nn.Module, x: torch.Tensor) -> bool:
    """Whether the memory-efficient BN-ReLU-max-pool node applies to the ImageNet stem in training."""
    names = ("conv0", "norm0", "relu0", "pool0")
    if not all(n in features._modules for n in names):
        return False
    norm, pool = features.norm0, features.pool0
    if not (norm.training and norm.affine and plain_eager() and torch.is_grad_enabled()):
        return False
    if torch.is_autocast_enabled(x.device.type) or any(has_hooks(features._modules[n]) for n in names):
        return False
    if features._forward_hooks or features._forward_pre_hooks or features._backward_hooks:
        return False  # the stem path calls the children itself, so hooks on the container would not run
    return isinstance(pool, nn.MaxPool2d) and pool.dilation == 1 and not pool.ceil_mode and not pool.return_indices


def stem_forward(features: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """conv0, then BN-ReLU-max-pool as one node that keeps only conv0's output (indices recomputed)."""
    y = features.conv0(x)  # (B, 64, H/2, W/2)
    norm = features.norm0
    return _BNReLUPool.apply(features, norm, features.pool0, False, y, norm.weight, norm.bias)


def _max_pool(pool: nn.MaxPool2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _aten.max_pool2d_with_indices(
        x, _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size), _pair(pool.padding),
        _pair(pool.dilation), False,
    )  # fmt: skip
