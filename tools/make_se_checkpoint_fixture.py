"""Write a small SE-DenseNet checkpoint and the logits it gives, as a fixture for checkpoint compatibility.

The checkpoint was written by the code *before* the SE gate became a submodule hook point (issue 10); the test
``tests/models/test_checkpoint_compat.py`` loads it with the current code and compares the logits, so any change
to state-dict keys or to what the modules compute shows up there. Rerunning this script replaces the fixture
with one written by the current code, which defeats that purpose: only do it when the format changes on purpose.

Outputs (``tests/fixtures/checkpoints/`` by default):

- ``se_densenet_tiny.safetensors``  ``se_densenet_tiny`` (SE at head, block, transition and layer), 3 classes,
  seeded weights and BatchNorm statistics moved by two training-mode passes, saved by ``save_checkpoint``;
- ``se_densenet_tiny.json``  the input's recipe (:func:`fixture_input`) and the eval-mode logits, reference path
  and fast path.

Usage: ``PYTHONPATH=src python tools/make_se_checkpoint_fixture.py [OUT_DIR]``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from sedensenet.checkpoint import CheckpointMeta, save_checkpoint
from sedensenet.models import create_model, set_fast

CLASSES = ["amarillo", "蓝色", "verde"]
IMAGE_SIZE = 32


def fixture_input(batch: int = 2, size: int = IMAGE_SIZE) -> torch.Tensor:
    """A fixed ``(batch, 3, size, size)`` float32 input from a closed formula (no random generator involved)."""
    n = batch * 3 * size * size
    i = torch.arange(n, dtype=torch.float64)
    return (torch.sin(i * 0.37) * torch.cos(i * 0.0011)).reshape(batch, 3, size, size).float()


def main(out_dir: Path) -> None:
    torch.manual_seed(10)
    model = create_model("se_densenet_tiny", num_classes=len(CLASSES))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # move BN affine and SE/classifier biases away from their init
        model.classifier.weight.normal_(0, 1)  # logits that tell the two inputs apart clearly
        model.train()
        for _ in range(2):
            model(torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE))  # running statistics away from 0 / 1
    model.eval()
    x = fixture_input()
    with torch.no_grad():
        fast = model(x)
        set_fast(model, False)
        reference = model(x)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = CheckpointMeta(model=model.config.to_dict(), classes=CLASSES, image_size=IMAGE_SIZE)
    save_checkpoint(out_dir / "se_densenet_tiny.safetensors", model, meta)
    record = {
        "input": "i = arange(2*3*32*32, float64); (sin(i * 0.37) * cos(i * 0.0011)).reshape(2, 3, 32, 32).float()",
        "logits_reference": reference.tolist(),
        "logits_fast": fast.tolist(),
        "torch": torch.__version__,
    }
    (out_dir / "se_densenet_tiny.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "tests/fixtures/checkpoints")
