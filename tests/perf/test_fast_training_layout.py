"""What made DenseNet-BC-100 train at 0.72x torchvision under bf16 on CPU must not come back (issue 28).

The fast path runs the network in channels_last on CPU. With the reference block's ``cat(x, f1, ..., fi)``
autograd accumulates every earlier layer's gradient separately: ``i`` adds per layer, each on a channel slice
``k`` wide (12 channels for BC-100) read out of every pixel, and on such slices bf16 adds are several times
slower than on dense tensors. The fast training block accumulates every channel's gradient in one buffer, each
layer adding into the whole prefix it read; the only additions ``k`` wide are one per layer, on a dense copy of its
own new channels' gradient. These tests check that invariant and that no stage of a preset changes dtype or
layout under bf16 autocast where the reference path does not. No timing here: speed lives in ``benchmarks/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.profiler import profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modelgen import graph_nodes  # noqa: E402

from sedensenet import DenseNet, create_model
from sedensenet.models import fast
from sedensenet.models.densenet import set_fast
from sedensenet.models.se import SqueezeExcite


def _narrow_adds(model: torch.nn.Module, x: torch.Tensor, k: int) -> int:
    """How many gradient additions in one bf16 training step's backward take a 4-D operand ``k`` channels wide."""
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x).float().square().sum()
    with profile(record_shapes=True) as prof:
        loss.backward()
    return sum(
        1
        for e in prof.events()
        if e.name in ("aten::add", "aten::add_") and any(len(s) == 4 and s[1] == k for s in e.input_shapes)
    )


def _bc_block(fast: bool) -> DenseNet:
    """One block of DenseNet-BC-100's kind (k = 12, bottleneck 48, CIFAR stem): 8 layers keep the profile cheap."""
    torch.manual_seed(0)
    return set_fast(DenseNet(growth_rate=12, block_config=(8,), num_init_features=24, stem="cifar", num_classes=10),
                    fast)  # fmt: skip


def test_default_training_accumulates_no_gradient_one_layer_wide() -> None:
    x = torch.randn(2, 3, 8, 8)
    assert _narrow_adds(_bc_block(True), x, k=12) <= 8  # one per layer: its new channels' affine BN term
    # The reference run in channels_last, counted the same way: the test sees the regression when it is there
    # (feature j of 8 has 9 - j consumers, so 8 - j additions: 28 in all).
    assert _narrow_adds(_bc_block(False), x.contiguous(memory_format=torch.channels_last), k=12) >= 28


def _stage_formats(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[str, torch.dtype, bool]]:
    """(stage, dtype, channels_last-dense) after every child of ``model.features`` under bf16 autocast, the
    stages called one by one in the layout the network's forward gives them."""
    model.train()
    if model.fast:
        x = fast.channels_last(x)  # what fast.forward_features does on CPU
    out = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for name, stage in model.features.named_children():
            x = stage(x)
            out.append((name, x.dtype, x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)))
    return out


@pytest.mark.parametrize(
    ("name", "size", "chans"),
    [("densenet_bc_100", 8, 3), ("se_densenet_bc_100", 8, 3), ("densenet121", 32, 3), ("se_densenet_bc_100", 8, 1),
     ("densenet121", 32, 1)],
)  # fmt: skip
def test_no_stage_changes_dtype_or_layout_under_bf16(name: str, size: int, chans: int) -> None:
    # One channel (grayscale) included: there `.contiguous(memory_format=channels_last)` kept NCHW strides and the
    # whole network ran NCHW, off the fast paths (the main job trained 1.14-1.28x slower).
    torch.manual_seed(0)
    fast = create_model(name, num_classes=10, in_chans=chans)
    ref = create_model(name, num_classes=10, in_chans=chans)
    set_fast(ref, False)
    x = torch.randn(2, chans, size, size)
    got, want = _stage_formats(fast, x), _stage_formats(ref, x)
    assert [(n, d) for n, d, _ in got] == [(n, d) for n, d, _ in want]  # the same dtype after every stage
    assert all(d == torch.bfloat16 for _, d, _ in got), got  # no stage leaves bf16 ...
    assert all(cl for _, _, cl in got), got  # ... or channels_last (no layout flip and back between stages)


def _se_step(se: SqueezeExcite, x: torch.Tensor, grad: torch.Tensor) -> list[torch.Tensor]:
    """SE's output and every gradient after one backward under bf16 autocast."""
    x.grad = None
    se.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = se(x)
    out.backward(grad)
    return [out, x.grad, *(p.grad for p in se.parameters())]


def test_se_squeeze_gradient_is_bit_identical_to_mean() -> None:
    """In float32 SE's fast squeeze changes only how its backward is laid out, not a single bit of it."""
    torch.manual_seed(0)
    se = SqueezeExcite(40)
    x = torch.randn(4, 40, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn(4, 40, 6, 6)
    got = _se_step(se, x, grad)
    assert "_SpatialMeanBackward" in graph_nodes(got[0].grad_fn)  # the fast squeeze ran
    se.fast = False
    want = _se_step(se, x, grad)
    assert "_SpatialMeanBackward" not in graph_nodes(want[0].grad_fn)  # set_fast(False) gets plain mean
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


def test_se_squeeze_in_bf16_is_within_two_roundings_of_the_exact_mean() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 40, 7, 7).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    exact = x.double().mean((2, 3), keepdim=True)
    with torch.no_grad():
        got = fast.spatial_mean(x)
    assert got.dtype == torch.bfloat16 and got.shape == (4, 40, 1, 1)
    ulp = exact.abs() * 2.0**-8 + 1e-30
    assert ((got.double() - exact).abs() <= 2 * ulp).all()


def test_one_channel_images_take_the_fast_training_block(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(2, 1, 8, 8)
    view = fast.channels_last(x)
    assert view.is_contiguous(memory_format=torch.channels_last) and view.stride(1) == 1
    assert view.data_ptr() == x.data_ptr() and torch.equal(view, x)  # the same bytes: no copy
    taken = []
    real = fast.forward_block
    monkeypatch.setattr(fast, "forward_block", lambda block, y: taken.append(y.stride(1) == 1) or real(block, y))
    model = create_model("se_densenet_bc_100", num_classes=10, in_chans=1).train()
    model(x).sum().backward()
    assert taken == [True, True, True]  # every dense block on the fast path, in channels_last


@pytest.mark.parametrize("chans", [1, 3])
def test_batches_asked_for_in_channels_last_get_it_with_one_channel_too(chans: int) -> None:
    # What the training loop does on a GPU (StepSettings.channels_last); a one-channel batch kept NCHW strides.
    from sedensenet.engine.loop import StepSettings

    images, labels = torch.randn(4, chans, 8, 8), torch.zeros(4, dtype=torch.long)
    out, _ = StepSettings(torch.device("cpu"), channels_last=True).to_device(images, labels)
    assert out.stride(1) == 1 and out.is_contiguous(memory_format=torch.channels_last) and torch.equal(out, images)
    plain, _ = StepSettings(torch.device("cpu")).to_device(images.contiguous(memory_format=torch.channels_last), labels)
    assert plain.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("size", [7, 8])
def test_classifier_pooling_gradient_is_a_broadcast_view_with_the_same_values(dtype: torch.dtype, size: int) -> None:
    # adaptive_avg_pool2d's backward writes NCHW; against the last ReLU's channels_last output its backward took a
    # strided path (9 ms against 1 ms for BC-100's 64 x 342 x 8 x 8 under bf16).
    torch.manual_seed(0)
    model = create_model("densenet_bc_100", num_classes=10).train()
    fmap = torch.randn(4, 342, size, size).to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = model.forward_head(fmap, pre_logits=True)
    assert "_SpatialMeanBackward" in graph_nodes(out.grad_fn)
    grad = torch.randn(out.shape, dtype=out.dtype)
    (got,) = torch.autograd.grad(out, fmap, grad)
    (want,) = torch.autograd.grad(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(fmap, 1), 1), fmap, grad)
    assert got.stride()[2:] == (0, 0) and want.stride(3) == 1  # a broadcast view where PyTorch gave NCHW
    assert torch.equal(got, want)
    assert torch.equal(out.detach(), torch.nn.functional.adaptive_avg_pool2d(fmap.detach(), 1).flatten(1))
    set_fast(model, False)
    assert "_SpatialMeanBackward" not in graph_nodes(model.forward_head(fmap, pre_logits=True).grad_fn)


def test_default_training_transition_is_one_node_equal_to_its_modules() -> None:
    """On CPU in channels_last a transition trains as one BN-ReLU-pool node that keeps its activation (the
    reference's average-pool backward zero-fills and adds, its ReLU backward writes a new tensor)."""
    from sedensenet.models.densenet import Transition

    torch.manual_seed(0)
    fast_t = Transition(num_input_features=36, num_output_features=18).train()
    ref_t = set_fast(Transition(num_input_features=36, num_output_features=18).train(), False)
    ref_t.load_state_dict(fast_t.state_dict())
    x = torch.randn(4, 36, 10, 10, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(4, 18, 5, 5, dtype=torch.float64)
    runs = []
    for t in (fast_t.double(), ref_t.double()):
        xi = x.clone().requires_grad_()
        out = t(xi)
        runs.append((out, graph_nodes(out.grad_fn), *torch.autograd.grad(out, [xi, *t.parameters()], grad)))
    (out, nodes, *grads), (ref_out, ref_nodes, *ref_grads) = runs
    assert "_BNReLUPoolBackward" in nodes and "_BNReLUPoolBackward" not in ref_nodes
    assert "AvgPool2DBackward0" in ref_nodes and "AvgPool2DBackward0" not in nodes
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for g, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(fast_t.norm, name), getattr(ref_t.norm, name), rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize(("size", "kernel", "stride"), [(8, 2, 2), (9, 2, 2), (9, 3, 3), (8, 3, 2)])
def test_pooling_backward_equals_pytorchs(dtype: torch.dtype, size: int, kernel: int, stride: int) -> None:
    """Windows that tile the input take one broadcast copy; the others (an odd size, overlapping windows) take
    ``avg_pool2d_backward``: bitwise what PyTorch gives either way."""
    from sedensenet.models.fast_memeff import _pool_backward

    torch.manual_seed(0)
    pool = torch.nn.AvgPool2d(kernel, stride)
    act = torch.randn(3, 20, size, size).to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = pool(act)
    grad = torch.randn(out.shape).to(dtype).contiguous(memory_format=torch.channels_last)
    (want,) = torch.autograd.grad(out, act, grad)
    got = _pool_backward(pool, grad, act.detach())
    assert torch.equal(got, want) and got.is_contiguous(memory_format=torch.channels_last)
