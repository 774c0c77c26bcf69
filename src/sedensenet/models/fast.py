"""Fast paths of DenseNet: when they apply (every guard is here) and which one runs.

The reference modules in :mod:`sedensenet.models.densenet` each keep one dispatch line
(``if self.fast and fast.X_applies(self, x): return fast.forward_X(self, x)``); the rewrites live in
:mod:`~sedensenet.models.fast_memeff` (memory-efficient training), :mod:`~sedensenet.models.fast_infer`
(inference), :mod:`~sedensenet.models.fast_norm` (training batch norm in channels_last, folded) and
:mod:`~sedensenet.models.fast_storage` (the scratch storage they share), plus two exact
rewrites here: pooling before a transition's 1x1 convolution, and channels_last on CPU.

Why they exist:

The textbook dense block (the reference path of :class:`~sedensenet.models.densenet.DenseBlock`, and
torchvision's) concatenates every earlier feature map for each layer, normalises the copy, and autograd keeps
both the copy and its normalised version for backward: O(L^2) memory per block. The paths here replace it where
they win:

**Default training in channels_last on CPU** (``fast_memeff.train_block(keep=True)``; on a GPU, where it is not
measured yet, the features concatenated one layer at a time through autograd): one autograd node per block, with
the hand-written backward of memory-efficient mode but recomputing nothing. Each layer's input is concatenated one
layer at a time (a dense tensor, kept with both activations and the bottleneck output, what the reference keeps),
norm1's batch statistics are computed once per channel, and backward accumulates every channel's gradient in one
buffer: each layer adds ``a * d_z`` in place to the channels it read, the channel-wise affine rest of BatchNorm's
input gradient applied once per channel. Autograd on the reference modules would instead compute each norm1's
whole input gradient and add it to the concatenation's (3 passes over the layer's input more per layer), and with
``cat(x, f1, ..., fi)`` accumulate every earlier layer's gradient ``k`` channels wide, read out of every pixel in
channels_last (DenseNet-BC-100, k = 12, bf16: 0.72x torchvision's speed). Measured against concatenating one layer
at a time through autograd (what this replaced): bf16 DenseNet-BC-100 1.16-1.18x -> 1.23-1.25x torchvision at 1
thread, 1.06x -> 1.18-1.21x at 2; DenseNet-121 unchanged; float32 +2-5% (``benchmarks/kept_block.py``). Not
twice differentiable (``create_graph``); ``set_fast(model, False)`` runs the reference modules for that. In NCHW a
channel slice is a run of whole planes and the reference path is as fast, so it stays there.

**Training batch norm** outside the blocks (stem, transitions, the last norm) and the fast paths' batch statistics
and BN reductions go through :mod:`~sedensenet.models.fast_norm`, which folds rows so that PyTorch's channels_last
kernels scale with threads when a layer's width is not a multiple of 16.

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
shared scratch, and ``norm2`` folded into ``conv1`` (it directly follows it). An SE layer right after a dense
block scales the block's output in place (:func:`_features`).

**Transitions and the classifier's pooling in default training on CPU**: a transition is one BN-ReLU-pool node
that keeps its activation (as the reference's pooling does); average pooling's backward is one broadcast copy
(``avg_pool2d_backward`` zero-fills, then adds) and ReLU's runs in place. The classifier's pooling returns its
gradient as a broadcast view (:func:`global_pool`): PyTorch's is NCHW, and the last ReLU's backward against its
channels_last output took a strided path, 9-17x slower.

**Grayscale input** is viewed with channels_last strides (:func:`channels_last`), so one-channel networks run
the same paths as colour ones.

**Autocast** (bf16 or fp16): the paths do what the reference modules do under autocast. Convolutions run in the
autocast dtype (their weights cast to it, their gradients returned in float32), except bf16 training
convolutions on CPUs whose bf16 units are slower than their float32 ones (Sapphire and Emerald Rapids without
AMX: half the speed), which compute in float32 on the same bf16 values and round to bf16 when they have enough
outputs per input value to repay the conversions
(:func:`~sedensenet.models.fast_storage.float32_convolutions`; DenseNet-121 bf16 training 1.19x -> 1.56-1.60x
torchvision's there); ``nn.BatchNorm2d`` is on neither
of autocast's lists, so on a bf16 input it keeps float32 statistics and parameters, computes in float32 and
rounds its output to bf16: the paths compute statistics and every per-channel scale, shift and gradient
coefficient in float32 and keep the buffers (feature buffer, scratch, bottleneck outputs) in bf16. A dense
block applies only when its input already is in the autocast dtype (see :func:`_autocast_matches`).

Results equal the reference path up to float rounding (tests/perf compare outputs, gradients and running
statistics, exactly in float64, and under bf16 autocast within bf16's rounding). The fast paths step aside
whenever their assumptions do not hold: tracing,
scripting, ``torch.compile``, dispatch modes (FLOP counting), hooks on the layers, per-layer SE,
dropout in training, BN without affine parameters, any normalisation other than a plain ``nn.BatchNorm2d``
(``SyncBatchNorm`` must gather its statistics across processes itself), and gradients through a block in eval mode.
Not thread-safe per network (the scratch storage is shared): run one forward or backward of a model at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from sedensenet.models import fast_infer, fast_memeff, fast_norm
from sedensenet.models.fast_storage import ScratchKey, convolve, low_precision, preferred_format, share_scratch

if TYPE_CHECKING:
    from sedensenet.models.densenet import DenseBlock, DenseLayer, DenseNet, Transition

__all__ = [
    "ScratchKey",
    "block_applies",
    "channels_last",
    "features_applies",
    "forward_block",
    "forward_features",
    "forward_transition",
    "global_pool",
    "has_hooks",
    "plain_eager",
    "rewrites_ok",
    "share_scratch",
    "spatial_mean",
    "transition_applies",
]


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


def _plain_bn(norm: nn.Module) -> bool:
    """Exactly ``nn.BatchNorm2d`` with affine parameters: the fast paths compute its statistics themselves, which
    would silently bypass a subclass such as ``SyncBatchNorm`` (statistics gathered over every process)."""
    return type(norm) is nn.BatchNorm2d and norm.affine


def _usable_input(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_floating_point() and x.shape[0] * x.shape[2] * x.shape[3] >= 2


def _autocast_matches(x: torch.Tensor) -> bool:
    """Outside autocast always; under autocast when ``x`` already is in its dtype (as every block's input is in
    a DenseNet under autocast: the stem's convolution produces it). A float32 block input under autocast would
    make the reference promote the concatenation to float32, which the block's one-dtype buffer does not do."""
    device = x.device.type
    return not torch.is_autocast_enabled(device) or x.dtype == torch.get_autocast_dtype(device)


def spatial_mean(x: torch.Tensor, *, enabled: bool = True) -> torch.Tensor:
    """``x.mean((2, 3), keepdim=True)``, SE's squeeze, the faster way on CPU (``enabled=False``: plain ``mean``).

    - bf16/fp16 in channels_last on CPU: one batched matrix product with ones over ``(B, HW, C)`` (a view), then
      the division; ``mean``'s reduction over H and W ran at ~1 GB/s (55 ms against 7 ms for DenseNet-121's first
      block at 224 px, batch 32), which made the SE presets' inference 9-12% slower than the plain ones. The sum
      is rounded to the data's dtype before the division: within two roundings of the exact mean, not one.
    - with autograd, the backward returns ``dL/dmean / HW`` as a broadcast view instead of writing it into a new
      ``(B, C, H, W)`` tensor before the one addition (SE's backward 2x faster on BC-100's first block).

    Eager only: tracing, compiling and dispatch modes get ``mean``.
    """
    if not (enabled and x.dim() == 4 and plain_eager()):
        return x.mean((2, 3), keepdim=True)
    if torch.is_grad_enabled() and x.requires_grad:
        return _SpatialMean.apply(x)
    return _mean_hw(x)


def _mean_hw(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    if not (low_precision(x) and x.device.type == "cpu" and preferred_format(x) == torch.channels_last):
        return x.mean((2, 3), keepdim=True)
    rows = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, HW, C), a view of the channels_last data
    total = torch.bmm(x.new_ones(b, 1, h * w), rows)  # (B, 1, C), accumulated in float32 by oneDNN
    return (total.float() / (h * w)).to(x.dtype).view(b, c, 1, 1)


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, 1)``, the classifier's pooling, whose gradient is a broadcast view in training.

    On a channels_last CPU map (the fast paths' layout) PyTorch's backward writes ``dL/dy / HW`` in NCHW, and the
    last ReLU's backward on that against its channels_last output takes a strided path: 9 ms against 1 ms for
    DenseNet-BC-100's 64 x 342 x 8 x 8 (bf16, 1 thread), 10 ms against 0.5 ms for DenseNet-121 at 224 px, batch 32.
    The broadcast view holds the same values; the forward is ``adaptive_avg_pool2d`` itself.
    """
    if x.dim() == 4 and x.device.type == "cpu" and torch.is_grad_enabled() and x.requires_grad and plain_eager():
        return _SpatialMean.apply(x, True)
    return F.adaptive_avg_pool2d(x, 1)


class _SpatialMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, pooled: bool = False) -> torch.Tensor:
        ctx.shape = x.shape
        return F.adaptive_avg_pool2d(x, 1) if pooled else _mean_hw(x)  # (B, C, 1, 1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return (grad / (ctx.shape[2] * ctx.shape[3])).expand(ctx.shape), None  # a view: no (B, C, H, W) copy


def block_applies(block: DenseBlock, x: torch.Tensor) -> bool:
    """Whether a fast path applies to ``block`` on ``x`` (memory-efficient training or inference)."""
    if not plain_eager() or not _usable_input(x) or not _autocast_matches(x) or has_hooks(block):
        return False
    layers: list[DenseLayer] = list(block.values())
    if not layers:
        return False
    training = block.training
    for layer in layers:
        if hasattr(layer, "se") or (layer.drop_rate > 0 and training):
            return False
        if not (_plain_bn(layer.norm1) and _plain_bn(layer.norm2)):
            return False
        if layer.conv1.bias is not None or layer.conv2.bias is not None:
            return False
        if not layer.training == layer.norm1.training == layer.norm2.training == training:
            return False
        if training and layer.memory_efficient != layers[0].memory_efficient:
            return False
        if not training and (layer.norm1.running_mean is None or layer.norm2.running_mean is None):
            return False
    if not training:
        # The inference path writes into a buffer in place, which autograd cannot follow.
        return not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in block.parameters())))
    return layers[0].memory_efficient or preferred_format(x) == torch.channels_last


def forward_block(block: DenseBlock, x: torch.Tensor) -> torch.Tensor:
    """The block's output ``(B, C_in + L*k, H, W)`` through the fast path (after :func:`block_applies`)."""
    if not block.training:
        return fast_infer.eval_block(block, x)
    memory_efficient = next(iter(block.values())).memory_efficient
    if not memory_efficient and x.device.type != "cpu":
        return _incremental_block(block, x)
    return fast_memeff.train_block(block, x, keep=not memory_efficient)


def _incremental_block(block: DenseBlock, x: torch.Tensor) -> torch.Tensor:
    """Default training off the CPU: the layers' own modules, the features concatenated one layer at a time.

    ``cat(cat(x, f1), f2)`` makes autograd accumulate each layer's input gradient once, over a whole prefix,
    instead of ``k`` channels wide per later layer. On CPU the kept block replaced it (measured there); on a GPU
    it stays until the kept block is measured on one.
    """
    features = x
    for layer in block.values():
        new = layer.conv2(layer.relu2(layer.norm2(layer.conv1(layer.relu1(layer.norm1(features))))))  # (B, k, H, W)
        features = torch.cat([features, new], 1)  # (B, C + k, H, W)
    return features


def transition_applies(transition: Transition, x: torch.Tensor) -> bool:
    """Whether a transition may pool before its 1x1 convolution (no SE between them, no hooks, a plain conv)."""
    conv = transition.conv
    plain = conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.bias is None and conv.padding == (0, 0)
    return plain and "se" not in transition._modules and rewrites_ok() and not has_hooks(transition)


def forward_transition(transition: Transition, x: torch.Tensor) -> torch.Tensor:
    """Pool first, then the 1x1 convolution on H/2 x W/2; in training BN-ReLU-pool as one node where it applies
    (memory-efficient mode; default training in channels_last on CPU, where it keeps the activation)."""
    if _fused_transition(transition, x):
        if transition.memory_efficient:
            return fast_memeff.transition_forward(transition, x)
        if x.device.type == "cpu" and preferred_format(x) == torch.channels_last:
            return fast_memeff.transition_forward(transition, x, keep=True)
    pooled = transition.pool(transition.relu(fast_norm.batch_norm(transition.norm, x)))
    return convolve(transition.conv, pooled)


def _fused_transition(transition: Transition, x: torch.Tensor) -> bool:
    """Whether the BN-ReLU-pool node applies to a transition in training."""
    norm, pool = transition.norm, transition.pool
    if not (transition.training and norm.training and _plain_bn(norm) and plain_eager() and _usable_input(x)):
        return False
    if has_hooks(transition) or not torch.is_grad_enabled() or type(transition.relu) is not nn.ReLU:
        return False
    return isinstance(pool, nn.AvgPool2d) and pool.padding == 0 and not pool.ceil_mode and pool.divisor_override is None


def features_applies(model: DenseNet, x: torch.Tensor) -> bool:
    """Whether :func:`forward_features` has anything to add: channels_last on CPU, or the memory-efficient stem."""
    return plain_eager() and (x.device.type == "cpu" or _memory_efficient_stem(model, x))


def forward_features(model: DenseNet, x: torch.Tensor) -> torch.Tensor:
    """``model.features`` in channels_last on CPU (oneDNN's preferred layout), with the memory-efficient stem."""
    if x.device.type == "cpu":
        x = channels_last(x)
    if not _memory_efficient_stem(model, x):
        return _features(model.features, x)
    x = fast_memeff.stem_forward(model, x)  # conv0 + norm0/relu0/pool0 keeping only conv0's output
    for name, module in model.features.named_children():
        if name not in ("conv0", "norm0", "relu0", "pool0"):
            x = module(x)
    return x


def _features(features: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``features(x)``, its batch norms in training through :func:`fast_norm.batch_norm`; without autograd, an SE
    layer right after a dense block scales the block's output in place.

    A dense block's output is a new tensor nothing else holds (unless a hook took it: then, and for SE layers with
    hooks, such as ``explain``'s on ``se.gate``, every module runs as usual), so SE's product can overwrite it:
    no new ``(B, C, H, W)`` tensor per SE layer.
    """
    if has_hooks(features):
        return features(x)
    in_place = not torch.is_grad_enabled()
    after_block = False
    for module in features:
        if in_place and after_block and hasattr(module, "scale_") and getattr(module, "fast", False):
            x = module.scale_(x)
        else:
            x = _stage(module, x)
        after_block = getattr(module, "fresh_output", False)
    return x


def _stage(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, a batch norm through :func:`fast_norm.batch_norm`, the stem's convolution through
    :func:`~sedensenet.models.fast_storage.convolve`."""
    if isinstance(module, nn.BatchNorm2d):
        return fast_norm.batch_norm(module, x)
    return convolve(module, x) if isinstance(module, nn.Conv2d) else module(x)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, H, W) with channels_last strides, also for one channel (grayscale: X-rays, CT, the digits).

    For ``C = 1`` both layouts hold the same bytes, and ``x.contiguous(memory_format=torch.channels_last)`` keeps
    the NCHW strides; oneDNN then picks NCHW for the stem's output, and every layer after it runs NCHW: no
    channels_last convolutions, and default training on the reference block (the main job's SE-DenseNet-BC-100
    trained 1.14-1.28x and predicted 1.26-1.49x slower: ``benchmarks/grayscale.py``). A view with the
    channels_last strides (no copy) makes the stem write channels_last as for a colour image.
    """
    if x.dim() != 4 or x.shape[1] != 1:
        return x.contiguous(memory_format=torch.channels_last)
    b, _, h, w = x.shape
    return x.contiguous().view(b, h, w, 1).permute(0, 3, 1, 2)


def _memory_efficient_stem(model: DenseNet, x: torch.Tensor) -> bool:
    """Whether the memory-efficient BN-ReLU-max-pool node applies to the ImageNet stem in training."""
    features, names = model.features, ("conv0", "norm0", "relu0", "pool0")
    if not (model.config.memory_efficient and model.training) or not all(n in features._modules for n in names):
        return False
    norm, pool = features.norm0, features.pool0
    if not (norm.training and _plain_bn(norm) and plain_eager() and torch.is_grad_enabled()):
        return False
    if any(has_hooks(features._modules[n]) for n in names):
        return False
    if features._forward_hooks or features._forward_pre_hooks or features._backward_hooks:
        return False  # the stem path calls the children itself, so hooks on the container would not run
    return isinstance(pool, nn.MaxPool2d) and pool.dilation == 1 and not pool.ceil_mode and not pool.return_indices
