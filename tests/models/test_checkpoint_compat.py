"""A checkpoint written by an earlier version still loads, with the same keys and the same logits.

The fixture (``tests/fixtures/checkpoints/``) was written by ``tools/make_se_checkpoint_fixture.py`` before the SE
gate became a hookable submodule (issue 10): SE at every placement, three classes (one with a non-ASCII name).
"""

import json
from pathlib import Path

import torch
from torch.testing import assert_close

from sedensenet.checkpoint import load_checkpoint, read_checkpoint
from sedensenet.models import create_model, set_fast

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints"


def _fixture_input() -> torch.Tensor:
    """The recipe recorded in the fixture's JSON: a closed formula, no random generator."""
    i = torch.arange(2 * 3 * 32 * 32, dtype=torch.float64)
    return (torch.sin(i * 0.37) * torch.cos(i * 0.0011)).reshape(2, 3, 32, 32).float()


def test_old_se_checkpoint_loads_with_the_same_keys_and_logits() -> None:
    expected = json.loads((FIXTURE / "se_densenet_tiny.json").read_text(encoding="utf-8"))
    path = FIXTURE / "se_densenet_tiny.safetensors"
    tensors, _ = read_checkpoint(path)
    assert set(tensors) == set(create_model("se_densenet_tiny", num_classes=3).state_dict())
    assert "features.se_head.fc1.weight" in tensors and "features.denseblock1.denselayer1.se.fc2.bias" in tensors

    model, meta = load_checkpoint(path)
    assert meta.classes == ["amarillo", "蓝色", "verde"]
    x = _fixture_input()
    with torch.no_grad():
        fast = model(x)
        set_fast(model, False)
        reference = model(x)
    assert_close(fast, torch.tensor(expected["logits_fast"]), rtol=0, atol=1e-5)
    assert_close(reference, torch.tensor(expected["logits_reference"]), rtol=0, atol=1e-5)
    assert (fast[0] - fast[1]).abs().max() > 1e-3  # the two inputs are told apart, so the comparison means something
