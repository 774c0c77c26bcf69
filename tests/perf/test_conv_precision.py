"""bf16 training convolutions computed in float32 where this CPU's bf16 units are the slower ones (issue 28).

Sapphire and Emerald Rapids without AMX run oneDNN's bf16 convolutions at about half their float32 speed, so under
bf16 autocast the fast paths convert the bf16 values to float32, convolve, and round the result to bf16. Every
product of two bf16 numbers is exact in float32 and both kernels accumulate in float32: the result is what the
bf16 kernel gives up to the order of the sums. These tests force the route both ways, whatever this CPU is.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modelgen import graph_nodes  # noqa: E402

from sedensenet import create_model
from sedensenet.models import cpu, fast_storage
from sedensenet.models.densenet import DenseNet, set_fast

U_BF16 = 2.0**-8  # bf16 keeps 8 significant bits: one rounding to nearest errs by at most 2^-8 relative


@pytest.fixture(params=[False, True], ids=["bf16_convs", "float32_convs"])
def float32_convs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(fast_storage, "BF16_CONVOLUTIONS_IN_FLOAT32", request.param)
    return request.param


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize(("kernel", "out"), [(1, 64), (3, 12)])
def test_float32_route_is_within_one_rounding_of_exact(float32_convs: bool, kernel: int, out: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(20, out, kernel, padding=kernel // 2, bias=False)
    x = torch.randn(4, 20, 9, 9).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w = conv.weight.detach().to(torch.bfloat16)
    grad = torch.randn(4, out, 9, 9).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    y = fast_storage.conv2d(x, conv, w, training=True)
    d_x, d_w = fast_storage.conv2d_backward(grad, x, w, conv, True)
    # What the bf16 values give in float64: the float32 route's result is this, rounded to bf16 once.
    x64, w64, g64 = x.double().requires_grad_(), w.double().requires_grad_(), grad.double()
    y64 = nn.functional.conv2d(x64, w64, None, 1, kernel // 2)
    y64.backward(g64)
    assert y.dtype == d_x.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    assert d_w.dtype == (torch.float32 if float32_convs else torch.bfloat16)  # float32: not rounded to bf16
    for got, exact in ((y, y64), (d_x, x64.grad), (d_w, w64.grad)):
        assert _rel(got, exact) <= (U_BF16 if got.dtype == torch.bfloat16 else 1e-6)
        if float32_convs:  # float32 sums, then one rounding: each value within u of the exact one (not near 0)
            big = exact.abs() > 1e-2
            err = ((got.double() - exact).abs()[big] / exact.abs()[big]).max().item()
            assert err <= (1.01 * U_BF16 if got.dtype == torch.bfloat16 else 1e-4), err


def _tiny(memory_efficient: bool = False) -> DenseNet:
    """Wide enough that every convolution takes the float32 route when it is on (:data:`FLOAT32_MIN_OUTPUTS`)."""
    return DenseNet(growth_rate=8, block_config=(2, 3), num_init_features=16, bn_size=8, stem="imagenet",
                    num_classes=3, memory_efficient=memory_efficient)  # fmt: skip


def _step(model: nn.Module, x: torch.Tensor, bf16: bool) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    xg = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(xg)
    (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = torch.cat([p.grad.flatten().double() for p in model.parameters()])
    return {"out": out.detach(), "dx": xg.grad.detach(), "grads": grads}


@pytest.mark.parametrize("memory_efficient", [False, True], ids=["default", "memory_efficient"])
def test_network_training_is_as_accurate_as_reference(float32_convs: bool, memory_efficient: bool) -> None:
    """Stem, transitions and blocks under bf16 autocast, against the reference modules' bf16 and float64."""
    torch.manual_seed(0)
    fast = _tiny(memory_efficient)
    ref = set_fast(_tiny(), False)
    ref.load_state_dict(fast.state_dict())
    exact = copy.deepcopy(ref).double()
    x = torch.randn(8, 3, 48, 48)
    want = _step(exact, x.double(), False)
    got_ref, got_fast = _step(ref, x, True), _step(fast, x, True)
    for key in ("out", "dx", "grads"):
        err_ref, err_fast = _rel(got_ref[key], want[key]), _rel(got_fast[key], want[key])
        assert err_fast <= 1.25 * err_ref + 2 * U_BF16, (key, err_fast, err_ref)
    assert got_fast["out"].dtype == got_ref["out"].dtype and got_fast["dx"].dtype == torch.float32


def test_stem_and_transition_convolutions_take_the_float32_node_only_when_asked(float32_convs: bool) -> None:
    model = create_model("densenet_bc_100", num_classes=10).train()
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nodes = graph_nodes(model(x).grad_fn)
        assert ("_Float32ConvBackward" in nodes) == float32_convs
        model.eval()
        with torch.no_grad():
            assert model(x).dtype == torch.bfloat16  # inference keeps bf16 convolutions (no node, no error)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().sum().backward()  # float32 weights get float32 gradients either way
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_only_bf16_cpu_tensors_and_convolutions_with_enough_outputs_are_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fast_storage, "BF16_CONVOLUTIONS_IN_FLOAT32", True)
    assert fast_storage.float32_convolutions(torch.zeros(1, dtype=torch.bfloat16))
    assert not fast_storage.float32_convolutions(torch.zeros(1, dtype=torch.float16))
    assert not fast_storage.float32_convolutions(torch.zeros(1))
    x = torch.zeros(1, dtype=torch.bfloat16)
    assert fast_storage.float32_convolutions(x, torch.zeros(12, 48, 3, 3))  # BC-100's 3x3: 108 outputs per input
    assert fast_storage.float32_convolutions(x, torch.zeros(128, 256, 1, 1))  # DenseNet-121's bottleneck
    assert not fast_storage.float32_convolutions(x, torch.zeros(48, 204, 1, 1))  # BC-100's bottleneck: 48
    model = create_model("densenet_bc_100", num_classes=10).train()
    conv1 = model.features.denseblock1.denselayer1.conv1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast_storage.convolve(conv1, torch.randn(2, 24, 4, 4, requires_grad=True))
    assert "_Float32ConvBackward" not in graph_nodes(out.grad_fn)


@pytest.mark.parametrize(
    ("cpu_id", "amx", "slow"),
    [(("GenuineIntel", 6, 207), False, "Emerald Rapids"), (("GenuineIntel", 6, 143), False, "Sapphire Rapids"),
     (("GenuineIntel", 6, 207), True, None), (("AuthenticAMD", 25, 17), False, None), (None, False, None)],
)  # fmt: skip
def test_the_rule_reads_the_table_of_slow_bf16_cpus(
    monkeypatch: pytest.MonkeyPatch, cpu_id: tuple[str, int, int] | None, amx: bool, slow: str | None
) -> None:
    monkeypatch.setattr(cpu, "cpu_id", lambda: cpu_id)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": amx, "avx512_bf16": True})
    assert cpu.slow_bf16_units() == slow


def test_float32_route_in_parts_equals_it_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """The float32 copies are made a few images at a time: the same values as one whole copy (the weight
    gradient summed over the parts in float32)."""
    monkeypatch.setattr(fast_storage, "BF16_CONVOLUTIONS_IN_FLOAT32", True)
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 3, padding=1, bias=False)
    x = torch.randn(10, 16, 6, 6).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w = conv.weight.detach().to(torch.bfloat16)
    grad = torch.randn(10, 8, 6, 6).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    whole = [fast_storage.conv2d(x, conv, w, training=True), *fast_storage.conv2d_backward(grad, x, w, conv, True)]
    monkeypatch.setattr(fast_storage, "FLOAT32_PART_BYTES", 3 * 4 * x[0].numel())  # parts of 3, 3, 3 and 1 images
    assert [(start, len(part)) for start, part in fast_storage._batch_parts(x)] == [(0, 3), (3, 3), (6, 3), (9, 1)]
    parts = [fast_storage.conv2d(x, conv, w, training=True), *fast_storage.conv2d_backward(grad, x, w, conv, True)]
    for got, want in zip(parts, whole, strict=True):
        assert got.dtype == want.dtype and got.stride() == want.stride()
        torch.testing.assert_close(got, want, rtol=1e-5 if got.dtype == torch.float32 else 2**-8, atol=1e-6)
