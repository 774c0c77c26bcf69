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


def test_old_metadata_has_no_evaluation_and_is_written_back_unchanged() -> None:
    """A checkpoint from before the stored evaluation loads with ``evaluation=None``; written back, its metadata keeps
    every stored value and gains no ``evaluation`` key, so files without one stay readable by earlier versions."""
    from safetensors import safe_open

    from sedensenet.checkpoint import meta_to_json

    path = FIXTURE / "se_densenet_tiny.safetensors"
    with safe_open(str(path), framework="pt") as f:
        stored = json.loads(f.metadata()["sedensenet"])
    _, meta = read_checkpoint(path)
    assert "evaluation" not in stored and meta.evaluation is None
    written = json.loads(meta_to_json(meta))
    assert "evaluation" not in written and {k: written[k] for k in stored} == stored


def test_an_evaluation_survives_the_round_trip_typed() -> None:
    from sedensenet.checkpoint import (
        CheckpointMeta,
        Estimate,
        EvaluationSummary,
        SplitEvaluation,
        meta_from_json,
        meta_to_json,
    )

    test = SplitEvaluation(
        split="test", label="test (evaluated once, with what validation chose)", images=40,
        accuracy=Estimate(0.9, [0.8, 0.975]), balanced_accuracy=Estimate(0.875, [0.75, 0.95]),
        sensitivity=Estimate(1.0, [1.0, 1.0]), ppv=Estimate(0.8), ece=0.05, ece_before=0.12,
    )  # fmt: skip
    val = SplitEvaluation(split="val", label="validation (used for selection)", images=30,
                          accuracy=Estimate(0.95), balanced_accuracy=Estimate(None))  # fmt: skip
    evaluation = EvaluationSummary(splits=[test, val], positive="b", threshold=0.3, rule="youden",
                                   chosen_on="validation", temperature=1.5, calibrate="temperature")  # fmt: skip
    meta = CheckpointMeta(model={}, classes=["a", "b"], evaluation=evaluation)
    back = meta_from_json(meta_to_json(meta), "x")
    assert back == meta and back.evaluation is not None
    assert (
        isinstance(back.evaluation.headline.sensitivity, Estimate)
        and back.evaluation.headline is back.evaluation.splits[0]
    )
