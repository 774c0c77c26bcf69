"""The model family: exact parameter counts, parity with torchvision, every preset trains, shapes and errors."""

import pytest
import torch
import torchvision
from torch.testing import assert_close

from sedensenet import DenseNet, DenseNetConfig, create_model, list_models
from sedensenet.models import SqueezeExcite, count_parameters, get_preset, make_divisible, set_fast


@pytest.mark.parametrize(
    ("name", "expected"),
    [("densenet121", 7_978_856), ("densenet169", 14_149_480), ("densenet201", 20_013_928), ("densenet161", 28_681_000)],
)
def test_parameter_count_equals_torchvision(name: str, expected: int) -> None:
    ours = count_parameters(create_model(name))
    assert ours == expected == count_parameters(getattr(torchvision.models, name)())


@pytest.mark.parametrize(
    ("name", "channels", "expected"),
    [("keras_se_densenet121", 1024, 6_989_714), ("keras_se_densenet169", 1664, 12_542_738),
     ("keras_se_densenet201", 1920, 18_160_146)],
)  # fmt: skip
def test_keras_presets_are_torchvision_body_plus_tutorial_se(name: str, channels: int, expected: int) -> None:
    model = create_model(name, num_classes=2)
    body = count_parameters(getattr(torchvision.models, name.removeprefix("keras_se_"))()) - (channels * 1000 + 1000)
    se = 2 * 16 * channels + 16 + channels  # Dense(16) and Dense(C), both with bias
    assert count_parameters(model) == body + se + channels * 2 + 2 == expected
    assert count_parameters(model.features.se_head) == se
    assert model.features.se_head.rd_channels == 16
    assert model.features.norm5.eps == pytest.approx(1.001e-5)


def test_densenet_bc_100_counts() -> None:
    # L=100 with bottlenecks: 3 blocks of (100 - 4) / 6 = 16 layers, k=12, 2k=24 stem channels; the final
    # block ends with 342 channels, so 10 classes add 3,430 classifier parameters: 769,162 in all (0.77M,
    # the figure in Huang et al.). SE (r=16) after each block adds, for C = 216, 300, 342 with widths
    # 14, 19, 21: sum(2*C*w + w + C) = 6,278 + 11,719 + 14,727 = 32,724.
    assert count_parameters(create_model("densenet_bc_100", num_classes=10)) == 769_162
    assert count_parameters(create_model("se_densenet_bc_100", num_classes=10)) == 769_162 + 32_724


def _tv_pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    tv = getattr(torchvision.models, name)()
    ours = create_model(name)
    ours.load_state_dict(tv.state_dict())
    return ours, tv


@pytest.mark.parametrize("name", ["densenet121", "densenet169", "densenet201"])
def test_reference_path_matches_torchvision_logits_and_gradients(name: str) -> None:
    ours, tv = _tv_pair(name)
    set_fast(ours, False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_close(ours.eval()(x), tv.eval()(x), atol=1e-5, rtol=1e-5)
    ours.train(), tv.train()
    ours(x).square().mean().backward()
    tv(x).square().mean().backward()
    tv_grads = dict(tv.named_parameters())
    for key, p in ours.named_parameters():
        assert_close(p.grad, tv_grads[key].grad, atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("name", ["densenet121", "densenet169", "densenet201"])
def test_fast_path_matches_torchvision(name: str) -> None:
    """The default (fast) path: fp32 logits in eval and train mode, and gradients in float64.

    Its fp32 gradients are not compared elementwise: at batch 2 and 64 px the last block's BatchNorm sees 8
    values per channel, and a ReLU input within ~1e-5 of zero can take the other sign under a different (equally
    exact) rounding order. torchvision itself, fed a channels_last input, then differs from its NCHW run by up to
    8.5e-4 in conv0's gradient (seed 0, densenet121: one flipped mask element in denselayer16.relu2). In float64
    no mask flips and the fast path must equal torchvision to rounding.
    """
    ours, tv = _tv_pair(name)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_close(ours.eval()(x), tv.eval()(x), atol=1e-5, rtol=1e-5)
        assert (ours.train()(x) - tv.train()(x)).abs().max() <= 1e-4  # the bar for fp32 paths
    ours, tv, x = ours.double(), tv.double(), x.double()
    ours(x).square().mean().backward()
    tv(x).square().mean().backward()
    tv_grads = dict(tv.named_parameters())
    for key, p in ours.named_parameters():
        assert_close(p.grad, tv_grads[key].grad, atol=1e-12, rtol=1e-9, msg=key)


def test_state_dict_keys_are_torchvisions_plus_se() -> None:
    tv_keys = set(torchvision.models.densenet121().state_dict())
    ours = set(create_model("keras_se_densenet121").state_dict())
    assert ours - tv_keys == {f"features.se_head.{p}.{t}" for p in ("fc1", "fc2") for t in ("weight", "bias")}
    assert tv_keys <= ours


def _size(name: str) -> int:
    return 32 if get_preset(name).settings.get("stem") == "cifar" else 64


@pytest.mark.parametrize("name", list_models())
def test_every_preset_trains(name: str) -> None:
    model = create_model(name, num_classes=3)
    x = torch.randn(2, 3, _size(name), _size(name))
    out = model(x)
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    params = list(model.parameters())
    assert sum(p.grad is not None for p in params) == len(params)


@pytest.mark.parametrize("name", ["se_densenet_tiny", "se_densenet121", "keras_se_densenet121"])
def test_memory_efficient_matches_default(name: str) -> None:
    size = _size(name)
    a = create_model(name, num_classes=4, drop_rate=0.0)
    b = create_model(name, num_classes=4, memory_efficient=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, size, size)
    assert (a(x) - b(x)).abs().max() <= 1e-4
    # Gradients in float64: in float32 a ReLU input within rounding of zero may flip its mask under either
    # operation order (see test_fast_path_matches_torchvision).
    a, b, x = a.double(), b.double(), x.double()
    ya, yb = a(x), b(x)
    assert_close(ya, yb, atol=1e-10, rtol=1e-9)
    ya.sum().backward()
    yb.sum().backward()
    grads_b = dict(b.named_parameters())
    for key, p in a.named_parameters():
        assert_close(p.grad, grads_b[key].grad, atol=1e-10, rtol=1e-8, msg=key)


@pytest.mark.parametrize(("h", "w"), [(50, 50), (97, 131), (29, 29), (224, 224)])
def test_any_input_size_the_stem_allows(h: int, w: int) -> None:
    model = create_model("keras_se_densenet121", num_classes=2).eval()
    assert model(torch.randn(1, 3, h, w)).shape == (1, 2)


def test_too_small_input_names_the_minimum() -> None:
    model = create_model("densenet121").eval()
    with pytest.raises(ValueError, match=r"28x28 is too small.*minimum is 29x29"):
        model(torch.randn(1, 3, 28, 28))
    bc = create_model("densenet_bc_100").eval()
    assert bc.config.min_input_size() == 4
    with pytest.raises(ValueError, match="minimum is 4x4"):
        bc(torch.randn(1, 3, 3, 3))


@pytest.mark.parametrize("in_chans", [1, 2, 4, 5])
def test_in_chans(in_chans: int) -> None:
    model = create_model("se_densenet_tiny", num_classes=2, in_chans=in_chans)
    assert model.features.conv0.in_channels == in_chans
    assert model(torch.randn(2, in_chans, 16, 16)).shape == (2, 2)


def test_wrong_channel_count_is_a_clear_error() -> None:
    model = create_model("se_densenet_tiny", num_classes=2, in_chans=1)
    with pytest.raises(ValueError, match="takes 1-channel images but got 3 channels"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        model(torch.randn(3, 16, 16))


def test_feature_api() -> None:
    model = create_model("keras_se_densenet121", num_classes=5).eval()
    x = torch.randn(2, 3, 96, 96)
    feats = model.forward_features(x)
    assert feats.shape == (2, 1024, 3, 3)
    assert (feats >= 0).all()  # after the final ReLU
    assert model.num_features == 1024
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, 1024)
    assert_close(model.forward_head(feats), model.classifier(pre))
    model.reset_classifier(7)
    assert model(x).shape == (2, 7) and model.num_classes == 7
    model.reset_classifier(0)
    assert model(x).shape == (2, 1024)


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'densenet122'.*densenet121.*se_densenet_bc_100"):
        create_model("densenet122")


def test_se_placements_and_names() -> None:
    model = create_model("se_densenet_tiny")
    names = set(model.se_modules())
    assert names == {
        "features.denseblock1.denselayer1.se", "features.denseblock1.denselayer2.se",
        "features.denseblock2.denselayer1.se", "features.denseblock2.denselayer2.se",
        "features.se1", "features.se2", "features.transition1.se", "features.se_head",
    }  # fmt: skip
    se121 = create_model("se_densenet121")
    assert [m.rd_channels for m in se121.se_modules().values()] == [16, 32, 64, 64]  # C/16 for 256/512/1024/1024


def test_config_validation_names_the_setting() -> None:
    with pytest.raises(ValueError, match="unknown se_placement"):
        DenseNetConfig(se_placement=("everywhere",))
    with pytest.raises(ValueError, match="compression"):
        DenseNetConfig(compression=0)
    with pytest.raises(ValueError, match="stem"):
        DenseNetConfig(stem="vit")
    assert DenseNetConfig(se_placement="head,block").se_placement == ("head", "block")
    cfg = DenseNetConfig(block_config=(2, 3), se_placement=("layer",))
    assert DenseNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown DenseNet setting"):
        DenseNetConfig.from_dict({"growth": 3})
    assert DenseNet(growth_rate=8, block_config=(1, 1), num_init_features=8).num_features == (8 + 8) // 2 + 8


def test_squeeze_excite() -> None:
    se = SqueezeExcite(64, rd_channels=16)
    assert se.fc1.out_channels == 16 and se.fc2.out_channels == 64
    assert SqueezeExcite(1920).rd_channels == 120  # the paper's r=16
    assert make_divisible(21.375, 8) == 24 and make_divisible(21.375) == 21
    x = torch.rand(2, 64, 5, 5)
    seen: list[torch.Tensor] = []
    se.gate.register_forward_hook(lambda module, inputs, output: seen.append(output.flatten(1)))
    y = se(x)
    gate = seen[0]
    assert not hasattr(se, "last_gate") and set(dict(se.named_children())) == {"fc1", "act", "fc2", "gate"}
    assert gate.shape == (2, 64) and ((gate > 0) & (gate < 1)).all()
    assert_close(y, x * gate[:, :, None, None])
    with pytest.raises(ValueError, match="rd_ratio"):
        SqueezeExcite(64, rd_ratio=0)
