"""One image file: is it usable, and how it is decoded for the model; a Dataset of decoded samples.

:func:`check_image` decides up front (never raising) whether a file can be used and says why not;
:func:`load_image` opens it as the model will see it (EXIF orientation applied, converted to the channel count
the model takes, 16-bit and float images scaled to 8 bits); :class:`ImageFolderDataset` turns :class:`Sample`
lists into tensors and survives a file that changes after the scan. Finding and splitting the files of a folder
is :mod:`sedensenet.data.scan`'s job.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from sedensenet.data.dedupe import Fingerprint, fingerprint_image
from sedensenet.data.dicom import DICOM_SUFFIXES, DicomOptions, DicomRejected, is_dicom, read_dicom
from sedensenet.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS: 1024 * 1024 * 1024 // 4 // 3
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "DIB", "GIF", "TIFF", "WEBP")
"""The PIL formats of the image extensions we accept (JPEG includes cameras' multi-picture files; DIB: headerless
BMP). Only these decoders are tried, whatever a file is named: PIL's others (EPS runs Ghostscript) never see
user data."""


class DataError(UserError, ValueError):
    """A problem with the user's data: the message names the folder or file and says what to do."""


@dataclass
class Sample:
    """One usable image and its class index; in a multi-label set, a tuple of ``1.0`` (present), ``0.0`` (absent)
    or NaN (ignored) in the order of the label names."""

    path: Path
    label: int | tuple[float, ...]


def target(label: int | tuple[float, ...]) -> int | torch.Tensor:
    """What a dataset yields for ``label``: the class index, or a float32 tensor of a multi-label tuple (so a
    batch's labels are a float (B, K) tensor, NaN where ignored)."""
    return torch.tensor(label, dtype=torch.float32) if isinstance(label, tuple) else label


# ---------------------------------------------------------------------------------------------------------------
# Checking one file
# ---------------------------------------------------------------------------------------------------------------


def _unreadable(exc: OSError) -> str:
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        return "unreadable: permission denied"
    if isinstance(exc, FileNotFoundError):
        return "unreadable: file not found (deleted, or a broken link)"
    return f"unreadable: {exc.strerror or exc}"


def _too_large(exc: Exception, max_pixels: int) -> str:
    match = re.search(r"\((\d+) pixels\)", str(exc))
    if match is None:
        return f"too large: {exc}"
    pixels = int(match.group(1))
    if pixels > max_pixels:
        return f"too large: {pixels} pixels > limit {max_pixels}"
    # The caller allowed more than PIL does: PIL's own limit refused it while opening.
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return f"too large: {pixels} pixels > PIL limit {limit} (raise PIL.Image.MAX_IMAGE_PIXELS as well)"


class ImageRejected(DataError):
    """An image that cannot be used; ``reason`` is the short text :func:`check_image` returns for it and ``kind``
    one of ``empty``, ``not_image``, ``too_large``, ``corrupt``, ``unreadable`` or ``unsupported`` (a DICOM file
    whose decoder is not installed, or a refused multi-frame one) for callers that map kinds to codes, such as the
    HTTP server."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


def open_checked(
    source: str | os.PathLike | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS, *, dicom: DicomOptions | None = None
) -> Image.Image:
    """Open and fully decode an image, refusing it with :class:`ImageRejected` when it cannot be used.

    Only the decoders of :data:`IMAGE_FORMATS` are tried, and DICOM (chosen by content, the ``DICM`` marker, or a
    ``.dcm`` name: :mod:`sedensenet.data.dicom`, windowed to 8 bits as ``dicom`` says). The pixel count is read
    from the header and checked before any pixel is decoded, so a decompression bomb costs nothing. The caller
    closes the returned image.
    """
    if is_dicom(source):
        return _open_dicom(source, max_pixels, dicom)
    try:
        im = Image.open(source, formats=IMAGE_FORMATS)  # reads only the header
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(_too_large(exc, max_pixels), "too_large") from None
    except UnidentifiedImageError:
        raise ImageRejected("not an image (cannot identify image file)", "not_image") from None
    except (PermissionError, FileNotFoundError) as exc:
        raise ImageRejected(_unreadable(exc), "unreadable") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error... on bad data
        raise ImageRejected(_corrupt(exc), "corrupt") from None
    try:
        pixels = im.width * im.height
        if pixels > max_pixels:
            raise ImageRejected(f"too large: {pixels} pixels > limit {max_pixels}", "too_large")
        im.load()  # full decode: catches truncated and corrupt data
    except ImageRejected:
        im.close()
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        im.close()
        raise ImageRejected(_too_large(exc, max_pixels), "too_large") from None
    except Exception as exc:
        im.close()
        raise ImageRejected(_corrupt(exc), "corrupt") from None
    return im


def _open_dicom(source: str | os.PathLike | BinaryIO, max_pixels: int, options: DicomOptions | None) -> Image.Image:
    """The DICOM seam: the same rejection error and reasons as any other image."""
    try:
        return read_dicom(source, max_pixels=max_pixels, options=options).image
    except DicomRejected as exc:
        raise ImageRejected(exc.reason, exc.kind) from None


def _corrupt(exc: Exception) -> str:
    detail = str(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
    return f"truncated or corrupt image: {detail}"


def check_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Decode ``path`` fully and return ``None`` when it is usable, else a short reason to skip it.

    The checks are :func:`open_checked`'s (a decompression bomb costs nothing). Never raises; special files
    (pipes, devices) are refused without being opened.
    """
    return inspect_image(path, max_pixels, fingerprint=False)[0]


def _fingerprint(im: Image.Image, path: str | os.PathLike) -> Fingerprint | None:
    """The duplicate search's fingerprint; a usable image whose mode it cannot hash is only left out of it."""
    try:
        return fingerprint_image(im, path)
    except Exception as exc:  # e.g. a mode PIL cannot turn into grayscale directly: the file itself is fine
        logger.debug("no duplicate fingerprint for %s: %s", path, exc)
        return None


def inspect_image(
    path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, fingerprint: bool = True
) -> tuple[str | None, Fingerprint | None]:
    """:func:`check_image`'s reason, and the file's :class:`Fingerprint` from the same decode when usable."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return _unreadable(exc), None
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file", None
    if st.st_size == 0:
        return "empty file (0 bytes)", None
    try:
        im = open_checked(path, max_pixels)
    except ImageRejected as exc:
        return exc.reason, None
    with im:
        return None, _fingerprint(im, path) if fingerprint else None


# ---------------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------------


def _target_mode(in_chans: int) -> str:
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive integer, got {in_chans!r}")
    return {1: "L", 3: "RGB", 4: "RGBA"}.get(in_chans, "RGB")


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float images to 8-bit ``L`` by scaling, never by clipping."""
    arr = np.asarray(im)
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        in_unit = arr.size == 0 or (arr.min() >= 0 and arr.max() <= 1)
        lo, hi = (0.0, 1.0) if in_unit else (float(arr.min()), float(arr.max()))
    elif im.mode.startswith("I;16") or (arr.size and arr.min() >= 0 and arr.max() <= 65535):
        lo, hi = 0.0, 65535.0  # the full 16-bit range: the same as dividing by 257
    else:
        lo, hi = float(arr.min()), float(arr.max())
    scaled = (arr.astype(np.float64) - lo) * (255.0 / max(hi - lo, 1e-12))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def _convert(im: Image.Image, mode: str) -> Image.Image:
    if im.mode.startswith("I") or im.mode == "F":
        im = _to_8bit(im)
    elif im.mode in ("P", "PA"):
        # Palette transparency is expanded first (PIL warns when it is dropped by a direct convert).
        has_alpha = im.mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
    if im.mode == mode:
        return im
    try:
        return im.convert(mode)
    except ValueError:  # a conversion PIL has no direct path for (e.g. LAB to L): go through RGB
        return im.convert("RGB").convert(mode)


def load_image(path: str | os.PathLike, in_chans: int = 3, *, dicom: DicomOptions | None = None) -> Image.Image:
    """Open an image as the model will see it.

    The EXIF orientation is applied; an animated GIF/WebP/TIFF gives its first frame. Every mode is converted
    to ``L`` for ``in_chans=1``, ``RGB`` for 3 and ``RGBA`` for 4; other counts get ``RGB`` and
    :class:`ImageFolderDataset` repeats its channels. RGBA to RGB drops the alpha channel (as torchvision's
    and Keras' loaders do), 16-bit images are scaled to 8 bits (divided by 257), float images from [0, 1]
    (or their own range), CMYK and palette images converted by PIL. DICOM files are windowed to 8 bits
    (:func:`sedensenet.data.dicom.read_dicom`, with ``dicom``'s window).

    Raises:
        OSError, ValueError, PIL.Image.DecompressionBombError: the file cannot be decoded (for DICOM,
            :class:`ImageRejected`, a ``ValueError``).
    """
    mode = _target_mode(in_chans)
    with open(path, "rb") as f:  # one open for both checks: this is the training loop's path
        if is_dicom(f) or os.fspath(path).lower().endswith(DICOM_SUFFIXES):
            with _open_dicom(f, DEFAULT_MAX_PIXELS, dicom) as im:
                return _as_model_input(im, mode)
        with Image.open(f, formats=IMAGE_FORMATS) as im:
            im.load()  # the pixels stay in memory after the file is closed
            return _as_model_input(im, mode)


def decode_image(
    data: bytes, in_chans: int = 3, max_pixels: int = DEFAULT_MAX_PIXELS, *, dicom: DicomOptions | None = None
) -> Image.Image:
    """An image held in memory (an upload), checked as :func:`check_image` checks files and converted as
    :func:`load_image` converts them, so both give the model the same pixels.

    Raises:
        ImageRejected: empty, not an image, more than ``max_pixels`` pixels, truncated or corrupt.
    """
    mode = _target_mode(in_chans)
    if not data:
        raise ImageRejected("empty file (0 bytes)", "empty")
    with open_checked(io.BytesIO(data), max_pixels, dicom=dicom) as im:
        try:
            return _as_model_input(im, mode)
        except Exception as exc:  # a conversion PIL cannot make for this mode
            raise ImageRejected(_corrupt(exc), "corrupt") from None


def _as_model_input(im: Image.Image, mode: str) -> Image.Image:
    """A decoded image turned upright (EXIF) and converted to ``mode``: the one path files and uploads share."""
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception as exc:  # malformed EXIF: use the pixels as stored
        logger.debug("ignoring a bad EXIF orientation: %s", exc)
    return _convert(im, mode)


class ImageFolderDataset(Dataset):
    """Samples from :func:`scan_folder` as ``(tensor C x H x W float32, label)`` pairs.

    Without a transform, images become tensors in [0, 1] at their own size. When ``in_chans`` is not 1, 3 or
    4, the RGB channels are repeated in turn (R, G, B, R, ...) to ``in_chans`` after the transform.

    A file that passed the scan but fails to load later (changed or deleted on disk) does not stop an epoch:
    a warning is logged once for it, its index is remembered as bad, and the next good sample is returned in
    its place (so the batch keeps its size; the label is that sample's). With ``DataLoader`` workers each
    worker keeps its own set of bad indices.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        in_chans: int = 3,
        *,
        dicom: DicomOptions | None = None,
    ) -> None:
        """``dicom``: how DICOM files are windowed (``--dicom-window``); default: each file's own window."""
        _target_mode(in_chans)
        self.samples = list(samples)
        self.transform = transform
        self.in_chans = in_chans
        self.dicom = dicom
        self.bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int | tuple[float, ...]]:
        """The label of every sample, in order."""
        return [s.label for s in self.samples]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        for step in range(n):
            i = (index + step) % n
            if i in self.bad:
                continue
            sample = self.samples[i]
            try:
                image = load_image(sample.path, self.in_chans, dicom=self.dicom)
            except Exception as exc:  # any decode failure: the file changed after the scan
                self.bad.add(i)
                logger.warning("cannot load %s (%s); using the next image instead", sample.path, exc)
                continue
            return self._to_tensor(image), target(sample.label)
        raise DataError(f"none of the {n} images could be loaded: were they moved or deleted after the scan?")

    def _to_tensor(self, image: Image.Image) -> torch.Tensor:
        return image_to_tensor(image, self.transform, self.in_chans)


def image_to_tensor(
    image: Image.Image, transform: Callable[[Image.Image], torch.Tensor] | None, in_chans: int
) -> torch.Tensor:
    """An image from :func:`load_image` or :func:`decode_image` as the model's input ``(in_chans, H, W)``.

    Without a transform the pixels are scaled to [0, 1] at their own size; RGB channels are repeated in turn
    (R, G, B, R, ...) for models with other than 1, 3 or 4 input channels.
    """
    if transform is not None:
        x = transform(image)
    else:
        x = torch.from_numpy(np.array(image, dtype=np.float32, copy=True) / 255.0)
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1).contiguous()  # (C, H, W)
    if isinstance(x, torch.Tensor) and x.ndim == 3 and x.shape[0] != in_chans:
        x = x[[c % x.shape[0] for c in range(in_chans)]]  # (in_chans, H, W)
    return x
