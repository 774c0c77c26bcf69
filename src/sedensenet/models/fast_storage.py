"""Scratch storage and per-channel helpers shared by the fast paths (:mod:`sedensenet.models.fast`)."""

from __future__ import annotations

import functools
import math
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sedensenet.models.cpu import slow_bf16_units

aten = torch.ops.aten


class ScratchKey:
    """Names the scratch storage that the dense blocks and transitions of one network share.

    They run one after another and use the scratch only within one call, so one storage (the size the
    largest block needs) serves them all. :func:`share_scratch` gives a network's parts one key (the network
    calls it once built); a part without one gets a key of its own on first use. The reference modules' own
    constructors know nothing of it.
    """


SCRATCH_ATTR = "_fast_scratch_key"
"""The attribute :func:`share_scratch` sets on a network's modules (plain Python state: no state-dict entry)."""


_SCRATCH: weakref.WeakKeyDictionary[ScratchKey, torch.Tensor] = weakref.WeakKeyDictionary()
_OWN_KEYS: weakref.WeakKeyDictionary[nn.Module, ScratchKey] = weakref.WeakKeyDictionary()


def share_scratch(model: nn.Module) -> ScratchKey:
    """Let every module of ``model`` share one scratch storage (its blocks and transitions run one at a time)."""
    key = ScratchKey()
    for module in model.modules():
        object.__setattr__(module, SCRATCH_ATTR, key)
    return key


FOLD_MIN_ROWS = 16384
"""Fold only tensors of at least this many rows ``B*H*W`` (BC-100's 32 px and 16 px stages at batch 64; not its
8 px stage), below which the fold's small vector operations cost more than the kernels save (bn_threads.py)."""

_LINE_FLOATS = 16  # floats per 64-byte cache line: the per-thread slices must start on one
_VECTOR = {torch.bfloat16: 32, torch.float32: 16}  # AVX-512 lanes of the kernels' vectorised loop


def fold_factor(x: torch.Tensor, extra_pass: bool = False) -> int:
    """How many rows of ``x`` to lay side by side for PyTorch's channels_last BN kernels (1: none, run as is).

    See :mod:`~sedensenet.models.fast_norm` for why. Folds bf16 and float32 CPU tensors in dense channels_last
    whose ``C`` is not a multiple of 16, of at least :data:`FOLD_MIN_ROWS` rows (divisible by the factor). At one
    thread nothing is shared, and only the scalar tail is saved: there it folds narrow tensors (``C < 16``, all
    tail), and bf16 ones for a statistics pass, the backward's sums or a transform (``extra_pass=False``), but
    not a whole BatchNorm forward or backward (``extra_pass``), whose folded input gradient takes one pass more
    (``benchmarks/bn_threads.py`` and the 1-thread rows of ``kept_block.py``).
    """
    if x.device.type != "cpu" or x.dim() != 4 or x.dtype not in _VECTOR:
        return 1
    b, c, h, w = x.shape
    rows = b * h * w
    if c % _LINE_FLOATS == 0 or rows < FOLD_MIN_ROWS or not x.permute(0, 2, 3, 1).is_contiguous():
        return 1
    if torch.get_num_threads() == 1 and c >= _LINE_FLOATS and (extra_pass or x.dtype == torch.float32):
        return 1
    lanes = _VECTOR[x.dtype]
    r = lanes // math.gcd(c, lanes)
    return r if rows % r == 0 else 1


def fold(x: torch.Tensor, r: int) -> torch.Tensor:
    """The ``(B*H*W/r, r*C)`` matrix view of a dense channels_last ``(B, C, H, W)`` tensor (no copy)."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b * h * w // r, r * c)


def preferred_format(x: torch.Tensor) -> torch.memory_format:
    """``channels_last`` when ``x`` is laid out that way (channels innermost), else the contiguous format."""
    if x.dim() == 4 and x.stride(1) == 1 and x.shape[1] > 1 and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def chan(t: torch.Tensor) -> torch.Tensor:
    """A per-channel vector as ``(1, C, 1, 1)`` for broadcasting."""
    return t.view(1, -1, 1, 1)


BF16_CONVOLUTIONS_IN_FLOAT32: bool | None = None
"""Whether training convolutions on bf16 data on CPU compute in float32 (:func:`float32_convolutions`); None:
where this CPU's bf16 units are slower than its float32 ones (:func:`sedensenet.models.cpu.slow_bf16_units`)."""


def float32_convolutions(x: torch.Tensor, weight: torch.Tensor | None = None) -> bool:
    """Whether a training convolution of the bf16 CPU tensor ``x`` (by ``weight``, when given) computes in
    float32 (from the same bf16 values).

    On CPUs whose bf16 units are slower than their float32 ones (Sapphire and Emerald Rapids without AMX:
    :data:`~sedensenet.models.cpu.SLOW_AVX512_BF16`), oneDNN's bf16 convolutions run at about half the speed of its
    float32 ones, forward and backward alike (``benchmarks/conv_precision.py``). Every product of two bf16 numbers
    is exact in float32 and oneDNN's bf16 kernels accumulate in float32 as well, so computing on the bf16 values
    in float32 and rounding the result to bf16 gives what the bf16 kernel gives, up to the order of the sums; the
    weight gradient stays in float32 (the bf16 kernel rounds it to bf16 before autocast casts it back). The
    conversions cost passes over the input (three per step: forward, backward, the input gradient), so a
    convolution with fewer than :data:`FLOAT32_MIN_OUTPUTS` outputs per input value keeps bf16 (DenseNet-BC's 1x1
    bottlenecks, 48 channels: 0.84-1.08x at 32 and 64 px), and so does inference, which has no backward to
    share them with (it measured slower).
    """
    return _in_float32(x.dtype, x.device.type, weight)


FLOAT32_MIN_OUTPUTS = 64
"""Output values per input value (out channels x kernel area) below which a bf16 convolution stays bf16 on the
slow-bf16 CPUs. Measured there, each convolution with its conversions against bf16 (forward, backward and the
conversions each timed alone, 1 thread, ``benchmarks/conv_precision.py --work convs``): 1x1 to 48 channels
(DenseNet-BC-100's bottlenecks) 0.84-1.08x at 32-64 px; 3x3 to 12 (108 per input) 1.36-1.58x; 1x1 to 128
(DenseNet-121's bottlenecks) 1.23-1.81x."""


def _in_float32(dtype: torch.dtype, device: str, weight: torch.Tensor | None = None) -> bool:
    if dtype != torch.bfloat16 or device != "cpu":
        return False
    if weight is not None and weight.shape[0] * math.prod(weight.shape[2:]) < FLOAT32_MIN_OUTPUTS:
        return False
    if BF16_CONVOLUTIONS_IN_FLOAT32 is not None:
        return BF16_CONVOLUTIONS_IN_FLOAT32
    return _slow_bf16_units()


@functools.lru_cache(maxsize=1)
def _slow_bf16_units() -> bool:
    return slow_bf16_units() is not None


def conv2d(x: torch.Tensor, conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None = None,
           training: bool = False) -> torch.Tensor:  # fmt: skip
    """``conv``'s operation with ``weight`` (and ``bias``) on ``x``; in training computed in float32 when
    :func:`float32_convolutions` says so (``weight`` already in ``x``'s dtype, as autocast casts it), a few
    images at a time (:func:`_batch_parts`)."""
    args = (conv.stride, conv.padding, conv.dilation, conv.groups)
    if not (training and float32_convolutions(x, weight)):
        return F.conv2d(x, weight, bias, *args)
    weight, bias = weight.float(), None if bias is None else bias.float()
    out = None
    for start, part in _batch_parts(x):
        y = F.conv2d(part.float(), weight, bias, *args)
        if out is None:
            out = torch.empty((x.shape[0], *y.shape[1:]), dtype=x.dtype, device=x.device,
                              memory_format=preferred_format(y))  # fmt: skip
        out[start : start + part.shape[0]].copy_(y)  # rounded to bf16 (to nearest, as the bf16 kernel rounds)
    return out


def conv2d_backward(
    grad: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, conv: nn.Conv2d, weight_grad: bool,
    input_grad: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # fmt: skip
    """Gradients of a bias-free convolution with respect to its input and (when asked) its weight; in float32
    when :func:`float32_convolutions` says so, a few images at a time (the input gradient rounded to ``inp``'s
    dtype, the weight's summed over the parts in float32)."""
    args = (list(conv.stride), list(conv.padding), list(conv.dilation), False, [0, 0], conv.groups)
    if not float32_convolutions(inp, weight):
        gi, gw, _ = aten.convolution_backward(grad, inp, weight, None, *args, [input_grad, weight_grad, False])
        return gi, gw
    weight = weight.float()
    d_x = torch.empty_like(inp, memory_format=preferred_format(inp)) if input_grad else None
    d_w = None
    for start, part in _batch_parts(inp):
        stop = start + part.shape[0]
        gi, gw, _ = aten.convolution_backward(grad[start:stop].float(), part.float(), weight, None, *args,
                                              [input_grad, weight_grad, False])  # fmt: skip
        if d_x is not None:
            d_x[start:stop].copy_(gi)
        if weight_grad:
            d_w = gw if d_w is None else d_w.add_(gw)
    return d_x, d_w


FLOAT32_PART_BYTES = 8 * 2**20
"""The float32 copy of a convolution's input is made this many bytes at a time (whole images): the copies and
the float32 results stay small (a whole DenseNet-BC-100 layer's at batch 64 would take 50 MB more at the peak)."""


def _batch_parts(x: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """(first image, slice of ``x``) for the batch split so that each part's float32 copy has at most
    :data:`FLOAT32_PART_BYTES` (one image at least)."""
    per_image = 4 * x[0].numel() if x.shape[0] else 1
    step = max(1, FLOAT32_PART_BYTES // per_image)
    return [(start, x[start : start + step]) for start in range(0, x.shape[0], step)]


def convolve(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a plain bias-free ``nn.Conv2d`` in training, as one node computing in float32 when
    :func:`float32_convolutions` says so for what autocast would give the convolution (the stem's and the
    transitions' convolutions; the dense blocks' call :func:`conv2d` themselves)."""
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    plain = type(conv) is nn.Conv2d and conv.bias is None and conv.padding_mode == "zeros"
    if not (plain and conv.training and torch.is_grad_enabled() and _in_float32(dtype, device, conv.weight)):
        return conv(x)  # (inference keeps bf16: see float32_convolutions)
    return _Float32Conv.apply(conv, x, conv.weight)


class _Float32Conv(torch.autograd.Function):
    """A bias-free convolution under bf16 (autocast's casts made explicit) computed in float32 (:func:`conv2d`)."""

    @staticmethod
    def forward(ctx: Any, conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x_low, w_low = x.to(torch.bfloat16), weight.to(torch.bfloat16)
            ctx.conv, ctx.x_dtype = conv, x.dtype
            ctx.save_for_backward(x_low, w_low)
            return conv2d(x_low, conv, w_low, training=True)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x_low, w_low = ctx.saved_tensors
        need = ctx.needs_input_grad
        gi, gw = conv2d_backward(grad.to(torch.bfloat16), x_low, w_low, ctx.conv, need[2], input_grad=need[1])
        return None, (None if gi is None else gi.to(ctx.x_dtype)), gw


def momentum(bn: nn.BatchNorm2d) -> float:
    """The running-average factor nn.BatchNorm2d would use now (and its ``num_batches_tracked`` step)."""
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            return 1.0 / float(bn.num_batches_tracked)
    return 0.0 if bn.momentum is None else float(bn.momentum)


def update_running(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
    """Running statistics as nn.BatchNorm2d updates them in training (unbiased variance)."""
    factor = momentum(bn)
    if bn.running_mean is not None and bn.running_var is not None:
        bn.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        bn.running_var.mul_(1 - factor).add_(var, alpha=factor * n / (n - 1))


def low_precision(x: torch.Tensor) -> bool:
    """Whether ``x`` is bfloat16 or float16: then statistics and per-channel arithmetic run in float32."""
    return x.dtype in (torch.bfloat16, torch.float16)


def stat_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of per-channel statistics for ``x``: float32 for bf16/fp16 data (as BatchNorm keeps them)."""
    return torch.float32 if low_precision(x) else x.dtype


def scale_shift(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x * scale + shift`` per channel (``scale``, ``shift``: vectors), into ``out`` when given.

    For bf16/fp16 ``x`` with float32 vectors it runs BatchNorm's inference kernel with zero mean and unit
    variance: the arithmetic is in float32 with one rounding to ``x``'s dtype, as ``nn.BatchNorm2d`` does under
    autocast, and it avoids a mixed-dtype elementwise kernel (~5x slower on CPU than BatchNorm's). A channel
    slice of a dense block's buffer is first copied into ``out`` and transformed there: on a slice the kernel
    takes a generic strided path 3-5x slower than the copy and the dense kernel together.
    """
    r = fold_factor(x)  # 1 for a channel slice
    if x.dtype == scale.dtype == shift.dtype and not (r > 1 and x.shape[1] < _LINE_FLOATS):
        return torch.addcmul(chan(shift), x, chan(scale), out=out)  # (float32 k-wide tensors: all scalar tail)
    if out is None:
        out = torch.empty_like(x, memory_format=preferred_format(x))
    if not dense(x):
        x = out.copy_(x)
        r = fold_factor(x)
    return affine_rows(x, scale, shift, out, r if out.stride() == x.stride() else 1)


def affine_rows(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, out: torch.Tensor, r: int) -> torch.Tensor:
    """``x * scale + shift`` per channel into ``out`` (dense), by BatchNorm's inference kernel with zero mean and
    unit variance, on the folded ``(N/r, r*C)`` views when ``r > 1`` (the fold vectorises the scalar tail)."""
    if r > 1:
        x, target, scale, shift = fold(x, r), fold(out, r), scale.repeat(r), shift.repeat(r)
    else:
        target = out
    zeros, ones = torch.zeros_like(scale), torch.ones_like(scale)
    save = scale.new_empty(0)
    aten.native_batch_norm.out(x, scale, shift, zeros, ones, False, 0.0, 0.0, out=target, save_mean=save,
                               save_invstd=save.clone())  # fmt: skip
    return out


def dense(x: torch.Tensor) -> bool:
    """Whether ``x`` is laid out densely (contiguous or channels_last), not a channel slice of a wider tensor."""
    return x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)


def scratch(owner: nn.Module, shape: tuple[int, ...], like: torch.Tensor, fmt: torch.memory_format,
             slot: int = 0) -> torch.Tensor:  # fmt: skip
    """A ``(B, C, H, W)`` tensor in layout ``fmt`` over the network's kept scratch storage (``slot`` 0 or 1).

    The storage is kept between calls (grown when too small): allocating tens of megabytes afresh each
    step costs a page fault per 4 KiB under glibc's default allocator.
    """
    b, c, h, w = shape
    size = b * c * h * w
    key = getattr(owner, SCRATCH_ATTR, None)
    if key is None:
        key = _OWN_KEYS.setdefault(owner, ScratchKey())
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
