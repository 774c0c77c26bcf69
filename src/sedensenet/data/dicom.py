"""DICOM files as the model sees them: pixels through the modality LUT, the VOI LUT or window, MONOCHROME1 inverted.

Decoding goes through pydicom 3 and its decoder plugins (the ``dicom`` extra; see docs/design.md for which plugin
decodes which transfer syntax under which licence). A grayscale image is turned into 8 bits the way a viewer shows
it: the modality LUT (rescale slope / intercept) first, then the file's first VOI LUT or window (an explicit
``window=(center, width)`` overrides it; with neither, the image's own range after the modality LUT), then
MONOCHROME1 is inverted so that bone is white. 12- and 16-bit data is windowed in float, never cut to 8 bits first.
Colour images (RGB, YBR_*, PALETTE COLOR) become RGB as pydicom converts them.

Patient data stays in the file: :func:`read_dicom` returns the pixels and only geometry and photometric tags
(:class:`DicomInfo`); :func:`patient_group` gives ``PatientID`` only as a keyed hash, for keeping a patient's
images on one side of a split. Files that cannot be used raise :class:`DicomRejected` with a one-line reason and
a ``kind`` (``sedensenet.data.images`` turns it into its ``ImageRejected``, so callers there see one error type).
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
import io
import logging
import math
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

import numpy as np
from PIL import Image

from sedensenet.errors import UserError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pydicom.pixels.decoders.base import Decoder

logger = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom")
MARKER_OFFSET = 128
MARKER = b"DICM"
INSTALL_HINT = "pip install 'sedensenet[dicom]'"

# The plugin that decodes each family of compressed transfer syntaxes in the `dicom` extra, for the error that
# says what to install when none is present (JPEG lossless and 12-bit JPEG: gdcm, or pylibjpeg-libjpeg under
# the GPL, which the extra leaves out; see docs/design.md).
_PLUGIN_FOR = {
    "1.2.840.10008.1.2.4.50": "pillow or python-gdcm",
    "1.2.840.10008.1.2.4.51": "python-gdcm (or pylibjpeg-libjpeg, GPL-3: the dicom-gpl extra)",
    "1.2.840.10008.1.2.4.57": "python-gdcm (or pylibjpeg-libjpeg, GPL-3: the dicom-gpl extra)",
    "1.2.840.10008.1.2.4.70": "python-gdcm (or pylibjpeg-libjpeg, GPL-3: the dicom-gpl extra)",
    "1.2.840.10008.1.2.4.80": "pyjpegls",
    "1.2.840.10008.1.2.4.81": "pyjpegls",
    "1.2.840.10008.1.2.4.90": "pylibjpeg with pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg with pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg with pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg with pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg with pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg with pylibjpeg-rle",
}
_GRAY = ("MONOCHROME1", "MONOCHROME2")


class DicomRejected(UserError, ValueError):
    """A DICOM file that cannot be used: ``reason`` is one line, ``kind`` one of ``not_image`` (no pixel data),
    ``unsupported`` (a transfer syntax without its decoder, a refused multi-frame file, an unknown photometric
    interpretation), ``too_large`` or ``corrupt``."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


@dataclass(frozen=True)
class DicomOptions:
    """How DICOM pixels become an image.

    Attributes:
        window: ``(center, width)`` in modality units (e.g. Hounsfield) replacing the file's VOI LUT and windows.
        multiframe: ``"first"`` decodes the first frame of a multi-frame file (and logs it); ``"refuse"`` rejects
            the file (the server, where a cine loop is not one image).
    """

    window: tuple[float, float] | None = None
    multiframe: Literal["first", "refuse"] = "first"

    def __post_init__(self) -> None:
        if self.multiframe not in ("first", "refuse"):
            raise ValueError(f"multiframe must be 'first' or 'refuse', got {self.multiframe!r}")
        if self.window is not None:
            center, width = (float(v) for v in self.window)
            if not (math.isfinite(center) and math.isfinite(width)) or width < 1:
                raise ValueError(f"a DICOM window is (center, width) with a finite width >= 1, got {self.window!r}")
            object.__setattr__(self, "window", (center, width))


@dataclass(frozen=True)
class DicomInfo:
    """The only tags a decoded file reports: geometry, pixel encoding and how it was windowed (no patient data)."""

    rows: int
    columns: int
    frames: int
    samples_per_pixel: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    transfer_syntax: str
    window: str
    """``"override C/W"``, ``"file window C/W"``, ``"file VOI LUT"``, ``"min/max lo..hi"`` or ``"colour"``."""


@dataclass(frozen=True)
class DicomImage:
    """A decoded DICOM file: an 8-bit ``L`` or ``RGB`` image and its :class:`DicomInfo`."""

    image: Image.Image
    info: DicomInfo


# ---------------------------------------------------------------------------------------------------------------
# Recognising a file
# ---------------------------------------------------------------------------------------------------------------


def _head(source: str | os.PathLike | bytes | BinaryIO) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source[: MARKER_OFFSET + 4])
    if hasattr(source, "read"):
        try:
            pos = source.tell()
        except (OSError, ValueError):  # a stream that cannot go back: only a seekable one can be DICOM-sniffed
            return b""
        try:
            return source.read(MARKER_OFFSET + 4)
        finally:
            source.seek(pos)
    try:
        with open(source, "rb") as f:
            return f.read(MARKER_OFFSET + 4)
    except OSError:
        return b""


def has_marker(source: str | os.PathLike | bytes | BinaryIO) -> bool:
    """True when ``source`` carries the ``DICM`` marker at byte 128 (the DICOM Part 10 preamble)."""
    return _head(source)[MARKER_OFFSET : MARKER_OFFSET + 4] == MARKER


def is_dicom(source: str | os.PathLike | bytes | BinaryIO) -> bool:
    """True for content with the ``DICM`` marker at byte 128, and for files named ``*.dcm`` / ``*.dicom`` (which
    may lack the preamble). Never raises: an unreadable path is simply not DICOM."""
    if isinstance(source, str | os.PathLike) and os.fspath(source).lower().endswith(DICOM_SUFFIXES):
        return True
    return has_marker(source)


# ---------------------------------------------------------------------------------------------------------------
# Reading the header
# ---------------------------------------------------------------------------------------------------------------


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise DicomRejected(f"DICOM support is not installed: {INSTALL_HINT}", "unsupported") from None
    return pydicom


def _read(source: str | os.PathLike | bytes | BinaryIO, *, header_only: bool = False) -> Dataset:
    pydicom = _pydicom()
    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(bytes(source))
    force = not has_marker(source)  # a .dcm file without the Part 10 preamble: read the bare data set
    try:
        # A path's large values (the pixel data) are read only when used: the header checks come first.
        defer = "1 MB" if isinstance(source, str | os.PathLike) else None
        ds = pydicom.dcmread(source, force=force, stop_before_pixels=header_only, defer_size=defer)
    except (PermissionError, FileNotFoundError) as exc:
        raise DicomRejected(f"unreadable: {exc.strerror or exc}", "unreadable") from None
    except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, ValueError, struct.error ...
        raise DicomRejected(f"malformed DICOM header ({type(exc).__name__})", "corrupt") from None
    if force and not len(ds):
        raise DicomRejected("malformed DICOM header (no data elements)", "corrupt")
    return ds


def _int_tag(ds: Dataset, name: str, default: int | None = None) -> int:
    try:
        value = ds.get(name, default)
        return int(value)
    except Exception:
        raise DicomRejected(f"malformed DICOM header ({name} missing or not a number)", "corrupt") from None


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None:  # a bare data set: pydicom read it in some encoding, which is what the pixels use
        little, implicit = ds.original_encoding
        return "1.2.840.10008.1.2" if implicit else ("1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2")
    return str(uid)


def _info(ds: Dataset, *, max_pixels: int, options: DicomOptions) -> DicomInfo:
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        meta = getattr(ds, "file_meta", None) or {}
        sop_uid = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")
        if sop_uid is None and "DirectoryRecordSequence" not in ds:  # a cut-off or garbled header
            raise DicomRejected("malformed DICOM header (no SOP class and no pixel data)", "corrupt")
        sop = getattr(ds.get("SOPClassUID"), "name", None) or ("DICOMDIR" if "DirectoryRecordSequence" in ds else "")
        what = f" ({sop})" if sop else ""
        raise DicomRejected(f"no pixel data: a DICOM file that is not an image{what}", "not_image")
    rows, columns = _int_tag(ds, "Rows"), _int_tag(ds, "Columns")
    frames = _int_tag(ds, "NumberOfFrames", 1) or 1
    pixels = rows * columns * frames
    if pixels > max_pixels:
        raise DicomRejected(f"too large: {pixels} pixels ({rows}x{columns}x{frames}) > limit {max_pixels}", "too_large")
    if frames > 1 and options.multiframe == "refuse":
        raise DicomRejected(f"multi-frame DICOM ({frames} frames): only single images are accepted", "unsupported")
    return DicomInfo(
        rows=rows,
        columns=columns,
        frames=frames,
        samples_per_pixel=_int_tag(ds, "SamplesPerPixel", 1),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper(),
        bits_allocated=_int_tag(ds, "BitsAllocated", 8),
        bits_stored=_int_tag(ds, "BitsStored", _int_tag(ds, "BitsAllocated", 8)),
        transfer_syntax=_transfer_syntax(ds),
        window="",
    )


def _syntax_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name and name != uid else f"transfer syntax {uid}"


def _decode_first_frame(ds: Dataset, info: DicomInfo) -> tuple[np.ndarray, str]:
    """The first frame's stored values (YBR converted to RGB) and the photometric interpretation they are in."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(info.transfer_syntax)
    except NotImplementedError:
        raise DicomRejected(f"no decoder exists for {_syntax_name(info.transfer_syntax)}", "unsupported") from None
    if not decoder.is_available:
        plugin = _PLUGIN_FOR.get(info.transfer_syntax, "a pydicom decoder plugin")
        raise DicomRejected(
            f"{_syntax_name(info.transfer_syntax)} needs a decoder that is not installed: {INSTALL_HINT} ({plugin})",
            "unsupported",
        )
    try:
        arr, meta = decoder.as_array(ds, index=0 if info.frames > 1 else None)
    except Exception as exc:  # truncated data, a plugin's error, a header that does not match the data
        reason = f"cannot decode the pixel data ({type(exc).__name__}: {_short(exc)})"
        if decoder.missing_dependencies:  # a decoder that is not installed might read what those here cannot
            reason += f"; not installed: {', '.join(_missing(decoder))}"
        raise DicomRejected(reason, "corrupt") from None
    if info.frames > 1:
        logger.info("multi-frame DICOM (%d frames): using the first frame", info.frames)
    return arr, str(meta.get("photometric_interpretation", info.photometric)).upper()


def _missing(decoder: Decoder) -> list[str]:
    """The packages that would add a decoder for this syntax, GPL ones marked (they are not in the extra)."""
    deps = [d.partition(" - requires ")[2] for d in decoder.missing_dependencies]  # "pylibjpeg - requires a and b"
    names = sorted({re.split(r"[<>=!~ ]", d.strip())[0] for text in deps for d in re.split(r",| and ", text) if d})
    names = [n for n in names if not _installed(n)]
    return [f"{n} (GPL-3: the dicom-gpl extra)" if n == "pylibjpeg-libjpeg" else n for n in names]


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 120 else text[:117] + "..."


# ---------------------------------------------------------------------------------------------------------------
# Pixels to 8 bits
# ---------------------------------------------------------------------------------------------------------------


def _first(value: object) -> float:
    """The first value of a possibly multi-valued numeric tag."""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _linear_window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2: the window as a [0, 1] float image."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if width <= 1:  # LINEAR's width - 1 divides: a width of 1 is a threshold at the centre
        return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _file_window(ds: Dataset) -> tuple[float, float, str] | None:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    minimum = 0 if function == "LINEAR_EXACT" else 1
    if not (math.isfinite(center) and math.isfinite(width)) or width <= minimum - 1 or width <= 0:
        logger.info("ignoring an invalid DICOM window (width %s)", width)
        return None
    return center, width, function


def _voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """The first VOI LUT of the file as a [0, 1] image, scaled by the LUT's own output range."""
    from pydicom.pixels import apply_voi

    if not ds.get("VOILUTSequence"):
        return None
    try:
        descriptor = ds.VOILUTSequence[0].LUTDescriptor
        entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])
        table = apply_voi(np.arange(first, first + entries), ds, 0).astype(np.float64)
        mapped = apply_voi(np.rint(values).astype(np.int64), ds, 0).astype(np.float64)
    except Exception as exc:
        logger.info("ignoring an unusable VOI LUT (%s)", type(exc).__name__)
        return None
    lo, hi = float(table.min()), float(table.max())
    return (mapped - lo) / max(hi - lo, 1e-12)


def _grayscale(arr: np.ndarray, ds: Dataset, info: DicomInfo, options: DicomOptions) -> tuple[np.ndarray, str]:
    """Stored values to an 8-bit image: modality LUT, then VOI (override, VOI LUT, window, or min/max)."""
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)  # float: 12/16 bits stay whole
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    unit: np.ndarray | None = None
    if options.window is not None:
        center, width = options.window
        unit, how = _linear_window(values, center, width, "LINEAR"), f"override {center:g}/{width:g}"
    else:
        unit = _voi_lut(values, ds)
        how = "file VOI LUT"
        window = _file_window(ds) if unit is None else None
        if window is not None:
            unit, how = _linear_window(values, *window), f"file window {window[0]:g}/{window[1]:g}"
    if unit is None:
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        unit, how = (values - lo) / max(hi - lo, 1e-12), f"min/max {lo:g}..{hi:g}"
    out = np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)
    if info.photometric == "MONOCHROME1":  # 0 is white: invert, so that a chest film looks like one
        out = 255 - out
    return out, how


def _colour(arr: np.ndarray, ds: Dataset, photometric: str, info: DicomInfo) -> np.ndarray:
    """RGB (already converted from YBR by the decoder) or a palette, as 8-bit RGB."""
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            arr = apply_color_lut(arr, ds)
        except Exception as exc:
            raise DicomRejected(f"unusable palette ({type(exc).__name__}: {_short(exc)})", "corrupt") from None
        top = 255.0 if arr.dtype == np.uint8 else 65535.0
    else:
        top = float(2 ** min(max(info.bits_stored, 1), 32) - 1) if arr.dtype.kind in "ui" else 1.0
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise DicomRejected(f"colour DICOM with an unexpected shape {arr.shape}", "corrupt")
    if arr.dtype == np.uint8 and top == 255.0:
        return arr
    scaled = np.clip(arr.astype(np.float64), 0.0, top) * (255.0 / top)
    return np.rint(scaled).astype(np.uint8)


def read_dicom(
    source: str | os.PathLike | bytes | BinaryIO, *, max_pixels: int, options: DicomOptions | None = None
) -> DicomImage:
    """Decode a DICOM file (path, bytes or an open binary file) into an 8-bit ``L`` or ``RGB`` image.

    The declared size (Rows x Columns x frames) is checked against ``max_pixels`` before any pixel is decoded;
    a multi-frame file gives its first frame (or is refused, as ``options.multiframe`` says).

    Raises:
        DicomRejected: no pixel data (a structured report, a DICOMDIR), a transfer syntax whose decoder is not
            installed (the reason names the package), too many pixels, a malformed header or pixel data.
    """
    options = options or DicomOptions()
    ds = _read(source)
    info = _info(ds, max_pixels=max_pixels, options=options)
    arr, photometric = _decode_first_frame(ds, info)
    if photometric in _GRAY or (arr.ndim == 2 and photometric not in ("PALETTE COLOR",)):
        if arr.ndim != 2:
            raise DicomRejected(f"grayscale DICOM with an unexpected shape {arr.shape}", "corrupt")
        pixels, how = _grayscale(arr, ds, info, options)
        mode = "L"
    elif photometric in ("RGB", "PALETTE COLOR") or photometric.startswith("YBR"):
        pixels, how, mode = _colour(arr, ds, photometric, info), "colour", "RGB"
    else:
        raise DicomRejected(f"unsupported photometric interpretation {photometric}", "unsupported")
    image = Image.fromarray(np.ascontiguousarray(pixels), mode=mode)
    image.format = "DICOM"  # what check-data reports as the file's format
    return DicomImage(image=image, info=DicomInfo(**{**info.__dict__, "window": how}))


# ---------------------------------------------------------------------------------------------------------------
# Patients, as keyed hashes only
# ---------------------------------------------------------------------------------------------------------------


def local_salt(directory: str | os.PathLike) -> bytes:
    """This machine's secret key for :func:`patient_group`, made once in ``directory/dicom-salt`` (mode 0600).

    The key never leaves the machine, so a hash in a report or a checkpoint cannot be turned back into a patient
    id by trying every id (ids are short), while the same patient gets the same group in every run here.
    """
    path = Path(directory) / "dicom-salt"
    try:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key.hex())
    return key


def patient_group(source: str | os.PathLike | bytes | BinaryIO, *, salt: bytes) -> str | None:
    """``"patient-<16 hex digits>"``, a keyed hash (HMAC-SHA256) of the file's ``PatientID``, or ``None`` when
    the file has none. Only the header is read. The id itself is never returned or logged.

    Raises:
        DicomRejected: the header cannot be read.
    """
    if not salt:
        raise ValueError("patient_group needs a non-empty salt (see local_salt)")
    ds = _read(source, header_only=True)
    value = str(ds.get("PatientID", "") or "").strip()
    if not value:
        return None
    digest = hmac.new(salt, value.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()
    return f"patient-{digest[:16]}"


def patient_groups(paths: Iterable[str | os.PathLike], *, salt: bytes) -> dict[Path, str]:
    """Each DICOM file of ``paths`` with a ``PatientID`` -> its :func:`patient_group`: the groups of a DICOM folder,
    so that a patient's films stay on one side of every split without a groups file. Other files (not DICOM, no
    id, an unreadable header) are left out, i.e. each is its own group."""
    groups: dict[Path, str] = {}
    for path in paths:
        if not is_dicom(path):
            continue
        try:
            group = patient_group(path, salt=salt)
        except DicomRejected:
            continue
        if group is not None:
            groups[Path(path)] = group
    return groups
