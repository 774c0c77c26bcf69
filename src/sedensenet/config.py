"""Every training setting as one dataclass (defaults live here, once), with YAML in and out.

Precedence, lowest first: these defaults, a built-in data set's recommended settings, a ``--config``
YAML file (or a run folder's ``config.yaml``), then the flags given on the command line.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from sedensenet.columns import MONITORS
from sedensenet.errors import UserError

INFERENCE_BACKENDS = ("auto", "onnxruntime", "onnxruntime-int8", "eager", "compile", "reference")
"""How predict and evaluate run batches: ``auto`` (ONNX Runtime on CPU for 256+ images when installed and the run
is float32, else ``eager``; under bf16 the eager path is faster), ``onnxruntime``, ``onnxruntime-int8`` (the int8
model ``sedensenet export --quantize int8`` wrote beside the checkpoint, or an int8 ``.onnx`` given directly),
``eager`` (the model's fast path: one buffer per dense block, BN folded, channels_last on CPU), ``compile``
(torch.compile with frozen weights) or ``reference`` (the textbook modules, no fast path)."""

TTA_MODES = ("none", "flip", "vflip", "scale", "flip+scale")
"""Test-time augmentation: ``none``; ``flip``: the image and its mirror image (left-right: not for chest X-rays,
text or asymmetric anatomy); ``vflip``: the image and its upside-down copy; ``scale``: the image and a zoomed-in
view (the central 7/8 of each side, resized back); ``flip+scale``: the four views of ``flip`` and ``scale``."""

CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("adam", "adamw", "sgd"),
    "scheduler": ("none", "cosine", "plateau"),
    "augment": ("none", "light", "strong"),
    "normalize": ("imagenet", "dataset"),
    "class_weights": ("none", "auto"),
    "amp": ("auto", "off", "bf16", "fp16"),
    "compile": ("off", "on", "auto"),
    "monitor": MONITORS,
    "tta": TTA_MODES,
    "dedupe": ("off", "exact", "near"),
    "calibrate": ("none", "temperature"),
    "memory_efficient": ("auto", "on", "off"),
    "task": ("auto", "single", "multi"),
    "uncertain": ("ignore", "zeros", "ones"),
    "missing": ("ignore", "zeros"),
}


INFERENCE_CHOICES: dict[str, tuple[str, ...]] = {"backend": INFERENCE_BACKENDS, "tta": TTA_MODES, "amp": CHOICES["amp"]}
"""The choices of :class:`InferenceSettings`' fields (its flags' ``choices``)."""

RESUME_MAY_CHANGE = frozenset(
    {"epochs", "device", "workers", "patience", "batch_size", "accumulate", "memory_efficient", "memory_limit",
     "amp", "cache", "tta", "time", "mlflow"}
    | {"threshold", "positive", "calibrate"}
)  # fmt: skip
"""Settings a resumed run may change: more epochs, another device, and what it takes to fit in memory
(a different ``batch_size`` or ``accumulate`` changes the results from there on; the others do not), a new
``time`` (the time still to spend), and what the end of the run does: the test-time augmentation of its evaluation
and the decision rule it chooses on validation."""

OUTPUT_FIELDS = frozenset({"memory_plan", "time_plan"})
"""Fields the run writes into config.yaml for the record (no command-line flag); each run writes its own."""


DEFAULT_MODEL = "keras_se_densenet201"
"""The preset used when none is named: the tutorial's model."""


class ConfigError(UserError, ValueError):
    """A setting that cannot work; the message says which and what to change."""


@dataclass(frozen=True)
class InferenceSettings:
    """How a model runs batches: one object taken by ``predict``, ``evaluate``, sharded prediction, the
    ``Predictor`` and ``serve``; the commands' flags are generated from these fields."""

    device: str = "auto"
    """``auto`` (CUDA, then Apple's MPS, then the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    backend: str = "auto"
    """auto: the eager fast path, or ONNX Runtime on CPU for 256+ images when installed and the CPU runs float32 (no
    bf16 units, or --amp off); reference: the unoptimised modules (see ``INFERENCE_BACKENDS``)."""
    tta: str = "none"
    """test-time augmentation: average the probabilities of the image and its mirror image (flip), upside-down copy
    (vflip), a zoomed-in view (scale) or all four of flip+scale. Horizontal flips swap left and right: for chest
    X-rays, text or asymmetric anatomy use vflip, scale or none"""
    amp: str = "auto"
    """auto: bf16 on CPUs with bf16 matrix units (AVX512-BF16/AMX) that beat their fp32 (not Sapphire/Emerald Rapids
    without AMX) and on GPUs, else fp32; off: fp32"""
    batch_size: int = 32
    """Images per forward pass."""
    workers: int = -1
    """DataLoader worker processes for files (-1: the default count, none on the CPU)."""

    def __post_init__(self) -> None:
        for name, choices in INFERENCE_CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                what = {"backend": "an inference backend", "tta": "a test-time augmentation"}.get(name, "a precision")
                raise ConfigError(f"--{name} {value!r} is not {what}: choose from {', '.join(choices)}")
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"--device {self.device!r}: give auto, cpu, cuda, cuda:N or mps")
        for name, low in (("batch_size", 1), ("workers", -1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be a whole number >= {low}, got {value!r}")


@dataclass
class TrainConfig:
    """Settings of one training run; the run folder's ``config.yaml`` holds them all, resolved."""

    data: str = ""
    """Image folder (one sub-folder per class, or train/ val/ [test/] inside), a CSV / TSV manifest of images and
    labels (``labels.csv``), or ``builtin:digits|faces``."""
    image_col: str = ""
    """Manifest: the image column (default: found by name: path, file, filename, image, image_id, Image Index)."""
    label_col: str = ""
    """Manifest: the label column (default: found by name: label, class, target, dx, labels, Finding Labels); a,b,c
    names one 0/1 column per label (multi-label). With no label column by name, the 0/1 columns are the labels."""
    group_col: str = ""
    """Manifest: the group column, e.g. a patient id kept on one side of every split (default: lesion_id,
    patient_id, patient or Patient ID when present)."""
    split_col: str = ""
    """Manifest: the column of train / val / test values used as given (default: a column named split)."""
    image_root: str = ""
    """Manifest: the folder its image paths are relative to (default: the manifest's folder)."""
    image_ext: str = ""
    """Manifest: appended to image names that lack it, for tables of ids (e.g. .jpg for HAM10000's image_id)."""
    encoding: str = "utf-8"
    """Manifest: the table's text encoding (e.g. gbk for a table saved by a Chinese Excel)."""
    skip_missing: bool = False
    """Manifest: leave out (and list in skipped.csv) rows whose image file does not exist, instead of stopping."""
    task: str = "auto"
    """single: one class per image; multi: several labels per image (a manifest only); auto: multi when a label cell
    names several labels (Effusion|Mass) or the labels are 0/1 columns."""
    label_delim: str = "|"
    """Manifest: the separator of several labels in one cell (; and , are read too where unambiguous)."""
    none_label: str = ""
    """Manifest: the label that means no finding, e.g. "No Finding": all labels absent, not a class of its own."""
    uncertain: str = "ignore"
    """Multi-label: an uncertain (-1) entry is ignored (left out of the loss and of that label's metrics), or read
    as zeros or ones."""
    missing: str = "ignore"
    """Multi-label: a blank entry is ignored (left out of the loss and of that label's metrics), or read as zeros."""
    dicom_window: str = ""
    """DICOM: window CENTER,WIDTH applied to every image, e.g. 40,400 (default: the file's VOI LUT or window, else
    the image's own range)."""
    model: str = DEFAULT_MODEL
    """Preset name (``sedensenet models`` lists them); the tutorial's model by default."""
    image_size: int = 224
    """Images are resized to this square size."""
    in_chans: int = 3
    """Image channels fed to the model: 1 keeps grayscale, 3 is RGB."""
    epochs: int = 25
    """Epochs to train; with ``time``, the most it may train (0: no cap, the default when ``time`` is given alone)."""
    time: str = ""
    """Train to a time budget, final evaluation included: ``30m``, ``2h``, ``90s``, ``1h30m`` or seconds. After every
    epoch the epoch count is re-planned from the measured epoch time (training, validation, checkpoint); ``cosine``
    and the warm-up are re-fitted to reach their end (0.01 x ``lr``) at the last planned epoch, ``plateau`` needs no
    re-fit. ``epochs`` caps it only when given. ``cv``: the budget of each fold; ``compare``: of each run (every
    model and seed alike). On ``--resume`` the run continues to its budget; a new ``--time`` is the time still to
    spend."""
    batch_size: int = 32
    lr: float = 1e-3
    """Learning rate (Keras' Adam default, as the tutorial uses)."""
    optimizer: str = "adam"
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 0.0
    scheduler: str = "none"
    """``cosine`` (per epoch, after ``warmup_epochs`` of linear warm-up) or ``plateau`` (on val_loss)."""
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    class_weights: str = "none"
    """``auto`` weighs the loss by inverse class frequency, for imbalanced data (and ``--monitor auto`` then picks
    the epoch by val_balanced_accuracy); in a multi-label run it weighs each label's positives by its negatives /
    positives in training, at most 20."""
    grad_clip: float = 0.0
    """Clip the gradient norm to this value (0: off)."""
    pretrained: bool = False
    """Start from torchvision's ImageNet weights (through torch.hub's cache)."""
    weights: str = ""
    """Start from this file: torchvision ``.pth``/``.safetensors`` or a sedensenet checkpoint."""
    freeze_epochs: int = 0
    """Train only the classifier and SE layers for this many epochs, then everything."""
    patience: int = 0
    """Stop when the monitored metric has not improved for this many epochs (0: never)."""
    monitor: str = "auto"
    """History column that picks ``best.safetensors`` and drives early stopping (losses are minimised, the rest
    maximised); ``auto``: val_auc for multi-label, val_balanced_accuracy with ``--class-weights auto``, else
    val_accuracy."""
    seed: int = 123
    """Seeds the split, the shuffling, augmentation and initialisation."""
    val_split: float = 0.2
    """Fraction of each class held out for validation when the folder has no val/."""
    groups: str = ""
    """CSV of ``file,group`` (e.g. a patient id per image): the val split keeps each group on one side."""
    dedupe: str = "off"
    """Drop from val/test every image that duplicates a training image: ``exact`` (same decoded pixels) or
    ``near`` (also re-encoded, resized or contrast-changed copies)."""
    split_seed: int = -1
    """Seed of the train/val split (-1: the same as ``seed``); ``compare`` fixes it across seeds."""
    folds: int = 0
    """k-fold cross-validation (``sedensenet cv`` sets it): the images are cut into this many stratified folds; this
    run holds out fold ``fold`` as its test split and splits the rest into train and val (0: no folds)."""
    fold: int = 0
    """The held-out fold of a cross-validation run, 1 to ``folds``."""
    augment: str = "light"
    vflip: bool = False
    """Add vertical flips to augmentation (histology, satellite images)."""
    normalize: str = "imagenet"
    """``imagenet`` mean/std, or ``dataset``: computed from the training split."""
    cache: bool = False
    """Decode every image once into a memory-mapped uint8 cache at the training size, reused across epochs and
    runs (rebuilt when files change); augmentation then works on the resized image."""
    workers: int = -1
    """DataLoader worker processes (-1: on a GPU one per CPU core, at most 8; on the CPU one per four cores beyond
    the first two, since loader processes compete with the model's own threads there)."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    amp: str = "auto"
    """Mixed precision: ``auto`` (bf16 on GPUs that have it, else fp16; bf16 on CPUs with bf16 matrix units,
    AVX512-BF16 or AMX; else off), ``off`` (float32), ``bf16``, ``fp16``."""
    channels_last: bool = True
    """Use the channels_last memory format on GPU."""
    compile: str = "off"
    """``torch.compile`` the model: ``on``, ``off`` or ``auto`` (only when the run is long enough to repay it)."""
    memory_efficient: str = "auto"
    """Shared feature storage in the dense blocks, BN + ReLU recomputed in backward (Pleiss et al. 2017), 0.3-0.6x
    the training memory: ``on``, ``off`` or ``auto`` (the fastest path that fits the memory available, the leaner
    one when about as fast; stops before training, saying what fits, when none does). true/false mean on/off."""
    memory_limit: str = ""
    """Memory the run may use, e.g. ``6G``, instead of what is detected (also SEDENSENET_MEMORY_LIMIT)."""
    accumulate: int = 1
    """Gradient accumulation: one optimiser step every N batches (effective batch batch_size x N; BatchNorm still
    sees batches of batch_size)."""
    max_steps: int = 0
    """Stop each epoch after this many batches (0: all); for tests and smoke runs."""
    memory_plan: dict[str, Any] = field(default_factory=dict)
    """Written by the run for the record: the path taken, the estimates and the memory available. Every start plans
    anew (``RunContext.memory_plan``); the value read here never steers a run."""
    time_plan: dict[str, Any] = field(default_factory=dict)
    """Written by a run with ``time`` for the record: the budget in seconds, the time spent, the epochs planned last
    and the measured epoch time. The resume state carries what steers a resumed run."""
    drop_rate: float = 0.0
    """Dropout inside dense layers."""
    head_drop_rate: float = 0.0
    """Dropout before the classifier."""
    sync_bn: bool = False
    """Synchronise BatchNorm statistics across processes in distributed training (CUDA GPUs only)."""
    project: str = "runs"
    """Folder that holds the run folders."""
    name: str = "train"
    """Run folder name; ``train2``, ``train3`` … when it exists, unless ``exist_ok``."""
    exist_ok: bool = False
    tensorboard: bool = False
    """Also log to TensorBoard (needs the tensorboard package)."""
    mlflow: str | None = None
    """Track the run in MLflow (the ``mlflow`` extra): params, per-epoch metrics, reports and the model. The bare flag
    uses MLflow's default store (``mlflow.db`` here, which ``mlflow ui`` opens); else a tracking URI."""
    max_pixels: int = 89_478_485
    """Images with more pixels are skipped (decompression-bomb guard; PIL's default)."""
    tta: str = "none"
    """Test-time augmentation of the final val/test evaluation: ``flip`` (horizontal: not for X-rays, text or
    asymmetric anatomy), ``vflip``, ``scale`` (a zoomed-in view) or ``flip+scale``; probabilities averaged."""
    positive: str = ""
    """Two classes: the positive class for sensitivity, PPV, ROC/PR curves and the threshold (default: the second
    class in sorted order)."""
    threshold: str = "argmax"
    """Two classes: the operating threshold, chosen on validation and stored in the checkpoint: ``argmax``,
    ``youden``, ``sens=0.95`` (best specificity at that sensitivity), ``spec=0.90`` or a probability like ``0.3``."""
    calibrate: str = "none"
    """``temperature``: fit one temperature on validation (stored in the checkpoint, applied by predict)."""

    def __post_init__(self) -> None:
        self.memory_efficient = _tri_state(self.memory_efficient)
        for key in OUTPUT_FIELDS:
            if getattr(self, key) is None:
                setattr(self, key, {})
            if not isinstance(getattr(self, key), dict):
                raise ConfigError(f"{key} is written by the run and must be a mapping, got {getattr(self, key)!r}")
        if self.memory_limit:
            parse_size(self.memory_limit)
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value}")
        for key, choices in CHOICES.items():
            if getattr(self, key) not in choices:
                raise ConfigError(f"{key}={getattr(self, key)!r} is not valid; choose from {', '.join(choices)}")
        if self.time:
            parse_duration(self.time)
        if self.epochs == 0 and not self.time:
            raise ConfigError("epochs must be at least 1 (0, no cap, only goes with a time budget: --time 30m)")
        positive = ("image_size", "in_chans", "batch_size", "accumulate") + (("epochs",) if not self.time else ())
        for key in positive:
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)}")
        if not 0 <= self.val_split < 1:
            raise ConfigError(f"val_split must be in [0, 1), got {self.val_split}: e.g. 0.2 holds out 20%")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        for key in ("weight_decay", "grad_clip", "warmup_epochs", "freeze_epochs", "patience", "max_steps"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must not be negative, got {getattr(self, key)}")
        parse_threshold(self.threshold)
        if self.folds and (self.folds < 2 or not 1 <= self.fold <= self.folds):
            raise ConfigError(f"folds={self.folds}, fold={self.fold}: give folds >= 2 and a fold from 1 to folds")
        if self.fold and not self.folds:
            raise ConfigError(f"fold={self.fold} needs folds (the number of folds), e.g. --folds 5")
        if self.dicom_window:
            parse_window(self.dicom_window)
        if self.pretrained and self.weights:
            raise ConfigError("give either --pretrained or --weights FILE, not both")

    @property
    def data_split_seed(self) -> int:
        """The seed that draws the train/val split."""
        return self.seed if self.split_seed < 0 else self.split_seed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "settings") -> TrainConfig:
        """Build from a dictionary; unknown keys are an error naming them and ``source``."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in set(d) - names)
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {unknown}; valid settings: {', '.join(sorted(names))}")
        types = {f.name: f.type for f in fields(cls)}
        if "memory_efficient" in d:
            d = {**d, "memory_efficient": _tri_state(d["memory_efficient"])}
        values = {k: _coerce(k, v, types[k], source) for k, v in d.items()}
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None


THRESHOLD_RULES = "argmax, youden, f1, sens=X, spec=X (X in (0, 1]) or a probability in [0, 1]"
"""What ``--threshold`` accepts, for help texts and error messages."""


@dataclass(frozen=True)
class ThresholdRule:
    """How a decision is made: ``argmax``, ``youden``, ``f1``, ``sens``/``spec`` (with a target), ``fixed``.

    A two-class run applies it to its positive class; a multi-label run to each label (there ``argmax`` has no
    meaning and the caller maps it to ``f1``).
    """

    kind: str
    value: float | None = None

    def __str__(self) -> str:
        if self.kind in ("sens", "spec"):
            return f"{self.kind}={self.value:g}"
        return f"{self.value:g}" if self.kind == "fixed" else self.kind

    @property
    def needs_validation(self) -> bool:
        """Whether the threshold is chosen on validation data (``youden``, ``f1``, ``sens=``, ``spec=``)."""
        return self.kind in ("youden", "f1", "sens", "spec")


def parse_threshold(text: str) -> ThresholdRule:
    """Parse ``--threshold``: ``argmax``, ``youden``, ``f1``, ``sens=0.95``, ``spec=0.90`` or a probability (``0.3``).

    Raises:
        ConfigError: naming the value and what is allowed.
    """
    spec = str(text).strip().lower()
    if spec in ("", "argmax"):
        return ThresholdRule("argmax")
    if spec in ("youden", "f1"):
        return ThresholdRule(spec)
    kind, sep, number = spec.partition("=")
    if sep:
        if kind not in ("sens", "spec"):
            raise ConfigError(f"--threshold {text!r}: unknown rule {kind!r}; allowed: {THRESHOLD_RULES}")
        target = _number(number, text)
        if not 0 < target <= 1:
            raise ConfigError(f"--threshold {text!r}: {kind}= must be in (0, 1], e.g. {kind}=0.95")
        return ThresholdRule(kind, target)
    value = _number(spec, text)
    if not 0 <= value <= 1:
        raise ConfigError(f"--threshold {text!r}: a fixed threshold is a probability in [0, 1]")
    return ThresholdRule("fixed", value)


def _number(text: str, original: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--threshold {original!r} is not valid; allowed: {THRESHOLD_RULES}") from None
    if not math.isfinite(value):
        raise ConfigError(f"--threshold {original!r} must be a finite number; allowed: {THRESHOLD_RULES}")
    return value


def parse_window(text: str) -> tuple[float, float] | None:
    """``--dicom-window CENTER,WIDTH`` as two numbers (``""``: none); a width must be positive.

    Raises:
        ConfigError: naming the value and the form expected.
    """
    if not str(text).strip():
        return None
    parts = [p.strip() for p in str(text).split(",")]
    try:
        center, width = (float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--dicom-window {text!r}: give CENTER,WIDTH, e.g. 40,400") from None
    if not (math.isfinite(center) and math.isfinite(width)) or width < 1:
        raise ConfigError(f"--dicom-window {text!r}: the centre must be a number and the width at least 1, e.g. 40,400")
    return center, width


def parse_size(text: str | int | float, what: str = "--memory-limit") -> int:
    """Bytes from ``6G``, ``6GB``, ``6GiB``, ``512M``, ``1.5T`` or a number of bytes (K/M/G/T: powers of 1024)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text), flags=re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"{what} {text!r} is not a memory size; write e.g. 6G, 6GB, 512M or a number of bytes")
    power = " kmgt".index(m.group(2).lower() or " ")
    return int(float(m.group(1)) * 1024**power)


def parse_duration(text: str | int | float, what: str = "--time") -> float:
    """Seconds from ``30m``, ``2h``, ``90s``, ``1h30m``, ``1.5h`` or a number of seconds.

    Raises:
        ConfigError: naming the value and how to write one.
    """
    spec = str(text).strip().lower().replace(" ", "")
    parts = re.findall(r"([0-9]*\.?[0-9]+)([hms]?)", spec)
    if not spec or "".join(n + u for n, u in parts) != spec or any(not u for _, u in parts[:-1]):
        raise ConfigError(f"{what} {text!r} is not a duration; write e.g. 30m, 2h, 90s, 1h30m or a number of seconds")
    seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1, "": 1}[u] for n, u in parts)
    if not 0 < seconds < math.inf:
        raise ConfigError(f"{what} {text!r}: the budget must be more than 0 seconds")
    return seconds


def _tri_state(value: Any) -> Any:
    """``memory_efficient`` as on/off/auto: config files written before it had ``auto`` hold true/false."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return "on" if value.lower() in ("true", "yes", "1") else "off"
    return value


def _coerce(key: str, value: Any, type_name: Any, source: str) -> Any:
    """YAML gives ints for floats (``lr: 1``) and strings for numbers (``lr: 1e-3``): accept both, refuse nonsense."""
    kind = {"int": int, "float": float, "bool": bool, "str": str}.get(str(type_name))
    if kind is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            raise ValueError
        out = kind(value)
        if kind is float and not math.isfinite(out):
            raise ValueError
        return out
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{source}: {key}={value!r} is not a valid {kind.__name__}") from None


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader (no ``!!python`` tags: a config file is untrusted input)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML (only plain values are allowed, no !!python tags): {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, e.g. 'epochs: 10', not {type(data).__name__}")
    return data


def dump_yaml(config: TrainConfig) -> str:
    """The config as YAML text, one setting per line in field order."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True)


def resolve_config(
    overrides: dict[str, Any] | None = None,
    config_file: str | os.PathLike | None = None,
    recommended: dict[str, Any] | None = None,
) -> TrainConfig:
    """Merge defaults < ``recommended`` (a built-in data set's) < ``config_file`` < ``overrides``.

    With a ``time`` budget, ``epochs`` caps the run only where the file or the overrides give it: else it is 0 (no
    cap), whatever a built-in data set recommends.
    """
    merged: dict[str, Any] = dict(recommended or {})
    given = dict(load_yaml(config_file)) if config_file else {}
    given.update(overrides or {})
    merged.update(given)
    if merged.get("time") and "epochs" not in given:
        merged["epochs"] = 0
    return TrainConfig.from_dict(merged, source=str(config_file) if config_file else "settings")
