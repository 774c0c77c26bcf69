"""One short, prepared check of every CUDA path, for a lent GPU (issue 17). Run from the repository root:

    PYTHONPATH=src python benchmarks/gpu_check.py --output $OUT            # on the GPU machine (~4 minutes)
    PYTHONPATH=src python benchmarks/gpu_check.py --device cpu --quick     # dry run of the script itself here

It installs nothing and needs no network: the data are generated folders. Each check prints one line
``PASS``/``FAIL``/``SKIP name: detail`` and the script exits non-zero when any check fails. In order:

1. parity: the fast paths against the reference modules on the device: fp32 outputs at 1e-4 (default and
   memory-efficient training, one-buffer inference) and float64 gradients of the shared-storage backward at 1e-9;
   under AMP bf16 the outputs within bf16's rounding (2% of the output's scale);
2. amp: ``sedensenet train`` for 2 epochs with ``--amp bf16`` and with ``--amp fp16`` (the gradient scaler),
   then ``--resume`` to a third epoch; ``predict`` and ``evaluate`` on the run;
3. oom: a resume with a batch far too large for the GPU must end in the tool's advice (exit 2, "ran out of
   memory") with the epoch-1 checkpoint unchanged;
4. bench: ``benchmarks/bench.py --device cuda`` restricted to the issue's targets (train 224/64, infer 224/128),
   its markdown and raw JSON written beside this script's log.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS: list[dict[str, str]] = []


def check(name: str) -> Callable[[Callable[..., str]], Callable[..., None]]:
    """Run the function as one named check: its return value is the PASS detail; any exception is a FAIL."""

    def wrap(fn: Callable[..., str]) -> Callable[..., None]:
        def run(*args: object) -> None:
            start = time.perf_counter()
            try:
                status, detail = "PASS", fn(*args)
            except SkipCheck as e:
                status, detail = "SKIP", str(e)
            except Exception as e:  # the script reports every failure and goes on to the next check
                status, detail = "FAIL", f"{type(e).__name__}: {e}"
            seconds = time.perf_counter() - start
            RESULTS.append({"check": name, "status": status, "detail": detail, "seconds": f"{seconds:.1f}"})
            print(f"{status} {name} ({seconds:.0f} s): {detail}", flush=True)

        return run

    return wrap


class SkipCheck(Exception):
    """The check cannot run here (e.g. bf16 on a GPU without it)."""


def make_folder(root: Path, per_class: int, size: int) -> Path:
    """Two learnable classes (bright top vs bright bottom), Chinese class names as users have them."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(("狗", "猫")):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
            half = slice(0, size // 2) if label == 0 else slice(size // 2, size)
            arr[half] = np.clip(arr[half].astype(int) + 150, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / f"{i}.png")
    return root


def cli(args: list[str], *, expect: int = 0, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m sedensenet ARGS`` in a child process; its exit status must be ``expect``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "sedensenet", *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if proc.returncode != expect:
        raise RuntimeError(f"`sedensenet {' '.join(args)}` exited {proc.returncode}: {proc.stderr[-1500:]}")
    return proc


@check("parity")
def parity(device: str) -> str:
    import torch
    from torch.testing import assert_close

    from sedensenet import create_model
    from sedensenet.models.densenet import set_fast

    dev = torch.device(device)
    details = []
    for memory_efficient in (False, True):
        for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-9)):
            torch.manual_seed(0)
            fast = create_model("keras_se_densenet121", num_classes=2, memory_efficient=memory_efficient)
            ref = create_model("keras_se_densenet121", num_classes=2)
            ref.load_state_dict(fast.state_dict())
            set_fast(ref, False)
            fast, ref = fast.to(dev, dtype), ref.to(dev, dtype)
            x = torch.randn(4, 3, 64, 64, device=dev, dtype=dtype)
            outs = []
            for model in (ref, fast):
                model.train()
                xg = x.clone().requires_grad_(True)
                out = model(xg)
                (out.square().sum() + out[:, 0].sum()).backward()
                outs.append((out.detach(), xg.grad, model.features.conv0.weight.grad))
            assert_close(outs[1][0], outs[0][0], atol=tol, rtol=tol)
            if dtype == torch.float64:  # fp32 gradients may flip a ReLU mask at rounding distance (see tests)
                assert_close(outs[1][1], outs[0][1], atol=tol, rtol=tol)
                assert_close(outs[1][2], outs[0][2], atol=tol, rtol=tol)
            details.append(f"{'memory_efficient' if memory_efficient else 'default'} {str(dtype)[6:]} ok")
    with torch.inference_mode():
        fast.eval(), ref.eval()
        x = torch.randn(8, 3, 96, 96, device=dev, dtype=torch.float64)
        assert_close(fast(x), ref(x), atol=1e-9, rtol=1e-9)
        if dev.type == "cuda" and torch.cuda.is_bf16_supported():
            fast, ref, x = fast.float(), ref.float(), x.float()
            with torch.autocast("cuda", torch.bfloat16):
                a, b = fast(x).float(), ref(x).float()
            scale = b.abs().max().item()
            assert (a - b).abs().max().item() <= 0.02 * scale + 1e-3, "bf16 inference outside bf16 rounding"
            details.append("inference bf16 ok")
    details.append("inference float64 ok")
    return ", ".join(details)


@check("amp")
def amp(device: str, work: Path, quick: bool) -> str:
    import torch

    data = make_folder(work / "data", per_class=16 if quick else 64, size=64)
    kinds = ["bf16", "fp16"] if device == "cuda" else ["off"]
    if device == "cuda" and not torch.cuda.is_bf16_supported():
        kinds.remove("bf16")
    done = []
    for kind in kinds:
        name = f"amp_{kind}"
        common = ["--project", str(work / "runs"), "--device", device, "-q"]
        model = "se_densenet_tiny" if quick else "keras_se_densenet121"
        cli(["train", "--data", str(data), "--model", model, "--image-size", "64", "--batch-size", "16",
             "--epochs", "2", "--amp", kind, "--name", name, *common])  # fmt: skip
        run = work / "runs" / name
        cli(["train", "--resume", str(run), "--epochs", "3", "-q"])
        history = (run / "history.csv").read_text(encoding="utf-8").strip().splitlines()
        assert len(history) == 4, f"{name}: history has {len(history) - 1} epochs after the resume, not 3"
        cli(["predict", str(run), str(data), "--output", str(work / f"{name}.csv"), "--device", device, "-q"])
        cli(["evaluate", str(run), "--data", str(data), "--device", device, "-q"])
        metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        done.append(f"{kind}: 3 epochs with a resume, predict and evaluate ({metrics.get('accuracy', '?')})")
    return "; ".join(done)


@check("oom")
def oom(device: str, work: Path) -> str:
    if device != "cuda":
        raise SkipCheck("a real out-of-memory needs the GPU")
    data = make_folder(work / "oom_data", per_class=300, size=32)
    run = work / "runs" / "oom"
    cli(["train", "--data", str(data), "--model", "keras_se_densenet201", "--image-size", "512", "--batch-size", "8",
         "--epochs", "1", "--project", str(work / "runs"), "--name", "oom", "--device", "cuda", "-q",
         ], timeout=400)  # fmt: skip
    before = hashlib.sha256((run / "weights" / "last.safetensors").read_bytes()).hexdigest()
    # --memory-efficient off pins the default path: auto would see the batch cannot fit and refuse it up front.
    proc = cli(["train", "--resume", str(run), "--epochs", "2", "--batch-size", "600", "--memory-efficient", "off"],
               expect=2, timeout=400)  # fmt: skip
    assert "ran out of memory" in proc.stderr, proc.stderr[-800:]
    after = hashlib.sha256((run / "weights" / "last.safetensors").read_bytes()).hexdigest()
    assert before == after, "the epoch-1 checkpoint changed after the out-of-memory"
    return proc.stderr.strip().splitlines()[-1][:300]


@check("bench")
def bench(device: str, out: Path, quick: bool) -> str:
    args = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--device", device, "--output",
            str(out / f"gpu_bench_{device}.md"), "--no-compile"]  # fmt: skip
    args += ["--only", "train 224/64|infer 224/128"] if device == "cuda" else ["--quick", "--only", "infer"]
    if quick:
        args += ["--steps", "2"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env={**os.environ})
    (out / "gpu_bench.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode:
        raise RuntimeError(f"bench.py exited {proc.returncode}: {proc.stderr[-800:]}")
    return f"table in {out / f'gpu_bench_{device}.md'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--output", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    parser.add_argument("--quick", action="store_true", help="tiny model and data (a dry run of the script)")
    parser.add_argument("--skip", default="", help="comma-separated checks to skip: parity,amp,oom,bench")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    work = args.output / "work"
    skip = set(filter(None, args.skip.split(",")))
    import torch

    print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}", flush=True)
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name(0)}", flush=True)
    steps = {
        "parity": lambda: parity(args.device),
        "amp": lambda: amp(args.device, work, args.quick),
        "oom": lambda: oom(args.device, work),
        "bench": lambda: bench(args.device, args.output, args.quick),
    }
    for name, run in steps.items():
        if name not in skip:
            run()
    (args.output / "gpu_check.json").write_text(json.dumps(RESULTS, indent=1, ensure_ascii=False), encoding="utf-8")
    return int(any(r["status"] == "FAIL" for r in RESULTS))


if __name__ == "__main__":
    sys.exit(main())
