"""The ``sedensenet`` command: a thin table of subcommands over the Python API.

Each subcommand parses its flags, calls one API function and prints the result for a person;
nothing else happens here.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import csv
import dataclasses
import inspect
import io
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sedensenet import __version__
from sedensenet.config import CHOICES, DEFAULT_MODEL, INFERENCE_BACKENDS, ConfigError
from sedensenet.errors import UserError

log = logging.getLogger("sedensenet")

REPORT_BUGS_AT = "the sedensenet issue tracker"
"""Where a bug is reported when the package's metadata names no ``Project-URL: Issues`` (pyproject's
``[project.urls]``)."""


def _field_docs(cls: type) -> dict[str, str]:
    """The one-line docstrings under each dataclass field (used as the flags' help)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())  # type: ignore[union-attr]
    return docs


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; only flags the user gives override (default=SUPPRESS)."""
    from sedensenet.config import TrainConfig

    docs = _field_docs(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": f"{docs.get(f.name, '')} (default: {f.default})"}
        if f.type == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = {"int": int, "float": float}.get(str(f.type), str)
            if f.name in CHOICES:
                kw["choices"] = CHOICES[f.name]
        parser.add_argument(flag, dest=f.name, **kw)


def cmd_train(args: argparse.Namespace) -> int:
    """Train a DenseNet / SE-DenseNet on a folder of images (or builtin:digits, builtin:faces)."""
    from sedensenet.api import train

    overrides = {k: v for k, v in vars(args).items() if k not in _COMMON}
    if args.devices and args.devices > 1:
        from sedensenet.engine.launch import launch_torchrun

        return launch_torchrun(args.devices, sys.argv[1:] if args.argv is None else args.argv)
    result = train(config=args.config, resume=args.resume, progress=not args.quiet, **overrides)
    h = result.history.history
    best = result.best_epoch
    print(f"\nRun folder: {result.run_dir}")
    if h["val_accuracy"] and best:
        i = result.history.epoch.index(best)
        print(f"Best epoch {best}: val_accuracy {h['val_accuracy'][i]:.4f}, val_loss {h['val_loss'][i]:.4f}")
    print(f"Checkpoint: {result.best_checkpoint}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint (or run folder) on a labelled image folder and write the reports."""
    from sedensenet.api import evaluate, resolve_checkpoint

    out = args.output or (resolve_checkpoint(args.checkpoint).parent.parent / f"eval_{args.split}")
    report = evaluate(args.checkpoint, args.data, split=args.split, output=out, batch_size=args.batch_size,
                      device=args.device, backend=args.backend, amp=args.amp)  # fmt: skip
    print(report.format_table())
    print(f"accuracy {report.accuracy:.4f}" + (f", ROC-AUC {report.roc_auc:.4f}" if report.roc_auc else ""))
    print(f"Reports: {out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Classify images or folders of images with a checkpoint (or run folder, or exported .onnx file)."""
    from sedensenet.api import predict, probabilities_to_rows

    preds = predict(
        args.checkpoint, args.images, top_k=args.top_k, batch_size=args.batch_size, device=args.device,
        backend=args.backend, amp=args.amp,
    )  # fmt: skip
    rows = probabilities_to_rows(preds)
    if args.output:
        _write_rows(Path(args.output), rows)
        print(f"{len(rows)} predictions written to {args.output}")
    for p in preds:
        if p.error:
            print(f"{p.path}\tERROR: {p.error}")
        else:
            print(f"{p.path}\t" + "  ".join(f"{c} {s:.4f}" for c, s in p.top_k))
    return 1 if all(p.error for p in preds) else 0


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    from sedensenet.fileio import atomic_write_json, atomic_write_text

    if path.suffix.lower() == ".json":
        atomic_write_json(path, rows)
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["path"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def cmd_summary(args: argparse.Namespace) -> int:
    """Print a model's stages, output shapes, parameters and MACs/FLOPs (like Keras' model.summary())."""
    from sedensenet import create_model
    from sedensenet.model_summary import summary

    model = create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans)
    print(summary(model, args.image_size, title=f"{args.model} ({args.num_classes} classes)"))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """List the model presets with parameters and GFLOPs (MACs) at their default input size."""
    import torch

    from sedensenet.model_summary import count_macs
    from sedensenet.models import create_model, get_preset, list_models

    print(f"{'name':<24}{'params':>14}{'GMACs':>9}{'size':>6}  {'SE placement':<18}description")
    for name in list_models(args.filter):
        preset = get_preset(name)
        model = create_model(name, num_classes=args.num_classes)
        size = preset.default_image_size
        macs = count_macs(model, torch.zeros(1, 3, size, size))
        params = sum(p.numel() for p in model.parameters())
        se = ",".join(model.config.se_placement) or "-"
        print(f"{name:<24}{params:>14,}{macs / 1e9:>9.3f}{size:>6}  {se:<18}{preset.description}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Train several models on the same split, settings and seeds; write a table and the validation curves."""
    from sedensenet.compare import compare

    overrides = {k: v for k, v in vars(args).items() if k not in _COMMON | {"models", "seeds", "model", "data"}}
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    result = compare(args.data, models, seeds=args.seeds, **overrides)
    print(result.markdown())
    print(f"\nTable, CSV and val_curves.png in {result.out_dir}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX or TorchScript, verified against the eager model on the spot."""
    from sedensenet.export import export_model

    res = export_model(args.checkpoint, format=args.format, output=args.output, opset=args.opset,
                       image_size=args.image_size)  # fmt: skip
    diff = "not verified" if res.max_abs_diff is None else f"max abs difference vs eager {res.max_abs_diff:.2e}"
    print(f"{res.format} written: {res.path} ({diff}, {res.seconds:.1f} s)")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Grad-CAM heat-maps for images, and the SE channel weights each class receives on a data folder."""
    from sedensenet.checkpoint import resolve_checkpoint
    from sedensenet.explain import explain_images, se_channel_weights

    if not args.images and not args.data:
        raise ConfigError("give image files or folders for Grad-CAM, and/or --data DIR for the SE channel weights")
    out = Path(args.output) if args.output else resolve_checkpoint(args.checkpoint).parent.parent / "explain"
    if args.images:
        res = explain_images(args.checkpoint, args.images, out, target=args.target, method=args.method,
                             device=args.device)  # fmt: skip
        for item in res.images:
            print(f"{item.source}\tpred {item.predicted} ({item.probability:.3f})\t-> {item.output}")
        for path, reason in res.skipped:
            print(f"{path}\tSKIPPED: {reason}")
        print(f"Grid: {res.grid}")
    if args.data:
        se = se_channel_weights(args.checkpoint, args.data, out, split=args.split, se_layer=args.se_layer,
                                device=args.device)  # fmt: skip
        print(f"SE layer {se.layer}: {se.matrix.shape[1]} channels x {len(se.classes)} classes")
        for d in se.distances:
            print("  " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items()))
        print("Files: " + ", ".join(str(p) for p in se.paths.values()))
    return 0


def cmd_convert_keras(args: argparse.Namespace) -> int:
    """Convert the tutorial's Keras model (.h5, .weights.h5 or .keras) into a sedensenet checkpoint."""
    from sedensenet.keras_convert import convert_keras_file

    out = convert_keras_file(
        args.file,
        args.output,
        model=args.model,
        num_classes=args.num_classes,
        blocks=_int_list("--blocks", args.blocks) if args.blocks else None,
        classes=[c.strip() for c in args.classes.split(",")] if args.classes else None,
        image_size=args.image_size,
    )
    print(f"Checkpoint written: {out}")
    return 0


def _int_list(flag: str, text: str) -> list[int]:
    """``"6,12,24,16"`` as integers; a :class:`ConfigError` naming the flag otherwise."""
    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated whole numbers, e.g. 6,12,24,16; got {text!r}") from None


_COMMON = {"command", "func", "config", "resume", "quiet", "verbose", "devices", "argv"}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("-v", "--verbose", action="store_true", help="debug output")


def _add_inference_flags(p: argparse.ArgumentParser) -> None:
    """Batch size, device and inference backend: the flags evaluate and predict share."""
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--backend", default="auto", choices=INFERENCE_BACKENDS,
        help="auto: ONNX Runtime on CPU for 256+ images when installed, else the eager fast path; "
        "reference: the unoptimised modules",
    )  # fmt: skip
    p.add_argument(
        "--amp", default="auto", choices=CHOICES["amp"],
        help="auto: bf16 on CPUs with bf16 matrix units (AVX512-BF16/AMX) and on GPUs, else fp32; off: fp32",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sedensenet",
        description="DenseNet and SE-DenseNet image classification: train, evaluate, predict, export, explain.",
    )
    parser.add_argument("--version", action="version", version=f"sedensenet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        doc = (func.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc.splitlines()[0], description=doc)
        p.set_defaults(func=func)
        _add_common(p)
        return p

    p = command("train", cmd_train)
    p.add_argument("--config", help="YAML file of settings (a run folder's config.yaml re-runs that run)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last completed epoch")
    p.add_argument("--devices", type=int, default=0, help="processes to launch with torchrun (DDP), e.g. 2 GPUs")
    p.set_defaults(argv=None)
    add_train_flags(p)

    p = command("evaluate", cmd_evaluate)
    p.add_argument("checkpoint", help="checkpoint .safetensors or run folder")
    p.add_argument("--data", required=True, help="labelled image folder (class sub-folders) or builtin:NAME")
    p.add_argument("--split", default="auto", choices=("auto", "train", "val", "test", "all"))
    p.add_argument("--output", help="folder for the reports (default: RUN/eval_SPLIT)")
    _add_inference_flags(p)

    p = command("predict", cmd_predict)
    p.add_argument("checkpoint", help="checkpoint .safetensors, run folder or exported .onnx")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--output", help="write predictions to a .csv or .json file")
    _add_inference_flags(p)

    p = command("summary", cmd_summary)
    p.add_argument("model", help="preset name (see 'sedensenet models')")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--in-chans", type=int, default=3)

    p = command("export", cmd_export)
    p.add_argument("checkpoint", help="checkpoint .safetensors or run folder")
    p.add_argument("--format", default="onnx", choices=("onnx", "torchscript"))
    p.add_argument("--output", help="file to write (default: beside the checkpoint)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (17 or newer)")
    p.add_argument("--image-size", type=int, help="size of the example input (default: the checkpoint's)")

    p = command("explain", cmd_explain)
    p.add_argument("checkpoint", help="checkpoint .safetensors or run folder")
    p.add_argument("images", nargs="*", help="images or folders to explain with Grad-CAM")
    p.add_argument("--method", default="gradcam", choices=("gradcam",))
    p.add_argument("--target", help="class name (or index) to explain; default: the predicted class")
    p.add_argument("--data", help="labelled folder: mean SE gate per channel for each class (se_weights.png)")
    p.add_argument("--split", default="all", choices=("auto", "train", "val", "test", "all"))
    p.add_argument("--se-layer", help="SE module to read (default: the last one, e.g. features.se_head)")
    p.add_argument("--output", help="folder for the outputs (default: RUN/explain)")
    p.add_argument("--device", default="auto")

    p = command("compare", cmd_compare)
    p.add_argument("--models", required=True, help="comma-separated presets, e.g. densenet121,keras_se_densenet121")
    p.add_argument("--seeds", type=int, default=3, help="runs per model (seed, seed+1, ...); the split stays fixed")
    add_train_flags(p)
    p.set_defaults(name="compare")

    p = command("convert-keras", cmd_convert_keras)
    p.add_argument("file", help="Keras file: tf.keras 2 .h5 (model or weights), Keras 3 .weights.h5, or .keras")
    p.add_argument("--output", required=True, help="checkpoint to write (.safetensors)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="preset the Keras model corresponds to")
    p.add_argument("--num-classes", type=int, help="classes of the Keras model (read from the file by default)")
    p.add_argument("--blocks", help="the tutorial's block list, e.g. 6,12,48,32 (read from the file by default)")
    p.add_argument("--classes", help="class names in index order, comma-separated (Keras files do not store them)")
    p.add_argument("--image-size", type=int, help="input size (read from the file when it has a model config)")

    p = command("models", cmd_models)
    p.add_argument("filter", nargs="?", default="", help="only names containing this")
    p.add_argument("--num-classes", type=int, default=1000)
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(level)  # on the handler: train.log's file handler may lower the logger to INFO
    root = logging.getLogger("sedensenet")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sedensenet`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "argv"):
        args.argv = argv
    _configure_logging(args)
    if args.command in ("train", "evaluate", "predict", "compare", "explain"):
        from sedensenet import inference

        inference.MALLOC_TUNING_ALLOWED = True  # training tunes unless memory-efficient (session.prepare)
        if args.command in ("evaluate", "predict", "explain"):
            log.debug("%s", inference.tune_malloc())  # 1.3-1.6x faster CPU inference under glibc
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `sedensenet models | head`
        sys.stdout = None  # type: ignore[assignment]
        return 0
    except UserError as e:  # the user's to fix (data, settings, files, a full disk, NaN loss): one line
        exit_code = getattr(e, "exit_code", None)
        if isinstance(exit_code, int):  # TrainingInterrupted: saved; the message says how to resume (130/143)
            print(f"\n{e}", file=sys.stderr)
            return exit_code
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno is None:
            return _report_bug(e, verbose=args.verbose)
        print(f"error: {e}", file=sys.stderr)  # a full disk, a missing file, no permission: the machine's state
        return 2
    except Exception as e:  # anything else is a bug of ours: say so, and how to report it
        return _report_bug(e, verbose=args.verbose)


def _report_bug(error: Exception, *, verbose: bool) -> int:
    """Print an unexpected error as a bug: its traceback under ``-v``, else one line; with where to report it."""
    if verbose:
        traceback.print_exception(error)
    else:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
    hint = "" if verbose else "run again with -v for the traceback and "
    print(f"this is a bug in sedensenet; {hint}report it at {_issues_url()}", file=sys.stderr)
    return 1


def _issues_url() -> str:
    """The issue tracker named in the installed package's metadata, else :data:`REPORT_BUGS_AT`."""
    from importlib import metadata

    with contextlib.suppress(metadata.PackageNotFoundError):
        for entry in metadata.metadata("sedensenet").get_all("Project-URL") or []:
            label, _, url = entry.partition(",")
            if label.strip().lower() in ("issues", "bug tracker", "tracker") and url.strip():
                return url.strip()
    return REPORT_BUGS_AT


if __name__ == "__main__":
    sys.exit(main())
