"""The summary table and the model listing: totals that agree with the model, MACs that agree with torchvision."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sedensenet import create_model, summary
from sedensenet.cli import main
from sedensenet.model_summary import models_table


def test_summary_totals_and_stages() -> None:
    model = create_model("keras_se_densenet121", num_classes=2)
    s = summary(model, 224)
    assert s.total_params == 6_989_714 == s.trainable_params
    assert s.non_trainable_params == 0
    names = [r.name for r in s.rows]
    assert names[0].startswith("stem") and names[-1].startswith("head")
    assert "features.se_head" in names and "features.transition3" in names
    assert sum(r.params for r in s.rows) == s.total_params
    shapes = {r.name: r.output_shape for r in s.rows}
    assert shapes["features.denseblock4"] == (1, 1024, 7, 7)
    assert shapes["features.transition1"] == (1, 128, 28, 28)
    assert shapes[names[-1]] == (1, 2)
    assert round(s.macs / 1e9, 2) == 2.83  # torchvision's published "2.83 GFLOPS" for DenseNet-121 are MACs
    text = str(s)
    assert "6,989,714" in text and "MACs" in text


def test_summary_counts_frozen_parameters_and_grayscale() -> None:
    model = create_model("se_densenet_tiny", num_classes=3, in_chans=1)
    for p in model.features.parameters():
        p.requires_grad_(False)
    s = summary(model, (20, 30))
    assert s.input_shape == (1, 1, 20, 30)
    assert s.trainable_params == sum(p.numel() for p in model.classifier.parameters())
    assert s.trainable_params + s.non_trainable_params == s.total_params


def test_cli_summary_and_models(capsys: pytest.CaptureFixture) -> None:
    assert main(["summary", "keras_se_densenet201", "--num-classes", "2"]) == 0
    out = capsys.readouterr().out
    assert "18,160,146" in out and "features.se_head" in out
    assert main(["models", "bc_100", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "769,162" in out and "densenet121" not in out


def test_models_table_sizes_its_columns_from_the_content() -> None:
    """The tiny preset's SE placement is the longest cell of its column: the description still starts two spaces
    after it (the text ``sedensenet models`` printed ran them together)."""
    lines = str(models_table("tiny", num_classes=10)).splitlines()
    assert lines[0].split() == ["name", "params", "GMACs", "size", "SE", "placement", "description"]
    assert lines[2] == (
        "se_densenet_tiny   2,570  0.0003    16  head,block,transition,layer  "
        "tiny SE-DenseNet with SE in every placement, for tests and smoke runs"
    )


def test_cli_errors_are_messages_not_tracebacks(capsys: pytest.CaptureFixture) -> None:
    assert main(["summary", "densenet122"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'densenet122'" in err and "Traceback" not in err


def test_python_dash_m_and_hub(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "sedensenet", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("sedensenet ")
    repo = Path(__file__).resolve().parents[2]
    model = torch.hub.load(str(repo), "se_densenet121", source="local", num_classes=2)
    assert model.num_classes == 2 and len(model.se_modules()) == 4
