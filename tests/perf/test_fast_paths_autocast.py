"""The fast paths under autocast (bf16 and fp16) against the reference modules under the same autocast.

Tolerances. bf16 keeps 8 significant bits: one rounding errs by at most u = 2^-9 relative, and each operation
of a path rounds its result once (convolutions accumulate in float32 and round once; BatchNorm computes in
float32 and rounds its output once). Two paths that order their roundings differently therefore differ, per
rounded stage, by about u relative to the values' scale, and the stages add up (partly cancelling) through the
network. So tensors are compared by the norm of their difference relative to the reference's norm (a max-norm
test would be decided by the one ReLU input within rounding distance of zero that flips), at
``STAGES * u``, where STAGES counts the rounded stages on the longest path: a dense block of L layers rounds
BN, conv1, BN, conv2 per layer. Whole networks in training mode are compared against float64 instead: batch
statistics over a tiny batch make a deep bf16 network's gradients far from exact for *both* paths (the
reference's own bf16 gradients of keras_se_densenet121 at batch 8, 64 px differ from float64 by ~70% in norm),
so the fast path must be as accurate as the reference: its error to float64 at most 1.25x the reference's
(plus 2u for small errors).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sedensenet import DenseNet, create_model
from sedensenet.models import DenseBlock
from sedensenet.models.densenet import set_fast

U_BF16 = 2.0**-9
U_FP16 = 2.0**-12  # float16 keeps 11 significant bits (its range, not its precision, is the risk)


def _tiny(memory_efficient: bool) -> DenseNet:
    return DenseNet(
        growth_rate=4, block_config=(2, 3), num_init_features=8, bn_size=2, stem="imagenet",
        se_placement=("head", "block"), se_rd_channels=2, num_classes=3, memory_efficient=memory_efficient,
    )  # fmt: skip


MODELS = {
    "tiny_imagenet_stem": (_tiny, 48),
    "keras_se_densenet121": (lambda me: create_model("keras_se_densenet121", num_classes=2, memory_efficient=me), 64),
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|`` in the 2-norm, in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def _step(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """One training forward/backward (under autocast to ``dtype`` when given): output, input and weight grads."""
    model.train()
    model.zero_grad()
    xg = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = model(xg)
    (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = torch.cat([p.grad.flatten().double() for p in model.parameters() if p.grad is not None])
    return {"out": out.detach(), "dx": xg.grad.detach(), "grads": grads}


def _block_pair(memory_efficient: bool) -> tuple[DenseBlock, DenseBlock]:
    """(reference, fast) with the same weights; the reference is the plain path (its memory-efficient variant,
    torch.utils.checkpoint, runs norm1 twice per step and so moves the running statistics twice)."""
    torch.manual_seed(0)
    fast = DenseBlock(num_layers=4, num_input_features=16, growth_rate=8, bn_size=4, memory_efficient=memory_efficient)
    ref = DenseBlock(num_layers=4, num_input_features=16, growth_rate=8, bn_size=4)
    ref.load_state_dict(fast.state_dict())
    set_fast(ref, False)
    return ref, fast


@pytest.mark.parametrize(("dtype", "u"), [(torch.bfloat16, U_BF16), (torch.float16, U_FP16)], ids=["bf16", "fp16"])
def test_memory_efficient_block_under_autocast_matches_reference(dtype: torch.dtype, u: float) -> None:
    """The shared-storage block's forward and hand-written backward in bf16/fp16 against nn modules under autocast."""
    ref, fast = _block_pair(memory_efficient=True)
    x = torch.randn(8, 16, 10, 10).to(dtype).contiguous(memory_format=torch.channels_last)
    results = [_step(m, x, dtype) for m in (ref, fast)]
    stages = 4 * len(fast)  # BN, conv1, BN, conv2 per layer
    for key in ("out", "dx", "grads"):
        assert results[1][key].dtype == results[0][key].dtype, key
        assert _rel(results[1][key], results[0][key]) <= stages * u, key
    assert results[1]["out"].dtype == dtype  # the buffer stays in the autocast dtype
    for (name, b_ref), b_fast in zip(ref.named_buffers(), fast.buffers(), strict=True):
        assert b_fast.dtype == b_ref.dtype, name  # running statistics stay float32
        if b_ref.is_floating_point():
            assert _rel(b_fast, b_ref) <= stages * u, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_inference_block_under_autocast_matches_reference(dtype: torch.dtype) -> None:
    ref, fast = _block_pair(memory_efficient=False)
    for m in (ref, fast):
        for p in m.parameters():
            p.requires_grad_(False)
        m.eval()
    x = torch.randn(8, 16, 10, 10).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        out_ref, out_fast = ref(x), fast(x)
    assert out_fast.dtype == out_ref.dtype == dtype
    u = U_BF16 if dtype == torch.bfloat16 else U_FP16
    assert _rel(out_fast, out_ref) <= 4 * len(fast) * u


@pytest.mark.parametrize("memory_efficient", [False, True], ids=["default", "memory_efficient"])
@pytest.mark.parametrize("name", list(MODELS))
def test_network_under_bf16_autocast_is_as_accurate_as_reference(name: str, memory_efficient: bool) -> None:
    make, size = MODELS[name]
    torch.manual_seed(0)
    fast = make(memory_efficient)
    ref = make(False)
    ref.load_state_dict(fast.state_dict())
    set_fast(ref, False)
    exact = copy.deepcopy(ref).double()
    x = torch.randn(8, 3, size, size)
    want = _step(exact, x.double(), None)
    got_ref, got_fast = _step(ref, x, torch.bfloat16), _step(fast, x, torch.bfloat16)
    for key in ("out", "dx", "grads"):
        err_ref, err_fast = _rel(got_ref[key], want[key]), _rel(got_fast[key], want[key])
        assert err_fast <= 1.25 * err_ref + 2 * U_BF16, (key, err_fast, err_ref)
    exact.load_state_dict(ref.state_dict())  # the running statistics the bf16 step left (equal in both)
    ref.eval(), fast.eval(), exact.eval()
    with torch.no_grad():
        want_eval = exact(x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            err_ref, err_fast = _rel(ref(x), want_eval), _rel(fast(x), want_eval)
    assert err_fast <= 1.25 * err_ref + 2 * U_BF16, ("eval", err_fast, err_ref)


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward after one forward under bf16 autocast, each storage once, not counting
    the model's own float32 parameters (they are in memory either way; the memory-efficient block saves them for
    its backward, while the reference saves autocast's bf16 copies of them, which are counted: extra memory)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).float().sum()
    return sum(storages.values())


def test_memory_efficient_keeps_its_ratio_under_bf16() -> None:
    """Under bf16 autocast the shared-storage path keeps less than half of the reference's activations (measured:
    3.6 MB against 38.8 MB at batch 2, 96 px; in float32 4.3 MB against 48.6 MB)."""
    x = torch.randn(2, 3, 96, 96)
    default = create_model("keras_se_densenet121", num_classes=2)
    efficient = create_model("keras_se_densenet121", num_classes=2, memory_efficient=True)
    reference = copy.deepcopy(default)
    set_fast(reference, False)
    kept = {name: _saved_bytes(m, x) for name, m in [("ref", reference), ("default", default), ("me", efficient)]}
    assert kept["default"] <= kept["ref"]
    assert kept["me"] < 0.5 * kept["ref"]


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_low_precision_kernels_on_a_buffer_slice_equal_those_on_its_dense_copy(fmt: torch.memory_format) -> None:
    """bf16 norm1 reads a channel slice of the block's buffer: it is copied to a dense tensor before BatchNorm's
    kernels (the strided path is ~5x slower), which must give bitwise what the kernels give on the copy."""
    from sedensenet.models.fast_memeff import _norm1_param_grads
    from sedensenet.models.fast_storage import dense, scale_shift

    g = torch.Generator().manual_seed(0)
    buf = torch.randn(4, 12, 6, 6, generator=g).to(torch.bfloat16).contiguous(memory_format=fmt)
    x = buf[:, :7]
    assert not dense(x) and dense(x.contiguous(memory_format=fmt))
    scale, shift = torch.randn(7, generator=g), torch.randn(7, generator=g)
    out = torch.empty(4, 7, 6, 6, dtype=torch.bfloat16).contiguous(memory_format=fmt)
    assert torch.equal(
        scale_shift(x, scale, shift, out=out), scale_shift(x.contiguous(memory_format=fmt), scale, shift)
    )
    assert torch.equal(scale_shift(x, scale, shift), out)  # no `out`: the same values in a new tensor
    d_z = torch.randn(4, 7, 6, 6, generator=g).to(torch.bfloat16).contiguous(memory_format=fmt)
    mean, invstd = x.float().mean((0, 2, 3)), torch.rand(7, generator=g) + 0.5
    free = torch.empty_like(out)
    got = _norm1_param_grads(d_z, x, free, mean, invstd)
    want = _norm1_param_grads(d_z, x.contiguous(memory_format=fmt), torch.empty_like(out), mean, invstd)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    exact = ((d_z.double() * (x.double() - mean.double().view(1, -1, 1, 1))).sum((0, 2, 3)) * invstd.double(),
             d_z.double().sum((0, 2, 3)))  # fmt: skip
    for a, b in zip(got, exact, strict=True):  # float32 accumulation of exact bf16 products
        assert torch.allclose(a.double(), b, rtol=1e-5, atol=1e-5)
