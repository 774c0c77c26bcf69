"""torchvision weights into our presets: offline files, old key names, channel adaptation, unsafe files refused."""

import os
import pickle
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch.testing import assert_close

from sedensenet import create_model
from sedensenet.models import weights as W


@pytest.fixture(scope="module")
def tv121(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(1)
    tv = torchvision.models.densenet121().eval()
    path = tmp_path_factory.mktemp("w") / "densenet121-a639ec97.pth"
    torch.save(tv.state_dict(), path)
    return tv, path


def test_pretrained_file_gives_torchvisions_logits(tv121: tuple) -> None:
    tv, path = tv121
    model = create_model("densenet121", pretrained=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_close(model(x), tv(x), atol=1e-5, rtol=1e-5)


def test_se_preset_gets_the_body_and_reports_new_keys(tv121: tuple, caplog: pytest.LogCaptureFixture) -> None:
    tv, path = tv121
    model = create_model("keras_se_densenet121", num_classes=2)
    report = W.load_pretrained(model, path, arch=None)
    assert report.new_keys == sorted(
        ["classifier.bias", "classifier.weight"]
        + [f"features.se_head.{p}.{t}" for p in ("fc1", "fc2") for t in ("weight", "bias")]
    )
    assert_close(model.features.denseblock3.denselayer7.conv2.weight, tv.features.denseblock3.denselayer7.conv2.weight)


def test_old_key_style_and_module_prefix_are_renamed(tv121: tuple, tmp_path: Path) -> None:
    tv, _ = tv121
    old = {}
    for k, v in tv.state_dict().items():
        for a in ("norm1", "norm2", "conv1", "conv2", "relu1", "relu2"):
            if f".{a}." in k and "denselayer" in k:
                k = k.replace(f".{a}.", f".{a[:-1]}.{a[-1]}.")
        old["module." + k] = v
    assert any(".norm.1." in k for k in old)
    path = tmp_path / "old.pth"
    torch.save(old, path)
    model = create_model("densenet121", pretrained=path).eval()
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert_close(model(x), tv(x), atol=1e-5, rtol=1e-5)


def test_safetensors_file_and_in_chans_adaptation(tv121: tuple, tmp_path: Path) -> None:
    tv, _ = tv121
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tv.state_dict().items()}, str(path))
    gray = create_model("densenet121", in_chans=1, pretrained=path).eval()
    w = tv.features.conv0.weight
    assert_close(gray.features.conv0.weight, w.sum(1, keepdim=True))
    x = torch.randn(1, 1, 40, 40)
    with torch.no_grad():  # a gray image gives the RGB model's response to the same gray in all three channels
        assert_close(gray(x), tv(x.repeat(1, 3, 1, 1)), atol=1e-4, rtol=1e-4)
    four = create_model("densenet121", in_chans=4, pretrained=path)
    assert_close(four.features.conv0.weight[:, :3], w * 0.75)
    assert_close(four.features.conv0.weight[:, 3], w[:, 0] * 0.75)


def test_other_architecture_names_the_shapes(tv121: tuple) -> None:
    _, path = tv121
    with pytest.raises(W.WeightsError, match=r"another architecture.*shape"):
        create_model("densenet169", pretrained=path)
    with pytest.raises(W.WeightsError, match=r"another architecture|does not fit"):
        create_model("densenet_bc_100", pretrained=path)


def test_truncated_and_non_densenet_files(tv121: tuple, tmp_path: Path) -> None:
    _, path = tv121
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(W.WeightsError, match=r"cut\.pth.*(truncated|corrupt)"):
        create_model("densenet121", pretrained=cut)
    other = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), other)
    with pytest.raises(W.WeightsError, match="not a torchvision DenseNet"):
        create_model("densenet121", pretrained=other)
    empty = tmp_path / "empty.pth"
    empty.touch()
    with pytest.raises(W.WeightsError, match="empty"):
        create_model("densenet121", pretrained=empty)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\xff" * 64)
    with pytest.raises(W.WeightsError, match="safetensors"):
        create_model("densenet121", pretrained=bad_st)


class _Payload:
    def __reduce__(self):  # noqa: ANN204 - the classic pickle exploit: calls a function on load
        return (os.system, (f"touch {os.environ['SEDENSENET_PWNED']}",))


def test_pickle_that_would_run_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("SEDENSENET_PWNED", str(marker))
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"features.conv0.weight": _Payload()}, f, pickle_module=pickle)
    with pytest.raises(W.WeightsError, match=r"refused to load .*evil\.pth.*could run code"):
        create_model("densenet121", pretrained=path)
    assert not marker.exists()


def test_offline_pretrained_true_says_where_to_put_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def offline(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(W.WeightsError) as info:
        create_model("densenet121", pretrained=True)
    msg = str(info.value)
    assert "https://download.pytorch.org/models/densenet121-a639ec97.pth" in msg
    assert str(tmp_path / "hub" / "checkpoints" / "densenet121-a639ec97.pth") in msg


def test_pretrained_true_uses_the_hub_cache(tv121: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tv, path = tv121
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    cached = tmp_path / "hub" / "checkpoints" / "densenet121-a639ec97.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    model = create_model("se_densenet121", num_classes=2, pretrained=True)
    assert_close(model.features.conv0.weight, tv.features.conv0.weight)
    with pytest.raises(W.WeightsError, match="no torchvision ImageNet weights"):
        create_model("densenet264", pretrained=True)
