"""Training batch norm on CPU in channels_last with the rows folded: PyTorch's kernels, fed a wider view.

PyTorch's channels_last batch-norm kernels on CPU (the batch statistics of the forward, the reductions of the
backward) sum each thread's rows into its own ``C``-float slice of one buffer, the slices back to back. When ``C``
is not a multiple of 16 floats (64 bytes), two threads' slices share a cache line that both write for every
row: false sharing. At 2 threads the backward then runs no faster than at 1 (DenseNet-BC-100, k = 12: most
layers' widths; ``C = 108`` even runs slower), where the NCHW kernels of torchvision's twin halve. And under bf16
the last ``C mod 32`` channels of each row take the kernels' scalar loop.

The cure needs no kernel of our own. A dense ``(B, C, H, W)`` channels_last tensor is the ``(N, C)`` matrix of its
``N = B*H*W`` rows; its ``(N/r, r*C)`` view (``r`` rows side by side, no copy) is a batch of ``r*C`` "channels"
whose statistics, summed over each group of ``r``, are the ``C`` channels' own (``mean`` the groups' mean,
``var`` the groups' variances' mean plus their means' variance; the backward's sums add). With ``r*C`` a multiple
of 16 (of 32 under bf16) no cache line is shared and no channel is left to the scalar loop. What the fold cannot
keep is the fused second pass of the backward, which needs the whole channel's sums: the input gradient is one
more BatchNorm transform and an in-place ``addcmul``, ``d_x = (coef * x + const) + a * d_y``.

Measured (``benchmarks/bn_threads.py``): bf16 ``64 x 120 x 32 x 32`` at 2 threads, forward 3.45 -> 2.57 ms, backward
6.00 -> 3.78 ms; at 1 thread a little faster too (the scalar tail), except on small tensors, where the dozen
vector operations of the fold cost more than they save (``fast_storage.FOLD_MIN_ROWS``). When to fold, by thread
count, dtype and pass, is :func:`~sedensenet.models.fast_storage.fold_factor`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sedensenet.models.fast_storage import affine_rows, aten, fold, fold_factor, update_running


def _like(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.channels_last)


def batch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel batch mean and biased variance of ``x`` (float32 for bf16/fp16 data), folded when it pays.

    ``torch.batch_norm_update_stats`` is the statistics pass of BatchNorm's training forward alone (one read of
    ``x``); float32 dummy running buffers make it accumulate and return float32 for bf16/fp16 data, as
    ``nn.BatchNorm2d`` under autocast keeps them. (``torch.var_mean`` over ``(0, 2, 3)`` takes 5-15x longer.)
    """
    r = fold_factor(x)
    c = x.shape[1]
    m = fold(x, r) if r > 1 else x
    width = m.shape[1]
    dummy_mean = torch.zeros(width, dtype=torch.float32, device=x.device) if x.dtype != torch.float64 else None
    dummy_var = torch.ones_like(dummy_mean) if dummy_mean is not None else None
    mean, var = torch.batch_norm_update_stats(m, dummy_mean, dummy_var, 0.0)
    if r == 1:
        return mean, var
    means, variances = mean.view(r, c), var.view(r, c)
    mean = means.mean(0)
    return mean, variances.mean(0) + (means - mean).square().mean(0)


def grad_sums(
    grad: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor, r: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm's weight and bias gradients, ``sum(grad * (x - mean)) * invstd`` and ``sum(grad)`` per channel.

    The reductions of BatchNorm's backward kernel alone (float32 accumulation, no product rounded to bf16), on the
    folded view when it pays (``r``: the factor, if known). ``grad`` and ``x`` dense in the same layout.
    """
    r = fold_factor(x) if r is None else r
    if r == 1 or grad.stride() != x.stride():
        _, d_w, d_b = aten.native_batch_norm_backward(grad, x, torch.ones_like(mean), None, None, mean, invstd,
                                                      True, 0.0, [False, True, True])  # fmt: skip
        return d_w, d_b
    c = x.shape[1]
    _, d_w, d_b = aten.native_batch_norm_backward(
        fold(grad, r), fold(x, r), torch.ones_like(mean).repeat(r), None, None, mean.repeat(r),
        invstd.repeat(r), True, 0.0, [False, True, True],
    )  # fmt: skip
    return d_w.view(r, c).sum(0), d_b.view(r, c).sum(0)


def batch_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` for a module the fast paths may run themselves, through the folded kernels when they apply.

    Training-mode ``nn.BatchNorm2d`` with affine parameters on a foldable tensor (:func:`fold_factor`) runs as one
    autograd node of folded kernels; anything else (eval mode, a subclass, hooks) calls the module.
    """
    if not (type(norm) is nn.BatchNorm2d and norm.training and norm.affine) or norm._forward_hooks:
        return norm(x)
    if norm._forward_pre_hooks or norm._backward_hooks or norm._backward_pre_hooks:
        return norm(x)
    r = fold_factor(x, extra_pass=True)
    if r == 1:
        return norm(x)
    return _FoldedBatchNorm.apply(norm, r, x, norm.weight, norm.bias)


class _FoldedBatchNorm(torch.autograd.Function):
    """Training batch norm (batch statistics, running averages updated as ``nn.BatchNorm2d`` does) on the
    ``(N/r, r*C)`` view; keeps ``x`` and the statistics, as BatchNorm's own backward does."""

    @staticmethod
    def forward(
        ctx: Any, norm: nn.BatchNorm2d, r: int, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            mean, var = batch_stats(x)
            b, c, h, w = x.shape
            update_running(norm, mean, var, b * h * w)
            invstd = (var + norm.eps).rsqrt()
            scale = weight * invstd
            out = affine_rows(x, scale, bias - mean * scale, _like(x), r)
        ctx.r = r
        ctx.save_for_backward(x, weight, mean, invstd)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        want = ctx.needs_input_grad
        d_x, d_w, d_b = batch_norm_backward(grad, x, weight, mean, invstd, want[2], r=ctx.r)
        return None, None, d_x, d_w if want[3] else None, d_b if want[4] else None


def batch_norm_backward(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor,
    input_grad: bool, r: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Training BatchNorm's backward: ``(d_x or None, d_weight, d_bias)``, on the folded view when it pays.

    Folded, ``d_x = a * (grad - d_b / n - (x - mean) * invstd * d_w / n)`` with ``a = weight * invstd`` is the
    affine part in ``x`` (one BatchNorm transform) plus ``a * grad`` added in place (``a`` rounded to bf16 once,
    as each product of it is).
    """
    r = fold_factor(x, extra_pass=True) if r is None else r
    if r > 1 and not grad.permute(0, 2, 3, 1).is_contiguous():  # the folded view needs x's dense row layout
        grad = grad.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    if r == 1:
        return aten.native_batch_norm_backward(grad, x, weight, None, None, mean, invstd, True, 0.0,
                                               [input_grad, True, True])  # fmt: skip
    d_w, d_b = grad_sums(grad, x, mean, invstd, r)
    if not input_grad:
        return None, d_w, d_b
    b, c, h, w = x.shape
    n = b * h * w
    a = weight * invstd
    coef = -a * invstd * d_w / n
    d_x = affine_rows(x, coef, -a * d_b / n - mean * coef, _like(x), r)
    fold(d_x, r).addcmul_(fold(grad, r), a.to(x.dtype).repeat(r))
    return d_x, d_w, d_b
