"""Small generated image folders for end-to-end tests: learnable classes plus every kind of awkward file."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFilter

CLASSES = ("狗", "猫")  # Chinese class names: dog, cat


def pattern_image(label: int, rng: np.random.Generator, size: int = 24) -> Image.Image:
    """Class 0 is bright at the top, class 1 at the bottom; noise on top so it is not trivial."""
    arr = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
    half = slice(0, size // 2) if label == 0 else slice(size // 2, size)
    arr[half] = np.clip(arr[half].astype(int) + 150, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def make_folder(root: Path, per_class: int = 12, seed: int = 0, size: int = 24) -> Path:
    """root/<class>/<n>.png for the two classes, learnable from the pattern."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pattern_image(label, rng, size).save(d / f"img {i}.png")
    return root


def add_awkward_files(root: Path) -> dict[str, Path]:
    """The bad (corrupt JPEG, zero-byte, text named .png) and the odd-but-good (gray, CMYK, RGBA) files."""
    rng = np.random.default_rng(1)
    dog, cat = root / CLASSES[0], root / CLASSES[1]
    good = pattern_image(0, rng)
    buf = dog / "truncated.jpg"
    good.save(buf, format="JPEG")
    buf.write_bytes(buf.read_bytes()[:200])
    (dog / "empty.png").write_bytes(b"")
    (cat / "notes.png").write_text("this is not an image", encoding="utf-8")
    files = {"truncated": buf, "empty": dog / "empty.png", "text": cat / "notes.png"}
    pattern_image(0, rng).convert("L").save(dog / "gray.png")
    pattern_image(1, rng).convert("CMYK").save(cat / "cmyk.jpg", format="JPEG")
    rgba = pattern_image(1, rng).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(cat / "rgba.png")
    return files


def lookalike_image(rng: np.random.Generator, size: int = 128) -> Image.Image:
    """A gray "chest X-ray": one anatomy (body, two lungs, spine, ribs) for all, drawn with a different pose,
    rib phase, low-frequency density, 0-3 nodules and noise each time: distinct images that share a structure."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    dx, dy = rng.uniform(-0.03, 0.03, 2)
    scale = rng.uniform(0.95, 1.05)
    xx, yy = (x - 0.5 - dx) / scale, (y - 0.5 - dy) / scale
    img = 40.0 + 110 * (((xx / 0.45) ** 2 + (yy / 0.48) ** 2) < 1)
    for side in (-1, 1):
        img -= 70 * ((((xx - side * 0.2) / 0.15) ** 2 + ((yy + 0.02) / 0.32) ** 2) < 1)
    img += 60 * (np.abs(xx) < 0.04)
    img += 12 * np.sin(yy * 40 + rng.uniform(0, 2 * np.pi) + 6 * xx**2)
    low = Image.fromarray(rng.normal(0, 1, (8, 8)).astype(np.float32), mode="F")
    img += 10 * np.asarray(low.resize((size, size), Image.Resampling.BICUBIC))
    for _ in range(rng.integers(0, 4)):
        cx, cy, r = rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), rng.uniform(0.02, 0.06)
        img += 35 * (((xx - cx) ** 2 + (yy - cy) ** 2) < r * r)
    img += rng.normal(0, 6, img.shape) + rng.uniform(-10, 10)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))


def contrast(im: Image.Image, factor: float) -> Image.Image:
    """Stretch (factor > 1) or flatten the gray levels around their mean."""
    arr = np.asarray(im, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint((arr - arr.mean()) * factor + arr.mean()), 0, 255).astype(np.uint8))


def jpeg(im: Image.Image, path: Path, quality: int) -> Path:
    im.save(path, format="JPEG", quality=quality)
    return path


PLANTED_CLASSES = ("normal", "肺炎")  # Chinese: pneumonia


def make_planted_folder(root: Path, per_split: dict[str, int] | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """root/{train,val,test}/<class>/ of distinct look-alikes, plus planted copies; returns the planted pairs
    (paths relative to root) a duplicate search must find."""
    per_split = per_split or {"train": 12, "val": 5, "test": 5}
    rng = np.random.default_rng(seed)
    originals: dict[str, Image.Image] = {}
    for split, n in per_split.items():
        for name in PLANTED_CLASSES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rel = f"{split}/{name}/{i:03d}.png"
                originals[rel] = lookalike_image(rng)
                originals[rel].save(root / rel)
    a, b = PLANTED_CLASSES
    tr = f"train/{a}"
    planted = [
        (f"{tr}/000.png", f"test/{a}/copy_exact.png"),  # identical file, train -> test
        (f"{tr}/001.png", f"val/{a}/copy_q60.jpg"),  # JPEG quality 60, train -> val
        (f"{tr}/002.png", f"test/{a}/copy_80pct.png"),  # resized to 80%, train -> test
        (f"{tr}/003.png", f"val/{a}/copy_contrast_up.png"),  # contrast +10%
        (f"{tr}/004.png", f"{tr}/copy_contrast_down.png"),  # contrast -10%, within a class
        (f"{tr}/005.png", f"{tr}/copy_same.png"),  # exact copy within a class
        (f"{tr}/006.png", f"train/{b}/copy_other_class.png"),  # one image under two classes
        (f"val/{b}/000.png", f"test/{b}/copy_q60.jpg"),  # val -> test, re-encoded
    ]
    for src, dst in planted:
        im = originals[src]
        if dst.endswith("copy_exact.png") or dst.endswith("copy_same.png") or dst.endswith("other_class.png"):
            (root / dst).write_bytes((root / src).read_bytes())
        elif dst.endswith("q60.jpg"):
            jpeg(im, root / dst, 60)
        elif dst.endswith("80pct.png"):
            im.resize((im.width * 4 // 5, im.height * 4 // 5), Image.Resampling.LANCZOS).save(root / dst)
        else:
            contrast(im, 1.1 if "up" in dst else 0.9).save(root / dst)
    return planted


# ---------------------------------------------------------------------------------------------------------------
# DICOM (needs pydicom: callers skip without it)
# ---------------------------------------------------------------------------------------------------------------

PLANTED_PHI = {"PatientName": "Zhang^Wei^秘密", "PatientID": "MRN-7734-PHI", "PatientBirthDate": "19610423"}
"""Patient data planted in generated DICOM files: none of these values may appear in any output."""


def write_dicom(
    path: Path,
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 16,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    patient: dict[str, str] | None = None,
    syntax: str = "1.2.840.10008.1.2.1",
) -> Path:
    """A Part 10 file (preamble and ``DICM`` marker) holding ``stored`` (uint16, H x W, or F x H x W frames) as a
    secondary-capture image; ``rescale`` is (slope, intercept), ``window`` (center, width); ``patient`` sets tags
    (default :data:`PLANTED_PHI`)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, SecondaryCaptureImageStorage, generate_uid

    stored = np.asarray(stored, dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(syntax)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    for key, value in (PLANTED_PHI if patient is None else patient).items():
        setattr(ds, key, value)
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8, for the planted Chinese name
    ds.Modality = "DX"
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = (f"{v:g}" for v in rescale)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = (f"{v:g}" for v in window)
    data = stored.astype("<u2").tobytes()
    if meta.TransferSyntaxUID.is_encapsulated:  # a compressed syntax: fragments, whatever the codec would say
        from pydicom.encaps import encapsulate

        data = encapsulate([data])
    ds.PixelData = data
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def dicom_pattern(label: int, rng: np.random.Generator, *, size: int = 24, bits: int = 12) -> np.ndarray:
    """The stored values of a ``bits``-bit film: class 0 dense (high values) at the top, class 1 at the bottom."""
    top = 2**bits - 1
    arr = rng.integers(0, top // 3, size=(size, size)).astype(np.uint16)
    half = slice(0, size // 2) if label == 0 else slice(size // 2, size)
    arr[half] += np.uint16(top // 2)
    return arr


def make_dicom_folder(
    root: Path, per_class: int = 6, *, bits: int = 12, photometric: str = "MONOCHROME2", seed: int = 0
) -> list[tuple[str, str, str]]:
    """``root/<class>/<n>`` DICOM files (every third without an extension, found by its marker) of ``bits``-bit
    films in ``photometric``; MONOCHROME1 files store the inverted values so they show the same picture.
    Two images per patient (planted names, ids and birth dates). Returns ``(relative path, class, patient id)``.
    """
    rng = np.random.default_rng(seed)
    rows = []
    top = 2**bits - 1
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            stored = dicom_pattern(label, rng, bits=bits)
            if photometric == "MONOCHROME1":
                stored = np.uint16(top) - stored
            rel = f"{name}/{i:03d}" + ("" if i % 3 == 2 else ".dcm")
            patient_id = f"{PLANTED_PHI['PatientID']}-{label}{i // 2}"
            patient = {**PLANTED_PHI, "PatientID": patient_id}
            write_dicom(root / rel, stored, photometric=photometric, bits_stored=bits, patient=patient)
            rows.append((rel, name, patient_id))
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Multi-label tables with a known best AUROC per label
# ---------------------------------------------------------------------------------------------------------------

FINDINGS = ("Effusion", "Mass", "Nodule", "气胸")  # Chinese: pneumothorax
"""The labels of :func:`make_multilabel_table`; label k is a disc of colour ``COLOURS[k]`` in a random quadrant."""
COLOURS = ((1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 0))
"""Red, green, blue discs and a black one, each told from the others by one feature: a colour, not a place (after
a DenseNet's global pooling "there is red" is easy to learn, "the top right is bright" is not), and no colour
inside another (with yellow as the fourth, red was the slowest label: a tiny model on 800 images had it at 0.97
after 5 epochs, at 1.00 after 4 with black). Grayscale loses the colours: train with ``in_chans`` 3."""
PREVALENCE = (0.5, 0.4, 0.35, 0.3)
"""How often each label is present, independently of the others and of everything else."""
HIDDEN = (0.0, 0.0, 0.2, 0.4)
"""How often a present label is drawn invisibly (no disc): Effusion and Mass are always seen, Nodule and 气胸 not."""
_DISC = 0.35  # the disc's radius, in quadrants; its centre moves by up to 0.1 of one, so it stays inside


class MultilabelTable(NamedTuple):
    """What :func:`make_multilabel_table` wrote: unpacks as ``csv, labels, best_auroc``."""

    csv: Path
    labels: tuple[str, ...]
    best_auroc: dict[str, float]
    """Per label, ``1 - hidden / 2``: the AUROC of the Bayes-optimal score (see :func:`make_multilabel_table`)."""


def draw_multilabel(n: int, *, seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (n, size, size, 3 uint8) and their truth (n, K bool) as :func:`make_multilabel_table` draws them:
    label k present with probability ``PREVALENCE[k]``, drawn unless hidden (``HIDDEN[k]``). An image is gray RGB
    noise (60-119) with, for each drawn label, a disc (radius 0.35 of a quadrant) in a quadrant of its own that
    adds 136 to its colour's channels (the black one divides all by 6: 10-19): large and high-contrast, learnt by a
    tiny DenseNet at 16 px."""
    rng = np.random.default_rng(seed)
    present = rng.random((n, len(FINDINGS))) < np.array(PREVALENCE)
    visible = present & (rng.random(present.shape) >= np.array(HIDDEN))
    images = rng.integers(60, 120, size=(n, size, size, 3), dtype=np.uint8)
    quadrant = rng.permuted(np.tile(np.arange(4), (n, 1)), axis=1)  # (n, 4): where label k's disc goes
    half = size / 2
    y, x = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    for k, colour in enumerate(COLOURS):
        corner = np.stack([quadrant[:, k] // 2, quadrant[:, k] % 2], axis=1)
        cy, cx = ((corner + 0.5 + rng.uniform(-0.1, 0.1, (n, 2))) * half).T  # the quadrant's centre, jittered
        disc = (y - cy[:, None, None]) ** 2 + (x - cx[:, None, None]) ** 2 <= (_DISC * half) ** 2  # (n, size, size)
        drawn = disc & visible[:, k, None, None]
        if any(colour):
            images += drawn[..., None] * np.array(colour, dtype=np.uint8) * np.uint8(136)
        else:
            images[drawn] //= 6
    return images, present


def multilabel_scores(images: np.ndarray) -> np.ndarray:
    """The Bayes-optimal score (N, K) of images (N, H, W, 3): 1.0 where a disc of label k's colour shows (at least
    3 pixels whose channels above 157 are exactly that colour's, every channel below 40 for the black disc; the
    noise lies in 60-119, a disc's channels in 196-255 or 10-19), else 0.0."""
    images = np.asarray(images)
    bright, dark = images > 157, (images < 40).all(axis=-1)  # (N, H, W, 3), (N, H, W)
    hits = [(bright == np.array(c, dtype=bool)).all(axis=-1) if any(c) else dark for c in COLOURS]
    return (np.stack([h.sum(axis=(1, 2)) for h in hits], axis=1) >= 3).astype(np.float64)


def _label_cell(truth: bool, u: float, *, uncertain: float, blank: float) -> str:
    if u < uncertain:
        return "-1"
    return "" if u < uncertain + blank else str(int(truth))


def make_multilabel_table(
    root: Path,
    n: int = 400,
    *,
    seed: int = 0,
    size: int = 32,
    columns: bool = False,
    patients: bool = False,
    uncertain: float = 0.0,
    blank: float = 0.0,
    none_label: str = "No Finding",
) -> MultilabelTable:
    """``root/images/NNNN.png`` and ``root/labels.csv``, whose labels (:data:`FINDINGS`) depend on known features
    (:func:`draw_multilabel`).

    Label k is present with probability ``PREVALENCE[k]``, independently of the other labels; a present label draws
    a disc of its colour except with probability ``HIDDEN[k]`` (present but invisible); an absent one never does.
    So the image says one thing of label k, whether its disc is there: a disc means present (posterior 1), no disc a
    posterior below 1, the same for every such image. The Bayes-optimal score is two-valued; a positive scores
    high with probability 1 - q and ties every negative otherwise, so the best AUROC is exactly ``1 - q / 2``
    (1.0, 1.0, 0.9, 0.8). The images and truth depend on ``seed``, ``n`` and ``size`` only, never on the options.

    Args:
        columns: ``image,<one 0/1 column per label>`` (CheXpert style) instead of ``image,labels`` with the
            present labels joined by ``|`` (NIH style; ``none_label`` for an image with none, ``""`` for a blank).
        patients: add a ``patient`` column (``P000``...): 1-4 consecutive images each; labels stay independent.
        uncertain, blank: ``columns`` only: the share of label cells written ``-1`` / left empty (drawn
            independently of truth and image, so masking them leaves the best AUROC as it is).
    """
    if not columns and (uncertain or blank):
        raise ValueError("uncertain and blank label cells need columns=True (one 0/1 column per label)")
    images, present = draw_multilabel(n, seed=seed, size=size)
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = [f"images/{i:04d}.png" for i in range(n)]
    for name, image in zip(names, images, strict=True):
        Image.fromarray(image).save(root / name)
    header = ["image", *(FINDINGS if columns else ["labels"])]
    if columns:
        draws = np.random.default_rng([seed, 1]).random(present.shape)  # own streams: the images stay the same
        cells = [
            [_label_cell(bool(t), float(u), uncertain=uncertain, blank=blank) for t, u in zip(ts, us, strict=True)]
            for ts, us in zip(present, draws, strict=True)
        ]
    else:
        cells = [["|".join(f for f, t in zip(FINDINGS, r, strict=True) if t) or none_label] for r in present]
    rows = [[name, *c] for name, c in zip(names, cells, strict=True)]
    if patients:
        header.append("patient")
        group = np.repeat(np.arange(n), np.random.default_rng([seed, 2]).integers(1, 5, size=n))[:n]
        rows = [[*r, f"P{g:03d}"] for r, g in zip(rows, group, strict=True)]
    path = root / "labels.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])
    return MultilabelTable(path, FINDINGS, {f: 1.0 - q / 2 for f, q in zip(FINDINGS, HIDDEN, strict=True)})
