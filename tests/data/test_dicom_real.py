"""Every DICOM file that pydicom's wheel and the ``pydicom-data`` package ship is read into a sane image or skipped
with its one-line reason, as the expected-skips list below says.

The files are read from the installed packages (never downloaded: ``pydicom.data.get_testdata_files`` would
download missing ones, so it is not used). The list assumes the ``dicom`` extra's decoders; JPEG Extended 12-bit
needs pylibjpeg-libjpeg (GPL-3, the ``dicom-gpl`` extra), and when that is installed those files must decode.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from sedensenet.data.dicom import DicomRejected, is_dicom, read_dicom


def _require(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{package} is not installed: CI installs the dicom extra (pip install -e '.[dev,dicom]')")
        pytest.skip(f"{package} is not installed (pip install 'sedensenet[dicom]')")


for _module, _package in [("pydicom", "pydicom"), ("pylibjpeg", "pylibjpeg"), ("openjpeg", "pylibjpeg-openjpeg"),
                          ("rle", "pylibjpeg-rle"), ("jpeg_ls", "pyjpegls"), ("gdcm", "python-gdcm")]:  # fmt: skip
    _require(_module, _package)

import pydicom  # noqa: E402

GPL_JPEG = importlib.util.find_spec("libjpeg") is not None  # pylibjpeg-libjpeg
NO_PIXELS = "no pixel data: a DICOM file that is not an image"
MALFORMED = "malformed DICOM header"
CANNOT_DECODE = "cannot decode the pixel data"
JPEG_EXTENDED = "JPEG Extended' for ...); not installed: pylibjpeg-libjpeg (GPL-3: the dicom-gpl extra)"

EXPECTED_SKIPS = {
    # files with no pixel data: structured reports, RT plans and structures, waveforms, DICOMDIRs, stubs
    "ExplVR_BigEndNoMeta.dcm": NO_PIXELS,
    "ExplVR_LitEndNoMeta.dcm": NO_PIXELS,
    "UN_sequence.dcm": NO_PIXELS,
    "dicomdirtests/DICOMDIR": NO_PIXELS + " (DICOMDIR)",
    "dicomdirtests/DICOMDIR-*": NO_PIXELS + " (DICOMDIR)",
    "dicomdirtests/TINY_ALPHA/DICOMDIR": NO_PIXELS + " (DICOMDIR)",
    "dicomdirtests/TINY_ALPHA/PT000000/ST000000/SE000000/IM0000??": NO_PIXELS,
    "no_meta_group_length.dcm": NO_PIXELS,
    "priv_SQ.dcm": NO_PIXELS,
    "reportsi.dcm": NO_PIXELS + " (Basic Text SR Storage)",
    "reportsi_with_empty_number_tags.dcm": NO_PIXELS + " (Basic Text SR Storage)",
    "rtplan.dcm": NO_PIXELS + " (RT Plan Storage)",
    "rtplan_truncated.dcm": NO_PIXELS + " (RT Plan Storage)",
    "rtstruct.dcm": NO_PIXELS + " (RT Structure Set Storage)",
    "test-SR.dcm": NO_PIXELS + " (Comprehensive SR Storage)",
    "waveform_ecg.dcm": NO_PIXELS + " (12-lead ECG Waveform Storage)",
    "emri_small_jpeg_2k_lossless_too_short.dcm": NO_PIXELS,  # pydicom drops the cut-off pixel data element
    # malformed headers
    "badVR.dcm": MALFORMED + " (NumberOfFrames missing or not a number)",
    "meta_missing_tsyntax.dcm": MALFORMED + " (Rows missing or not a number)",
    "nested_priv_SQ.dcm": MALFORMED + " (Rows missing or not a number)",
    "empty_charset_LEI.dcm": MALFORMED + " (no SOP class and no pixel data)",
    "no_meta.dcm": MALFORMED + " (no SOP class and no pixel data)",
    # pixel data that no installed decoder reads
    "MR_truncated.dcm": CANNOT_DECODE + " (ValueError: The number of bytes of pixel data is less than expected",
    "JPEG2000-embedded-sequence-delimiter.dcm": CANNOT_DECODE + " (RuntimeError",
}
if not GPL_JPEG:  # 12-bit JPEG: only libjpeg decodes it, and it is GPL-3, outside the default extra
    EXPECTED_SKIPS["JPEG-lossy.dcm"] = EXPECTED_SKIPS["JPGExtended.dcm"] = JPEG_EXTENDED

NARROW_BY_THEIR_OWN_WINDOW = "dicomdirtests/[0-9]*"
"""16x16 thumbnails referenced by pydicom's DICOMDIR tests, whose own window clips them to a narrow (even flat)
range; every other grayscale file must use most of 0..255."""


def corpus() -> dict[str, Path]:
    """Name (relative to pydicom's test folder, or the pydicom-data file name) -> path, for every file that
    :func:`is_dicom` takes for DICOM."""
    root = Path(pydicom.__file__).parent / "data" / "test_files"
    files = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
    try:
        store = Path(str(importlib.metadata.distribution("pydicom-data").locate_file("data_store"))) / "data"
    except importlib.metadata.PackageNotFoundError:
        if os.environ.get("CI"):
            pytest.fail("pydicom-data is not installed: CI installs it (it is in the dev extra)")
        store = None
    if store is not None:
        files.update({p.name: p for p in store.iterdir() if p.is_file()})
    return {name: path for name, path in sorted(files.items()) if is_dicom(path)}


def expected_skip(name: str) -> str | None:
    """The text the skip reason of ``name`` must contain, or ``None`` when the file must be read."""
    return next((reason for pattern, reason in EXPECTED_SKIPS.items() if fnmatch.fnmatchcase(name, pattern)), None)


def test_every_real_dicom_file_is_read_or_skipped_as_listed() -> None:
    files = corpus()
    assert len(files) >= 150  # pydicom's wheel alone ships over 150 DICOM files
    read: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the odd files it is made to test
        for name, path in files.items():
            try:
                decoded = read_dicom(path, max_pixels=89_478_485)
            except DicomRejected as exc:
                skipped[name] = exc.reason
                continue
            image = decoded.image
            assert image.mode in ("L", "RGB") and image.size == (decoded.info.columns, decoded.info.rows), name
            read[name] = np.asarray(image)
    unexpected = {n: r for n, r in skipped.items() if expected_skip(n) is None or expected_skip(n) not in r}
    wrongly_read = sorted(n for n in read if expected_skip(n) is not None)
    assert unexpected == {} and wrongly_read == []
    assert len(read) >= 80 and len(skipped) >= 60  # pydicom 3.0.2 + pydicom-data 1.0.0: 155 read, 80 skipped
    narrow = sorted(
        n for n, a in read.items() if a.ndim == 2 and int(a.max()) - int(a.min()) < 128
        and not fnmatch.fnmatchcase(n, NARROW_BY_THEIR_OWN_WINDOW)
    )  # fmt: skip
    assert narrow == []


def test_a_real_monochrome1_chest_film_shows_bone_white() -> None:
    """pydicom-data's RG1 chest film is MONOCHROME1 (15-bit): once inverted, the spine between the lungs is
    brighter than the lung fields beside it."""
    name = "RG1_UNCI.dcm"
    files = corpus()
    if name not in files:
        pytest.skip("pydicom-data is not installed (pip install pydicom-data)")
    decoded = read_dicom(files[name], max_pixels=89_478_485)
    assert (decoded.info.photometric, decoded.info.bits_stored) == ("MONOCHROME1", 15)
    a = np.asarray(decoded.image).astype(float)
    h, w = a.shape
    rows = slice(int(h * 0.3), int(h * 0.6))
    spine = a[rows, int(w * 0.46) : int(w * 0.54)].mean()
    lungs = np.concatenate(
        [a[rows, int(w * 0.2) : int(w * 0.35)].ravel(), a[rows, int(w * 0.65) : int(w * 0.8)].ravel()]
    )
    assert spine > lungs.mean() + 40
    assert a.min() < 40 and a.max() > 215  # uses most of 0..255
