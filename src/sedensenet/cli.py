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
from sedensenet.config import CHOICES, DEFAULT_MODEL, INFERENCE_BACKENDS, TTA_MODES, ConfigError
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
    from sedensenet.config import CHOICES, OUTPUT_FIELDS, TrainConfig

    docs = _field_docs(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in OUTPUT_FIELDS:
            continue
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": f"{docs.get(f.name, '')} (default: {f.default})"}
        if f.name == "memory_efficient":  # on/off/auto; the bare flag (and --no-...) as when it was a switch
            kw.update(nargs="?", const="on", choices=CHOICES[f.name], metavar="{auto,on,off}")
            parser.add_argument("--no-memory-efficient", dest=f.name, action="store_const", const="off",
                                default=argparse.SUPPRESS, help="the same as --memory-efficient off")  # fmt: skip
        elif f.type == "bool":
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
    result = train(config=args.config, resume=args.resume, verbose=0, progress=not args.quiet, **overrides)
    h = result.history.history
    best = result.best_epoch
    print(f"\nRun folder: {result.run_dir}")
    if h["val_accuracy"] and best:
        i = result.history.epoch.index(best)
        print(f"Best epoch {best}: val_accuracy {h['val_accuracy'][i]:.4f}, val_loss {h['val_loss'][i]:.4f}")
    _print_final_metrics(result.metrics)
    print(f"Checkpoint: {result.best_checkpoint}")
    return 0


def _print_final_metrics(metrics: dict[str, Any]) -> None:
    """Each evaluated split's figures with intervals, under the label that says how far to trust them."""
    from sedensenet.reports import ClassificationReport

    for split in ("val", "test"):
        if split not in metrics:
            continue
        data = metrics[split]
        report = ClassificationReport.from_dict(data)
        title = f"{data.get('label', split)}, {report.num_samples} images:"
        print("\n" + report.format_summary(title), end="")
    decision = next((m["decision"] for m in metrics.values() if m.get("decision")), None)
    if decision and decision.get("chosen_on"):
        print(f"threshold {decision['threshold']}, calibration {decision['calibrate']}: chosen on validation "
              f"with {decision['inference']}, stored in the checkpoint and applied by predict")  # fmt: skip


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint (or run folder) on a labelled image folder and write the reports."""
    from sedensenet.api import evaluate, resolve_checkpoint
    from sedensenet.engine.tta import view_count

    out = args.output or (resolve_checkpoint(args.checkpoint).parent.parent / f"eval_{args.split}")
    report = evaluate(args.checkpoint, args.data, split=args.split, output=out, batch_size=args.batch_size,
                      device=args.device, backend=args.backend, dedupe=args.dedupe, tta=args.tta,
                      amp=args.amp,
                      positive=args.positive)  # fmt: skip
    print(report.format_text())
    tta = "" if args.tta == "none" else f" (TTA {args.tta}: mean of {view_count(args.tta)} views)"
    print(f"accuracy {report.accuracy:.4f}" + (f", ROC-AUC {report.roc_auc:.4f}" if report.roc_auc else "") + tta)
    print(f"Reports: {out}")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    """Check a data folder before training: counts, image properties, unusable files, duplicates and leaks."""
    from sedensenet.api import check_data

    result = check_data(args.data, output=args.output, near_distance=args.near_distance, project=args.project,
                        groups=args.groups)  # fmt: skip
    check = result.check
    print(f"{check.root}: {len(check.files)} usable images in {len(check.classes)} classes, "
          f"{len(check.skipped)} files skipped, {len(check.pairs)} duplicate pairs")  # fmt: skip
    for verdict in check.verdicts:
        print(f"- {verdict.message}")
    print(f"Report: {result.files['data_report.md']}")
    return 1 if any(v.problem != "none" for v in check.verdicts) and args.strict else 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Classify images or folders of images with a checkpoint (or run folder, or exported .onnx file)."""
    from sedensenet.api import predict, probabilities_to_rows
    from sedensenet.engine.distributed import launched_by_torchrun

    if args.resume or launched_by_torchrun():
        return _predict_sharded(args)
    preds = predict(
        args.checkpoint, args.images, top_k=args.top_k, batch_size=args.batch_size, device=args.device,
        backend=args.backend, tta=args.tta, amp=args.amp,
    )  # fmt: skip
    rows = probabilities_to_rows(preds)
    if args.output:
        _write_rows(Path(args.output), rows)
        print(f"{len(rows)} predictions written to {args.output}")
    for p in preds:
        if p.error:
            print(f"{p.path}\tERROR: {p.error}")
        else:
            decided = f"\t-> {p.label} (the checkpoint's threshold)" if p.top_k and p.label != p.top_k[0][0] else ""
            print(f"{p.path}\t" + "  ".join(f"{c} {s:.4f}" for c, s in p.top_k) + decided)
    return 1 if all(p.error for p in preds) else 0


def _predict_sharded(args: argparse.Namespace) -> int:
    """``predict`` under torchrun (or with ``--resume``): shares of the file list per process, one merged CSV."""
    from sedensenet.api import predict_sharded

    if not args.output:
        raise ConfigError("sharded prediction (torchrun, --resume) writes its rows to a file: give --output FILE.csv")
    res = predict_sharded(args.checkpoint, args.images, args.output, top_k=args.top_k, batch_size=args.batch_size,
                          device=args.device, backend=args.backend, resume=args.resume, tta=args.tta,
                          amp=args.amp)  # fmt: skip
    if res is not None:
        resumed = f"; {res.resumed_parts} of {res.parts} parts were already written" if res.resumed_parts else ""
        print(f"{res.rows} predictions written to {res.output} ({res.parts} processes, backend {res.backend}, "
              f"--amp {res.amp}{resumed})")  # fmt: skip
    return 0


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
    seeds = args.seeds if args.seeds is not None else 1 if getattr(args, "folds", 0) else 3
    result = compare(args.data, models, seeds=seeds, **overrides)
    print(result.markdown())
    print(f"\nTable, CSV and val_curves.png in {result.out_dir}")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    """k-fold cross-validation (--folds K, default 5): one run per fold, then every held-out metric as mean ± std
    with a 95% interval across folds, and the pooled out-of-fold predictions. Rerun it to continue it."""
    from sedensenet.cv import cross_validate

    overrides = {k: v for k, v in vars(args).items() if k not in _COMMON | {"data"}}
    result = cross_validate(getattr(args, "data", None), **{"folds": 5, **overrides})
    print(result.markdown())
    print(f"\ncv.md, cv.csv, oof.csv and the fold runs in {result.out_dir}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to ONNX or TorchScript, verified against the eager model on the spot."""
    from sedensenet.export import export_model

    if args.quantize is None and (args.quant_data or args.eval_data or args.force):
        raise ConfigError("--quant-data, --eval-data and --force go with --quantize int8")
    if args.quantize and args.image_size:
        raise ConfigError("--image-size cannot be combined with --quantize: int8 is calibrated at the model's size")
    res = export_model(args.checkpoint, format=args.format, output=args.output, opset=args.opset,
                       image_size=args.image_size, quantize=args.quantize, quant_data=args.quant_data,
                       eval_data=args.eval_data, force=args.force)  # fmt: skip
    diff = "not verified" if res.max_abs_diff is None else f"max abs difference vs eager {res.max_abs_diff:.2e}"
    if res.quantization:
        q = res.quantization
        print(f"int8 vs fp32 on {q['eval_images']} held-out images ({q['eval_data']}): "
              f"top-1 agreement {q['agreement']:.2%}, accuracy {q['fp32_accuracy']:.4f} -> {q['int8_accuracy']:.4f} "
              f"({q['accuracy_change']:+.4f}); calibrated on {q['calibration_images']} images of "
              f"{q['calibration_data']}")  # fmt: skip
        diff = f"fp32 graph: {diff}"
    print(f"{res.format}{' int8' if res.quantization else ''} written: {res.path} ({diff}, {res.seconds:.1f} s)")
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


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a model: a web page to drop images on and a JSON API (/v1/predict, /v1/explain, /v1/model)."""
    import os

    from sedensenet.serve import ServeSettings, run_server

    key = args.api_key or os.environ.get("SEDENSENET_API_KEY") or None
    settings = ServeSettings(
        backend=args.backend, device=args.device, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels, max_files=args.max_files,
        max_queue=args.max_queue, api_key=key, cors_origins=tuple(args.cors_origin or ()),
    )  # fmt: skip
    print(f"Serving {args.checkpoint} on http://{args.host}:{args.port}/ (Ctrl-C to stop)", file=sys.stderr)
    run_server(args.checkpoint, settings, host=args.host, port=args.port, workers=args.workers,
               log_level="warning" if args.quiet else "info")  # fmt: skip
    return 0


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
        help="auto: the eager fast path, or ONNX Runtime on CPU for 256+ images when installed and the CPU runs "
        "float32 (no bf16 units, or --amp off); "
        "reference: the unoptimised modules",
    )  # fmt: skip
    p.add_argument("--tta", default="none", choices=TTA_MODES, help=TTA_HELP)
    p.add_argument(
        "--amp", default="auto", choices=CHOICES["amp"],
        help="auto: bf16 on CPUs with bf16 matrix units (AVX512-BF16/AMX) and on GPUs, else fp32; off: fp32",
    )  # fmt: skip


TTA_HELP = (
    "test-time augmentation: average the probabilities of the image and its mirror image (flip), upside-down copy "
    "(vflip), a zoomed-in view (scale) or all four of flip+scale. Horizontal flips swap left and right: for chest "
    "X-rays, text or asymmetric anatomy use vflip, scale or none"
)


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
    p.add_argument("--dedupe", default="off", choices=("off", "exact", "near"),
                   help="leave out val/test images that duplicate training images (exact: same pixels)")  # fmt: skip
    p.add_argument("--positive", help="two classes: the positive class (default: the checkpoint's, else the second)")
    _add_inference_flags(p)

    p = command("check-data", cmd_check_data)
    p.add_argument("data", help="image folder (class sub-folders, or train/ val/ test/) or builtin:NAME")
    p.add_argument("--output", help="report folder (default: runs/check-data/<folder name>)")
    p.add_argument("--near-distance", type=int, default=None,
                   help="perceptual-hash bits (0-32) within which two images are compared as near copies "
                   "(default: 10)")  # fmt: skip
    p.add_argument("--project", default="runs", help="folder that holds run folders (default: runs)")
    p.add_argument("--groups", help="CSV of file,group (e.g. patient id): report groups found in two splits")
    p.add_argument("--strict", action="store_true", help="exit with status 1 when any problem is found")

    p = command("predict", cmd_predict)
    p.add_argument("checkpoint", help="checkpoint .safetensors, run folder or exported .onnx")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--output", help="write predictions to a .csv or .json file")
    p.add_argument(
        "--resume",
        action="store_true",
        help="sharded prediction (torchrun): keep the parts a killed run of the same job already wrote",
    )
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
    p.add_argument("--quantize", choices=("int8",), help="ONNX Runtime static int8 quantization (measured; see docs)")
    p.add_argument("--quant-data", help="images to calibrate int8 on (default: the run's training split)")
    p.add_argument("--eval-data", help="labelled images to judge int8 on (default: the run's validation split)")
    p.add_argument("--force", action="store_true", help="write an int8 model even under 99%% agreement with fp32")

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
    p.add_argument("--seeds", type=int, default=None,
                   help="runs per model (seed, seed+1, ...); the split stays fixed (default 3; with --folds K, "
                   "each model is cross-validated over K folds with one seed instead)")  # fmt: skip
    add_train_flags(p)
    p.set_defaults(name="compare")

    p = command("cv", cmd_cv)
    add_train_flags(p)
    p.set_defaults(name=None)

    p = command("convert-keras", cmd_convert_keras)
    p.add_argument("file", help="Keras file: tf.keras 2 .h5 (model or weights), Keras 3 .weights.h5, or .keras")
    p.add_argument("--output", required=True, help="checkpoint to write (.safetensors)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="preset the Keras model corresponds to")
    p.add_argument("--num-classes", type=int, help="classes of the Keras model (read from the file by default)")
    p.add_argument("--blocks", help="the tutorial's block list, e.g. 6,12,48,32 (read from the file by default)")
    p.add_argument("--classes", help="class names in index order, comma-separated (Keras files do not store them)")
    p.add_argument("--image-size", type=int, help="input size (read from the file when it has a model config)")

    p = command("serve", cmd_serve)
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="run folder or .safetensors checkpoint")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="processes, each with the model (threads shared out)")
    p.add_argument("--backend", default="auto", choices=INFERENCE_BACKENDS,
                   help="as for predict; auto: ONNX Runtime on CPU when installed, else eager")  # fmt: skip
    p.add_argument("--device", default="auto")
    p.add_argument("--max-batch", type=int, default=32, help="images per forward pass")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more images")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="request body limit, counted as it arrives")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="pixels per image")
    p.add_argument("--max-files", type=int, default=64, help="files per request")
    p.add_argument("--max-queue", type=int, default=256, help="images waiting; beyond it 503 with Retry-After")
    p.add_argument("--api-key", help="require Authorization: Bearer KEY on /v1 (or set SEDENSENET_API_KEY)")
    p.add_argument("--cors-origin", action="append", help="allow this browser origin (repeatable; default none)")

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
    if args.command in ("train", "evaluate", "predict", "compare", "cv", "explain"):
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
