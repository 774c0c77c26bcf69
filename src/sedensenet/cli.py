"""The ``sedensenet`` command: a table of subcommands over the Python API.

Each row of :data:`COMMANDS` names a typed function: its parameters (and the fields of a settings dataclass it
takes) become the flags, its docstring the help (the first paragraph, and ``Args:`` per flag). The command calls it
and hands the result to a small formatter: the only code here that prints for a person. Every check of the
arguments lives in the function called, so Python callers get the same errors.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import importlib
import importlib.metadata
import inspect
import logging
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any

from sedensenet import __version__
from sedensenet.config import CHOICES, INFERENCE_CHOICES, OUTPUT_FIELDS, ConfigError, InferenceSettings, TrainConfig
from sedensenet.errors import UserError
from sedensenet.serve.settings import ServeSettings

REPORT_BUGS_AT = "the sedensenet issue tracker"
"""Where a bug is reported when the package's metadata names no ``Project-URL: Issues`` (pyproject's
``[project.urls]``)."""

SETTINGS = {"InferenceSettings": InferenceSettings, "ServeSettings": ServeSettings}
"""Settings dataclasses a function may take as a parameter: each field of theirs is a flag."""

EXCLUDED = {
    "tune_malloc": "not a flag: the commands always tune (SEDENSENET_MALLOC=default opts out)",
    "options": "InferenceSettings' fields as keywords, for Python callers: the command passes settings",
    "InferenceSettings.workers": "loader workers: the default count (serve's --workers are server processes)",
    "train.callbacks": "epoch callbacks are for Python callers (--mlflow and tune add their own)",
    "train.verbose": "the CLI logs lines instead of Keras' epoch lines (verbose=0)",
    "train.progress": "the progress bar, unless -q",
    "run_server.log_level": "uvicorn's level follows -q",
    "ServeSettings.max_explain_queue": "a limit with no flag (its default)",
    "ServeSettings.threads": "the cores shared out among --workers",
    "export_model.verify": "the command always verifies",
    "check_data.montage_per_class": "the report's montage keeps its default",
}
"""Parameters (``function.name``, or any function's ``name``) and settings fields (``Class.name``) that have no
flag, and why; the test that flags and parameters agree reads this."""


def settings_class(parameter: inspect.Parameter) -> type | None:
    """The settings dataclass a parameter takes (its fields are flags), if it takes one of :data:`SETTINGS`."""
    return SETTINGS.get(str(parameter.annotation).replace(" | None", ""))


def excluded(owner: Any, name: str) -> bool:
    """Whether ``owner``'s (a function's or a settings class') parameter or field ``name`` has no flag."""
    return name in EXCLUDED or f"{owner.__name__}.{name}" in EXCLUDED


def _field_docs(cls: type) -> dict[str, str]:
    """The one-line docstrings under each dataclass field (used as the flags' help)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())  # type: ignore[union-attr]
    return docs


def _arg_docs(func: Callable[..., Any]) -> dict[str, str]:
    """The ``Args:`` section of a Google-style docstring: parameter name to its (joined) text."""
    docs: dict[str, str] = {}
    name, indent, inside = None, 0, False
    for line in inspect.getdoc(func).splitlines() if func.__doc__ else []:
        stripped = line.strip()
        if stripped in ("Args:", "Arguments:"):
            inside, indent = True, len(line) - len(line.lstrip()) + 4
            continue
        if inside and stripped and len(line) - len(line.lstrip()) < indent:
            inside = False
        if not inside or not stripped:
            continue
        head, sep, rest = stripped.partition(":")
        if len(line) - len(line.lstrip()) == indent and sep and head.lstrip("*").isidentifier():
            name = head.lstrip("*")
            docs[name] = rest.strip()
        elif name:
            docs[name] += " " + stripped
    return docs


def _plain(text: str) -> str:
    """Docstring markup (````x````, ``:func:`x```) as a terminal shows it: ``x``; ``%`` escaped for argparse."""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", text.replace("``", "")).replace("%", "%%")


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; only flags the user gives override (default=SUPPRESS)."""
    docs = _field_docs(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in OUTPUT_FIELDS:
            continue
        flag = "--" + f.name.replace("_", "-")
        text = _plain(f"{docs.get(f.name, '')} (default: {f.default})")
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": text}
        if f.name == "memory_efficient":  # on/off/auto; the bare flag (and --no-...) as when it was a switch
            kw.update(nargs="?", const="on", choices=CHOICES[f.name], metavar="{auto,on,off}")
            parser.add_argument("--no-memory-efficient", dest=f.name, action="store_const", const="off",
                                default=argparse.SUPPRESS, help="the same as --memory-efficient off")  # fmt: skip
        elif f.type == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif f.type == "str | None":  # an optional value: the bare flag means "" (``--mlflow``: the default store)
            kw.update(nargs="?", const="", type=str)
        else:
            kw["type"] = {"int": int, "float": float}.get(str(f.type), str)
            if f.name in CHOICES:
                kw["choices"] = CHOICES[f.name]
        parser.add_argument(flag, dest=f.name, **kw)


def _flag_kwargs(annotation: str, default: Any, name: str) -> dict[str, Any]:
    """argparse keywords for a parameter or field from its annotation (a string) and default."""
    kw: dict[str, Any] = {}
    base = annotation.replace(" | None", "")
    if base == "bool":
        return {"action": "store_true"} if default is False else {"action": argparse.BooleanOptionalAction,
                                                                  "default": default}  # fmt: skip
    if base.startswith("tuple["):
        return {"action": "append"}
    if base.startswith("Literal["):
        kw["choices"] = tuple(ast.literal_eval(f"({base[8:-1]},)"))
    elif name in INFERENCE_CHOICES:
        kw["choices"] = INFERENCE_CHOICES[name]
    elif base in ("int", "float"):
        kw["type"] = int if base == "int" else float
    if default is inspect.Parameter.empty:
        kw["required"] = True
    else:
        kw["default"] = default
    return kw


def _from_text(annotation: str, value: Any, flag: str) -> Any:
    """Comma-separated lists (``--models a,b``, ``--blocks 6,12,24,16``) and repeated flags as the function wants."""
    if value is None or not isinstance(value, (str, list)):
        return value
    if annotation.startswith("tuple["):
        return tuple(value)
    if not any(annotation.startswith(t) for t in ("list[str]", "Sequence[str]", "Sequence[int]")):
        return value
    items = [v.strip() for v in value.split(",") if v.strip()]
    if "int" not in annotation.split("|")[0]:
        return items
    try:
        return [int(v) for v in items]
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated whole numbers, e.g. 6,12,24,16; got {value!r}") from None


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: the function it calls, how its result is shown, what a signature cannot say."""

    target: str
    """``module:function``, the typed function called (looked up at each call): its parameters are the flags, its
    docstring the help."""
    show: Callable[[Any, dict[str, Any]], int | None]
    """Prints the result for a person (given every value the command had); returns the exit status (None: 0)."""
    positional: tuple[str, ...] = ()
    """Parameters given as positional arguments."""
    names: dict[str, str] = dataclasses.field(default_factory=dict)
    """Parameter -> the flag's name where it differs (``model`` is typed as ``checkpoint``)."""
    flag_options: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Extra argparse keywords per parameter (``nargs``, ``metavar``)."""
    train_flags: bool = False
    """``**overrides`` are TrainConfig fields: one flag each (:func:`add_train_flags`)."""
    own: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """The command's own flags, not parameters of ``run`` (``--strict``'s exit status, ``--devices``' relaunch)."""
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Defaults the command passes where the function's would differ from the flag's (``set_defaults``)."""
    given: Callable[[argparse.Namespace], dict[str, Any]] | None = None
    """Values of excluded parameters that follow the common flags (``-q``)."""
    alternative: tuple[str, Callable[[dict[str, Any]], bool]] | None = None
    """Another function (``module:function``) with some of the same flags, and when it is called instead."""

    @property
    def run(self) -> Callable[..., Any]:
        return _resolve(self.target)

    def functions(self) -> list[Callable[..., Any]]:
        return [self.run] + ([_resolve(self.alternative[0])] if self.alternative else [])

    def parameters(self) -> dict[str, inspect.Parameter]:
        """Every parameter of the functions that is a flag (a settings parameter: its fields), by name."""
        params: dict[str, inspect.Parameter] = {}
        for func in self.functions():
            for name, p in inspect.signature(func).parameters.items():
                if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or excluded(func, name) or name in params:
                    continue
                if self.train_flags and name in TRAIN_FIELDS:
                    continue
                settings = settings_class(p)
                if settings is None:
                    params[name] = p
                    continue
                for f in dataclasses.fields(settings):
                    if not excluded(settings, f.name):
                        params[f.name] = inspect.Parameter(f.name, p.KEYWORD_ONLY, default=f.default,
                                                           annotation=f.type)  # fmt: skip
        return params

    def help_texts(self) -> dict[str, str]:
        docs: dict[str, str] = {}
        for func in reversed(self.functions()):
            docs.update(_arg_docs(func))
            for p in inspect.signature(func).parameters.values():
                if settings_class(p) is not None:
                    docs.update(_field_docs(settings_class(p)))  # type: ignore[arg-type]
        return docs


TRAIN_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))


def _resolve(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _add_command(sub: Any, name: str, command: Command) -> None:
    doc = inspect.getdoc(command.run) or ""
    summary = _plain(doc.split("\n\n")[0])
    p = sub.add_parser(name, help=summary.partition("\n")[0], description=summary)
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("-v", "--verbose", action="store_true", help="debug output")
    docs = command.help_texts()
    for param, spec in command.parameters().items():
        dest = command.names.get(param, param)
        kw = {**_flag_kwargs(str(spec.annotation), spec.default, param), **command.flag_options.get(param, {})}
        kw["help"] = _plain(docs.get(param, ""))
        if param in command.positional:
            kw.pop("required", None)
            if kw.get("nargs") == "*":
                kw.pop("default", None)
            p.add_argument(dest, **kw)
        else:
            p.add_argument("--" + dest.replace("_", "-"), dest=dest, **kw)
    for flag, kw in command.own.items():
        p.add_argument(flag, **kw)
    if command.train_flags:
        add_train_flags(p)
    p.set_defaults(**command.defaults)


def _call(command: Command, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Call the row's function with the parsed flags; returns its result and every value the command had."""
    values = vars(args)
    params = command.parameters()
    given = {k: _from_text(str(params[k].annotation), values[command.names.get(k, k)], "--" + k.replace("_", "-"))
             for k in params if command.names.get(k, k) in values}  # fmt: skip
    if command.given:
        given.update(command.given(args))
    if command.train_flags:
        given.update({k: v for k, v in values.items() if k in TRAIN_FIELDS})
    func = command.run
    if command.alternative and command.alternative[1](given):
        func = _resolve(command.alternative[0])
    signature = inspect.signature(func).parameters
    kwargs = {k: v for k, v in given.items() if k in signature}
    for name, p in signature.items():
        settings = settings_class(p)
        if settings is not None:
            fields = {f.name for f in dataclasses.fields(settings)}
            kwargs[name] = settings(**{k: v for k, v in given.items() if k in fields and v is not None})
        elif p.kind is p.VAR_KEYWORD and command.train_flags:
            kwargs.update({k: v for k, v in given.items() if k in TRAIN_FIELDS and k not in signature})
        elif p.default is p.empty and p.kind is not p.VAR_KEYWORD and name not in kwargs:
            kwargs[name] = None  # a training setting not given (--data): the function says what is missing
    return func(**kwargs), {**values, **kwargs}


def show_train(result: Any, _: dict[str, Any]) -> None:
    h, best = result.history.history, result.best_epoch
    print(f"\nRun folder: {result.run_dir}")
    if h["val_accuracy"] and best:
        i = result.history.epoch.index(best)
        shown = dict.fromkeys([result.monitor, "val_accuracy", "val_loss"])
        figures = ", ".join(f"{k} {h[k][i]:.4f}" for k in shown if k in h)
        print(f"Best epoch {best} (by {result.monitor}): {figures}")
    _print_final_metrics(result.metrics)
    print(f"Checkpoint: {result.best_checkpoint}")


def _print_final_metrics(metrics: dict[str, Any]) -> None:
    """Each evaluated split's figures with intervals, under the label that says how far to trust them."""
    from sedensenet.reports import ClassificationReport
    from sedensenet.reports.multilabel import MultiLabelReport

    for split in ("val", "test"):
        if split not in metrics:
            continue
        data = metrics[split]
        if "per_label" in data:  # multi-label: the CheXNet-style table
            print(f"\n{data.get('label', split)}, {data['num_samples']} images:\n" +
                  MultiLabelReport.from_dict(data).format_text(), end="")  # fmt: skip
            continue
        report = ClassificationReport.from_dict(data)
        title = f"{data.get('label', split)}, {report.num_samples} images:"
        print("\n" + report.format_summary(title), end="")
    decision = next((m["decision"] for m in metrics.values() if m.get("decision")), None)
    if decision and decision.get("chosen_on"):
        print(f"threshold {decision['threshold']}, calibration {decision['calibrate']}: chosen on validation "
              f"with {decision['inference']}, stored in the checkpoint and applied by predict")  # fmt: skip


def show_evaluation(report: Any, values: dict[str, Any]) -> None:
    from sedensenet.engine.tta import view_count

    tta = values["settings"].tta
    print(report.format_text())
    if not hasattr(report, "accuracy"):  # a multi-label report: its table says it all
        return
    views = "" if tta == "none" else f" (TTA {tta}: mean of {view_count(tta)} views)"
    print(f"accuracy {report.accuracy:.4f}" + (f", ROC-AUC {report.roc_auc:.4f}" if report.roc_auc else "") + views)
    print(f"Reports: {values['output']}")


def _evaluation_folder(args: argparse.Namespace) -> dict[str, Any]:
    """evaluate's reports go to RUN/eval_SPLIT unless --output says where (from Python: returned, not written)."""
    from sedensenet.checkpoint import resolve_checkpoint

    out = args.output or resolve_checkpoint(args.checkpoint).parent.parent / f"eval_{args.split}"
    return {"output": out}


def show_check(result: Any, values: dict[str, Any]) -> int:
    check = result.check
    print(f"{check.root}: {len(check.files)} usable images in {len(check.classes)} classes, "
          f"{len(check.skipped)} files skipped, {len(check.pairs)} duplicate pairs")  # fmt: skip
    for verdict in check.verdicts:
        print(f"- {verdict.message}")
    print(f"Report: {result.files['data_report.md']}")
    return 1 if any(v.problem != "none" for v in check.verdicts) and values["strict"] else 0


def show_predictions(result: Any, values: dict[str, Any]) -> int:
    if not isinstance(result, list):  # sharded: rank 0's summary (None on the other ranks)
        if result is not None:
            resumed = f"; {result.resumed_parts} of {result.parts} parts were already written"
            resumed = resumed if result.resumed_parts else ""
            print(f"{result.rows} predictions written to {result.output} ({result.parts} processes, backend "
                  f"{result.backend}, --amp {result.amp}{resumed})")  # fmt: skip
        return 0
    if values["output"]:
        print(f"{len(result)} predictions written to {values['output']}")
    for p in result:
        if p.error:
            print(f"{p.path}\tERROR: {p.error}")
        elif p.scores is not None:  # multi-label: the decided set, then every label's probability
            shown = "  ".join(f"{c} {v:.4f}" for c, v in p.scores.items())
            print(f"{p.path}\t[{', '.join(p.labels or []) or 'no label'}]\t{shown}")
        else:
            decided = f"\t-> {p.label} (the checkpoint's threshold)" if p.top_k and p.label != p.top_k[0][0] else ""
            print(f"{p.path}\t" + "  ".join(f"{c} {s:.4f}" for c, s in p.top_k) + decided)
    return 1 if all(p.error for p in result) else 0


def _sharded(values: dict[str, Any]) -> bool:
    from sedensenet.engine.distributed import launched_by_torchrun

    return bool(values.get("resume")) or launched_by_torchrun()


def show_summary(result: Any, _: dict[str, Any]) -> None:
    print(result)


def show_presets(rows: list[Any], _: dict[str, Any]) -> None:
    from sedensenet.model_summary import presets_table

    print(presets_table(rows))


def show_export(res: Any, _: dict[str, Any]) -> None:
    diff = "not verified" if res.max_abs_diff is None else f"max abs difference vs eager {res.max_abs_diff:.2e}"
    if res.quantization:
        q = res.quantization
        agreement = "top-1 agreement" if "per_label" not in q else "decisions' agreement, lowest label"
        print(f"int8 vs fp32 on {q['eval_images']} held-out images ({q['eval_data']}): "
              f"{agreement} {q['agreement']:.2%}, accuracy {q['fp32_accuracy']:.4f} -> {q['int8_accuracy']:.4f} "
              f"({q['accuracy_change']:+.4f}); calibrated on {q['calibration_images']} images of "
              f"{q['calibration_data']}")  # fmt: skip
        for label, row in q.get("per_label", {}).items():
            print(f"  {label}: agreement {row['agreement']:.2%}, mean |p(int8) - p(fp32)| {row['mean_abs_diff']:.4f}")
        diff = f"fp32 graph: {diff}"
    print(f"{res.format}{' int8' if res.quantization else ''} written: {res.path} ({diff}, {res.seconds:.1f} s)")


def show_explanations(run: Any, _: dict[str, Any]) -> None:
    if run.images is not None:
        for item in run.images.images:
            if item.labels is None:
                print(f"{item.source}\tpred {item.predicted} ({item.probability:.3f})\t-> {item.output}")
            else:  # multi-label: one map per decided label (or the given one), each saying which and why
                decided = ", ".join(item.labels) or "none"
                print(f"{item.source}\tlabels {decided}\tmap {item.target} ({item.probability:.3f}, {item.reason})"
                      f"\t-> {item.output}")  # fmt: skip
        for path, reason in run.images.skipped:
            print(f"{path}\tSKIPPED: {reason}")
        print(f"Grid: {run.images.grid}")
    if run.se is not None:
        se = run.se
        print(f"SE layer {se.layer}: {se.matrix.shape[1]} channels x {len(se.classes)} classes")
        for d in se.distances:
            print("  " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items()))
        print("Files: " + ", ".join(str(p) for p in se.paths.values()))


def show_comparison(result: Any, _: dict[str, Any]) -> None:
    print(result.markdown())
    print(f"\nTable, CSV and val_curves.png in {result.out_dir}")


def show_cv(result: Any, _: dict[str, Any]) -> None:
    print(result.markdown())
    print(f"\ncv.md, cv.csv, oof.csv and the fold runs in {result.out_dir}")


def show_tune(result: Any, _: dict[str, Any]) -> None:
    print(result.markdown())
    print(f"\nBest settings: {result.best_yaml} (sedensenet train --config {result.best_yaml})")
    print(f"Trials table and plots in {result.out_dir}; study: {result.storage}")


def show_path(path: Any, _: dict[str, Any]) -> None:
    print(f"Checkpoint written: {path}")


def show_nothing(_: Any, __: dict[str, Any]) -> None:
    """serve returns when the server stops."""


_CHECKPOINT = {"model": "checkpoint"}
COMMANDS: dict[str, Command] = {
    "train": Command(
        "sedensenet.api:train", show_train, train_flags=True,
        own={"--devices": {"type": int, "default": 0, "help": "processes to launch with torchrun (DDP), e.g. 2 GPUs"}},
        flag_options={"resume": {"metavar": "RUN_DIR"}},
        given=lambda a: {"verbose": 0, "progress": not a.quiet, "tune_malloc": True},
    ),
    "evaluate": Command("sedensenet.api:evaluate", show_evaluation, positional=("model",), names=_CHECKPOINT,
                        given=_evaluation_folder),
    "check-data": Command(
        "sedensenet.api:check_data", show_check, positional=("data",),
        own={"--strict": {"action": "store_true", "help": "exit with status 1 when any problem is found"}},
    ),
    "predict": Command(
        "sedensenet.api:predict", show_predictions, positional=("model", "inputs"),
        names={**_CHECKPOINT, "inputs": "images"}, flag_options={"inputs": {"nargs": "+"}},
        alternative=("sedensenet.api:predict_sharded", _sharded),
    ),
    "summary": Command("sedensenet.model_summary:preset_summary", show_summary, positional=("model",)),
    "export": Command("sedensenet.export:export_model", show_export, positional=("checkpoint",)),
    "explain": Command("sedensenet.explain:explain_model", show_explanations, positional=("checkpoint", "images"),
                       flag_options={"images": {"nargs": "*"}}),
    "compare": Command("sedensenet.compare:compare", show_comparison, train_flags=True, defaults={"name": "compare"}),
    "cv": Command("sedensenet.cv:cross_validate", show_cv, train_flags=True, defaults={"name": None}),
    "tune": Command("sedensenet.tune:tune", show_tune, train_flags=True, defaults={"name": "tune"}),
    "convert-keras": Command("sedensenet.keras_convert:convert_keras_file", show_path, positional=("path",),
                             names={"path": "file"}),
    "serve": Command(
        "sedensenet.serve.run:run_server", show_nothing, positional=("checkpoint",),
        names={"cors_origins": "cors_origin"},
        flag_options={"checkpoint": {"metavar": "RUN_OR_CHECKPOINT"}},
        given=lambda a: {"log_level": "warning" if a.quiet else "info"},
    ),
    "models": Command("sedensenet.model_summary:preset_rows", show_presets, positional=("filter",),
                      flag_options={"filter": {"nargs": "?"}}),
}  # fmt: skip
"""Every subcommand: its typed function, its formatter, and what the signature cannot say."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, generated from :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="sedensenet",
        description="DenseNet and SE-DenseNet image classification: train, evaluate, predict, export, explain.",
    )
    parser.add_argument("--version", action="version", version=f"sedensenet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        _add_command(sub, name, command)
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
    _quiet_pydicom()


def _quiet_pydicom() -> None:
    """pydicom logs and warns about the files it reads, quoting tag values (a patient's name in a malformed
    element): none of it reaches the console. Our own messages name the file and the problem, never a tag value."""
    import warnings

    pydicom_log = logging.getLogger("pydicom")
    pydicom_log.handlers[:] = [logging.NullHandler()]
    pydicom_log.propagate = False
    pydicom_log.setLevel(logging.CRITICAL + 1)
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sedensenet`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    command = COMMANDS[args.command]
    try:
        if getattr(args, "devices", 0) > 1:  # train --devices N: the same command under torchrun
            from sedensenet.engine.launch import launch_torchrun

            return launch_torchrun(args.devices, sys.argv[1:] if argv is None else argv)
        result, values = _call(command, args)
        return command.show(result, values) or 0
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
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for entry in importlib.metadata.metadata("sedensenet").get_all("Project-URL") or []:
            label, _, url = entry.partition(",")
            if label.strip().lower() in ("issues", "bug tracker", "tracker") and url.strip():
                return url.strip()
    return REPORT_BUGS_AT


if __name__ == "__main__":
    sys.exit(main())
