"""Which dense-block path default training should take on CPU, per precision: the incremental block (the reference
layers' modules, features concatenated one layer at a time, in channels_last) against the shared-storage block
(one autograd node per block, :mod:`sedensenet.models.fast_memeff`), with the torchvision twin as the yardstick.

One process, one thread, every step timed by this process's CPU time (steady on a machine shared with other
work), the models stepping in turn with the order reversed every other round. Rows:

- ``twin``: ``torchvision.models.DenseNet`` built to the preset's topology;
- ``incremental``: our preset with every block on the incremental path;
- ``shared blocks``: the same model with only its dense blocks on the shared-storage path (their layers'
  ``memory_efficient`` set; stem and transitions as in ``incremental``);
- ``memory-efficient``: ``memory_efficient=True`` (blocks, stem and transitions as single nodes).

    python benchmarks/train_path.py --model densenet121 --size 128 --batch 32 --precision float32 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _worker import twin  # noqa: E402
from bench import adam_step, interleaved_cpu_seconds, machine, median_ratio  # noqa: E402
from matrix import NUM_CLASSES, bf16_units  # noqa: E402

from sedensenet import create_model  # noqa: E402
from sedensenet.models.densenet import DenseLayer  # noqa: E402


def shared_blocks(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its dense blocks on the shared-storage path and everything else as it was."""
    for module in model.modules():
        if isinstance(module, DenseLayer):
            module.memory_efficient = True
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", choices=("float32", "bf16"), default="float32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--tune-malloc",
        action="store_true",
        help="glibc tuned as `sedensenet train` tunes it "
        "(every row in this process: fewer page faults for paths that allocate afresh each step)",
    )
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    if args.tune_malloc:
        from sedensenet.inference import tune_malloc

        print(tune_malloc(), file=sys.stderr)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    bf16 = args.precision == "bf16"
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, NUM_CLASSES, (args.batch,))
    tv = twin(args.model, num_classes=NUM_CLASSES, memory_efficient=False)
    models = {
        "twin": tv,
        "incremental": create_model(args.model, num_classes=NUM_CLASSES),
        "shared blocks": shared_blocks(create_model(args.model, num_classes=NUM_CLASSES)),
        "memory-efficient": create_model(args.model, num_classes=NUM_CLASSES, memory_efficient=True),
    }
    steps = {name: adam_step(model, x, y, bf16) for name, model in models.items()}
    load = Path("/proc/loadavg").read_text().split()[:3]
    seconds = interleaved_cpu_seconds(steps, args.rounds)  # the warm-up builds oneDNN's kernels, grows the scratch
    ratios = {n: median_ratio(seconds["twin"], seconds[n]) for n in steps}
    result = {
        "machine": machine(), "bf16_units": bf16_units(), "model": args.model, "size": args.size,
        "batch": args.batch, "precision": args.precision, "rounds": args.rounds, "threads": 1, "clock": "cpu",
        "tune_malloc": args.tune_malloc,
        "command": " ".join(["python", "benchmarks/train_path.py", *(argv if argv is not None else sys.argv[1:])]),
        "loadavg_before": load, "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
        "cpu_seconds": seconds, "ratio_to_twin": ratios,
        "images_per_s": {n: args.batch / statistics.median(s) for n, s in seconds.items()},
    }  # fmt: skip
    text = json.dumps(result, indent=1)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    print(json.dumps({"ratio_to_twin": ratios, "images_per_s": result["images_per_s"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
