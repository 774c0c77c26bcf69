"""The fast paths against the reference implementation: outputs, gradients, running statistics, fallbacks.

Exact agreement is checked in float64, where every path computes the same mathematics and agrees to ~1e-12.
In float32 the paths round differently (channels_last kernels, pooling before a transition's convolution, the
shared-storage block), and a ReLU input within rounding distance of zero can then take the other sign: one
flipped mask element changes conv0's gradient by up to 8.5e-4 at batch 2 and 64 px (densenet121; torchvision
run in channels_last against its own NCHW run shows the same). So float32 gradients are compared only between
paths that run the same operations, and float32 outputs at ``1e-4``. No timing here: speed lives in
``benchmarks/``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from sedensenet import DenseNet, create_model
from sedensenet.models import DenseBlock, SqueezeExcite, Transition
from sedensenet.models.densenet import set_fast


def _tiny(memory_efficient: bool = False) -> DenseNet:
    """A small network the fast paths support (SE in the head and after blocks, none per layer)."""
    return DenseNet(
        growth_rate=4, block_config=(2, 3), num_init_features=8, bn_size=2, stem="imagenet",
        se_placement=("head", "block"), se_rd_channels=2, num_classes=3, memory_efficient=memory_efficient,
    )  # fmt: skip


def _tiny_cifar(memory_efficient: bool = False) -> DenseNet:
    return DenseNet(
        growth_rate=4, block_config=(3, 2), num_init_features=6, bn_size=2, stem="cifar", num_classes=2,
        memory_efficient=memory_efficient, norm_eps=1.001e-5,
    )  # fmt: skip


MODELS = {
    "tiny_imagenet_stem": (_tiny, 48),
    "tiny_cifar_stem": (_tiny_cifar, 12),
    "keras_se_densenet121": (lambda me: create_model("keras_se_densenet121", num_classes=2, memory_efficient=me), 64),
}


def _pair(name: str, memory_efficient: bool, dtype: torch.dtype) -> tuple[nn.Module, nn.Module, int]:
    """(reference, fast) with the same weights. The reference is always the plain reference path: its
    memory-efficient variant (torch.utils.checkpoint, as torchvision's) runs norm1 twice per step in training
    and so updates its running statistics twice, which the shared-storage path does not do."""
    make, size = MODELS[name]
    fast = make(memory_efficient).to(dtype)
    ref = make(False).to(dtype)
    ref.load_state_dict(fast.state_dict())
    set_fast(ref, False)
    return ref, fast, size


def _train_steps(model: nn.Module, x: torch.Tensor, steps: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A few forward/backward passes (running statistics move); the last output and input gradient."""
    model.train()
    for _ in range(steps):
        model.zero_grad()
        xg = x.clone().requires_grad_(True)
        out = model(xg)
        (out.square().sum() + out[:, 0].sum()).backward()
    return out.detach(), xg.grad


@pytest.mark.parametrize("memory_efficient", [False, True], ids=["default", "memory_efficient"])
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_against_reference_float64(name: str, memory_efficient: bool, channels_last: bool) -> None:
    ref, fast, size = _pair(name, memory_efficient, torch.float64)
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out_ref, dx_ref = _train_steps(ref, x)
    out_fast, dx_fast = _train_steps(fast, x)
    assert_close(out_fast, out_ref, atol=1e-10, rtol=1e-9)
    assert_close(dx_fast, dx_ref, atol=1e-10, rtol=1e-8)
    fast_params = dict(fast.named_parameters())
    for key, p in ref.named_parameters():
        assert_close(fast_params[key].grad, p.grad, atol=1e-10, rtol=1e-8, msg=key)
    fast_buffers = dict(fast.named_buffers())
    for key, b in ref.named_buffers():  # running mean/var and num_batches_tracked, as nn.BatchNorm2d keeps them
        assert_close(fast_buffers[key], b, atol=1e-12, rtol=1e-10, msg=key)
    ref.eval(), fast.eval()
    with torch.no_grad():
        assert_close(fast(x), ref(x), atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("memory_efficient", [False, True], ids=["default", "memory_efficient"])
def test_one_channel_against_reference_float64(memory_efficient: bool) -> None:
    """Grayscale input, which the fast path views with channels_last strides (a different stem layout)."""
    fast = DenseNet(
        growth_rate=4, block_config=(3, 2), num_init_features=6, bn_size=2, stem="cifar", num_classes=2, in_chans=1,
        se_placement=("block",), se_rd_channels=2, memory_efficient=memory_efficient,
    ).double()  # fmt: skip
    ref = copy.deepcopy(fast)
    set_fast(ref, False)
    x = torch.randn(3, 1, 12, 12, dtype=torch.float64)
    out_ref, dx_ref = _train_steps(ref, x)
    out_fast, dx_fast = _train_steps(fast, x)
    assert_close(out_fast, out_ref, atol=1e-10, rtol=1e-9)
    assert_close(dx_fast, dx_ref, atol=1e-10, rtol=1e-8)
    assert dx_fast.shape == x.shape and dx_fast.is_contiguous()  # the input's gradient in the input's layout
    ref_params = dict(ref.named_parameters())
    for key, p in fast.named_parameters():
        assert_close(p.grad, ref_params[key].grad, atol=1e-10, rtol=1e-8, msg=key)


@pytest.mark.parametrize("name", list(MODELS))
def test_float32_outputs_within_1e4(name: str) -> None:
    for memory_efficient in (False, True):
        ref, fast, size = _pair(name, memory_efficient, torch.float32)
        x = torch.randn(4, 3, size, size)
        out_ref, _ = _train_steps(ref, x, steps=3)
        out_fast, _ = _train_steps(fast, x, steps=3)
        assert (out_fast - out_ref).abs().max() <= 1e-4
        ref.eval(), fast.eval()
        with torch.no_grad():
            assert (fast(x) - ref(x)).abs().max() <= 1e-4
        with torch.inference_mode():
            assert (fast(x) - ref(x)).abs().max() <= 1e-4


@pytest.mark.parametrize(("name", "size"), [("se_densenet_tiny", 16), ("keras_se_densenet121", 64)])
def test_memory_efficient_gradients_equal_default(name: str, size: int) -> None:
    """The shared-storage path against the default path in float32, at the tolerance the issue asks for."""
    default = create_model(name, num_classes=4)
    efficient = create_model(name, num_classes=4, memory_efficient=True)
    efficient.load_state_dict(default.state_dict())
    x = torch.randn(2, 3, size, size)
    out_d, out_e = default(x), efficient(x)
    assert_close(out_e, out_d, atol=1e-4, rtol=0)
    if name == "keras_se_densenet121":
        # Different operation orders: compare in float64 (see the module doc for why not float32).
        default, efficient, x = default.double(), efficient.double(), x.double()
        out_d, out_e = default(x), efficient(x)
    out_d.sum().backward()
    out_e.sum().backward()
    grads = dict(efficient.named_parameters())
    for key, p in default.named_parameters():
        assert_close(grads[key].grad, p.grad, atol=1e-5, rtol=1e-4, msg=key)


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward after one forward pass (each storage counted once)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return sum(storages.values())


def test_memory_efficient_keeps_less_than_half() -> None:
    x = torch.randn(2, 3, 96, 96)
    default = create_model("keras_se_densenet121", num_classes=2)
    efficient = create_model("keras_se_densenet121", num_classes=2, memory_efficient=True)
    reference = copy.deepcopy(default)
    set_fast(reference, False)
    kept = {name: _saved_bytes(m, x) for name, m in [("ref", reference), ("default", default), ("me", efficient)]}
    assert kept["default"] <= kept["ref"]
    assert kept["me"] < 0.5 * kept["ref"]


def test_fast_path_steps_aside_for_hooks_and_layer_se() -> None:
    model = _tiny(memory_efficient=True)
    seen = []
    layer = model.features.denseblock1.denselayer1
    handle = layer.conv1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model(torch.randn(2, 3, 48, 48)).sum().backward()
    handle.remove()
    assert len(seen) == 1  # the hooked layer ran as a module: the reference path was used
    tiny_layer_se = create_model("se_densenet_tiny", num_classes=2, memory_efficient=True)  # per-layer SE
    out = tiny_layer_se(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 2)


def test_eval_with_gradients_uses_reference_and_matches() -> None:
    """Grad-CAM runs eval mode with gradients: the fast inference path must step aside, not break autograd."""
    model = _tiny().eval()
    ref = copy.deepcopy(model)
    set_fast(ref, False)
    x = torch.randn(2, 3, 48, 48, requires_grad=True)
    model(x).sum().backward()
    g = x.grad.clone()
    x.grad = None
    ref(x).sum().backward()
    assert_close(g, x.grad, atol=1e-6, rtol=1e-5)


def test_se_after_a_block_scales_its_output_in_place_only_in_inference(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _tiny().eval()  # SE after each block and in the head: se1 and se2 follow a block, se_head follows se2
    ref = copy.deepcopy(model)
    set_fast(ref, False)
    scaled: list[int] = []
    real = SqueezeExcite.scale_
    monkeypatch.setattr(SqueezeExcite, "scale_", lambda se, x: scaled.append(x.data_ptr()) or real(se, x))
    x = torch.randn(2, 3, 48, 48)
    with torch.inference_mode():
        out, want = model(x), ref(x)
    assert_close(out, want, atol=1e-5, rtol=1e-5)
    assert len(scaled) == 2  # se1 and se2 wrote into their block's output; se_head ran as a module
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, want = model(x), ref(x)
    assert out.dtype == want.dtype == torch.bfloat16
    assert_close(out.float(), want.float(), atol=0.05, rtol=0.05)
    scaled.clear()
    gates: list[torch.Size] = []
    handle = model.features.se1.gate.register_forward_hook(lambda m, i, o: gates.append(o.shape))
    with torch.inference_mode():
        model(x)
    handle.remove()
    assert scaled == [] and gates == [(2, 16, 1, 1)]  # a hook (explain's) sees SE run as a module
    model(x.requires_grad_()).sum().backward()  # eval with gradients (Grad-CAM): nothing in place
    assert scaled == []


def test_an_se_subclass_with_its_own_forward_is_not_bypassed_in_inference() -> None:
    class ResidualSE(SqueezeExcite):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + x * self.excitation(x)

    model = _tiny().eval()
    model.features.se1 = ResidualSE(16, rd_channels=2)
    ref = copy.deepcopy(model)
    set_fast(ref, False)
    x = torch.randn(2, 3, 48, 48)
    with torch.inference_mode():
        assert_close(model(x), ref(x), atol=1e-5, rtol=1e-5)


def test_set_fast_switches_every_part() -> None:
    model = create_model("keras_se_densenet121", num_classes=2)
    set_fast(model, False)
    parts = [m for m in model.modules() if isinstance(m, (DenseNet, DenseBlock, Transition, SqueezeExcite))]
    assert parts and not any(m.fast for m in parts) and any(isinstance(m, SqueezeExcite) for m in parts)
    set_fast(model, True)
    assert all(m.fast for m in parts)


def test_state_dict_and_copies_are_unchanged_by_fast_paths() -> None:
    model = create_model("keras_se_densenet121", num_classes=2, memory_efficient=True)
    keys = set(model.state_dict())
    model(torch.randn(2, 3, 64, 64)).sum().backward()  # fills the scratch storage
    assert set(model.state_dict()) == keys
    clone = copy.deepcopy(model)
    assert_close(clone.eval()(torch.ones(1, 3, 64, 64)), model.eval()(torch.ones(1, 3, 64, 64)))


def test_flop_count_sees_the_textbook_network() -> None:
    from sedensenet.model_summary import count_macs

    model = create_model("keras_se_densenet121", num_classes=2)
    assert round(count_macs(model, torch.zeros(1, 3, 224, 224)) / 1e9, 2) == 2.83
