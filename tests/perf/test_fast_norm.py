"""Training batch norm on folded rows (models/fast_norm.py) and default training's kept block, against PyTorch's own.

The fold only changes which rows PyTorch's kernels sum together, so the results equal the unfolded kernels' up to
float rounding: float32 within 1e-5 relative, bf16 within its own rounding of the outputs. Folding applies to large
tensors at more than one thread; the tests lower :data:`FOLD_MIN_ROWS` and set two threads to reach it on small ones.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from sedensenet import DenseNet
from sedensenet.models import fast_norm, fast_storage
from sedensenet.models.densenet import set_fast

aten = torch.ops.aten


@pytest.fixture
def folding(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fold every foldable tensor, however small, at two threads."""
    monkeypatch.setattr(fast_storage, "FOLD_MIN_ROWS", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _cl(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 2 + 0.5).to(dtype).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    ("channels", "dtype", "threads", "rows", "want", "want_whole_bn"),
    [
        (120, torch.bfloat16, 2, 65536, 4, 4),  # 4 * 120 = 480: a multiple of 32 bf16 lanes
        (108, torch.bfloat16, 2, 65536, 8, 8),
        (342, torch.bfloat16, 2, 16384, 16, 16),
        (120, torch.float32, 2, 65536, 2, 2),  # 16 float lanes
        (128, torch.bfloat16, 2, 65536, 1, 1),  # whole cache lines already
        (144, torch.bfloat16, 2, 65536, 1, 1),
        # One thread: nothing shared, only the scalar tail to save: bf16 passes fold, a whole BatchNorm (one
        # pass more folded) does not, nor float32's short tail; a channel count under 16 is all tail.
        (120, torch.bfloat16, 1, 65536, 4, 1),
        (120, torch.float32, 1, 65536, 1, 1),
        (12, torch.float32, 1, 65536, 4, 4),
        (12, torch.bfloat16, 1, 65536, 8, 8),
        (120, torch.bfloat16, 2, 4096, 1, 1),  # too small: the fold's vector operations cost more than they save
        (120, torch.float64, 2, 65536, 1, 1),
    ],
)
def test_fold_factor(channels: int, dtype: torch.dtype, threads: int, rows: int, want: int, want_whole_bn: int) -> None:
    x = torch.empty(rows // 256, channels, 16, 16, dtype=dtype).contiguous(memory_format=torch.channels_last)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert fast_storage.fold_factor(x) == want
        assert fast_storage.fold_factor(x, extra_pass=True) == want_whole_bn
        assert fast_storage.fold_factor(x.contiguous()) == 1  # NCHW: never
        assert fast_storage.fold_factor(x[:, : channels - 4]) == 1  # a channel slice: not dense
    finally:
        torch.set_num_threads(before)


@pytest.mark.usefixtures("folding")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("channels", [12, 36, 108])
def test_folded_batch_norm_equals_pytorchs(dtype: torch.dtype, channels: int) -> None:
    x = _cl(8, channels, 8, 8, dtype=dtype)
    grad = _cl(8, channels, 8, 8, dtype=dtype, seed=1)
    assert fast_storage.fold_factor(x) > 1
    ref, fast = nn.BatchNorm2d(channels), nn.BatchNorm2d(channels)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5), ref.bias.uniform_(-0.5, 0.5)
    fast.load_state_dict(ref.state_dict())
    outs, grads = [], []
    for norm, run in ((ref, lambda n, t: n(t)), (fast, fast_norm.batch_norm)):
        xg = x.clone().requires_grad_(True)
        out = run(norm, xg)
        out.backward(grad)
        outs.append(out)
        grads.append((xg.grad, norm.weight.grad, norm.bias.grad))
    assert outs[1].dtype == dtype and outs[1].is_contiguous(memory_format=torch.channels_last)
    assert outs[1].grad_fn.name() == "_FoldedBatchNormBackward"  # the folded node ran, not the module
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2**-7, "atol": 2**-7}
    torch.testing.assert_close(outs[1], outs[0], **tol)
    sums = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else tol  # 512 terms summed in another order
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got.float(), want.float(), **sums)
    torch.testing.assert_close(fast.running_mean, ref.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.running_var, ref.running_var, rtol=1e-5, atol=1e-6)
    assert fast.num_batches_tracked == ref.num_batches_tracked == 1


@pytest.mark.usefixtures("folding")
def test_folded_statistics_and_sums_equal_float64() -> None:
    x = _cl(4, 20, 6, 6)
    grad = _cl(4, 20, 6, 6, seed=2)
    assert fast_storage.fold_factor(x) == 4
    mean, var = fast_norm.batch_stats(x)
    want_var, want_mean = torch.var_mean(x.double(), (0, 2, 3), correction=0)
    torch.testing.assert_close(mean.double(), want_mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(var.double(), want_var, rtol=1e-6, atol=1e-6)
    invstd = (var + 1e-5).rsqrt()
    d_w, d_b = fast_norm.grad_sums(grad, x, mean, invstd)
    centred = x.double() - mean.double().view(1, -1, 1, 1)
    torch.testing.assert_close(d_b.double(), grad.double().sum((0, 2, 3)), rtol=1e-5, atol=1e-4)
    want_w = (grad.double() * centred).sum((0, 2, 3)) * invstd.double()
    torch.testing.assert_close(d_w.double(), want_w, rtol=1e-5, atol=1e-4)


def _narrow_bc(memory_efficient: bool) -> DenseNet:
    """A DenseNet-BC of the preset's kind (k = 12: widths 24, 36, ... not multiples of 16), small."""
    torch.manual_seed(0)
    return DenseNet(growth_rate=12, block_config=(3, 3), num_init_features=24, stem="cifar", num_classes=5,
                    memory_efficient=memory_efficient)  # fmt: skip


@pytest.mark.usefixtures("folding")
@pytest.mark.parametrize("memory_efficient", [False, True], ids=["default", "memory_efficient"])
def test_network_training_with_folding_equals_reference(memory_efficient: bool) -> None:
    fast = _narrow_bc(memory_efficient)
    ref = _narrow_bc(False)  # (the reference's memory-efficient variant, checkpointing, runs norm1 twice)
    ref.load_state_dict(fast.state_dict())
    set_fast(ref, False)
    x = torch.randn(6, 3, 12, 12)
    results = []
    for model in (ref, fast):
        model.train()
        out = model(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters()}, dict(model.named_buffers())))
    (out_ref, grads_ref, bufs_ref), (out_fast, grads_fast, bufs_fast) = results
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-4, atol=1e-5)
    for name, g in grads_ref.items():
        torch.testing.assert_close(grads_fast[name], g, rtol=1e-3, atol=1e-5, msg=name)
    for name, b in bufs_ref.items():
        torch.testing.assert_close(bufs_fast[name], b, rtol=1e-5, atol=1e-6, msg=name)


def test_default_training_backward_twice_with_retain_graph() -> None:
    """The kept block saves through autograd: two losses on one graph give the reference's gradients."""
    fast = _narrow_bc(False)
    ref = copy.deepcopy(fast)
    set_fast(ref, False)
    x = torch.randn(4, 3, 12, 12)
    grads = []
    for model in (ref, fast):
        out = model(x)
        out.sum().backward(retain_graph=True)
        out.square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    block_out = fast.features.denseblock1(torch.randn(2, 24, 4, 4).contiguous(memory_format=torch.channels_last))
    assert block_out.grad_fn.name() == "_SharedStorageBlockBackward"  # on CPU default training takes the kept node
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-5)


@pytest.mark.usefixtures("folding")
@pytest.mark.parametrize("memory_efficient", [False, True], ids=["default", "memory_efficient"])
def test_network_training_with_folding_under_bf16_is_as_accurate_as_reference(memory_efficient: bool) -> None:
    """bf16 folds every narrow tensor here (in float32 the blocks' own reductions are not BatchNorm's kernel): the
    fast path's error to float64 at most 1.25x the reference's, as in test_fast_paths_autocast."""
    fast = _narrow_bc(memory_efficient)
    ref = _narrow_bc(False)
    ref.load_state_dict(fast.state_dict())
    set_fast(ref, False)
    exact = copy.deepcopy(ref).double()
    x = torch.randn(6, 3, 12, 12)
    results = []
    for model, dtype in ((exact, None), (ref, torch.bfloat16), (fast, torch.bfloat16)):
        model.train()
        xin = x.double() if dtype is None else x
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            out = model(xin)
        (out.double() * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        results.append(
            torch.cat([out.detach().double().flatten()] + [p.grad.double().flatten() for p in model.parameters()])
        )
    want, got_ref, got_fast = results
    err_ref, err_fast = ((got_ref - want).norm() / want.norm()).item(), ((got_fast - want).norm() / want.norm()).item()
    assert err_fast <= 1.25 * err_ref + 2 * 2.0**-9, (err_fast, err_ref)
