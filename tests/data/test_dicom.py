"""DICOM decoding on generated files: windowing, MONOCHROME1, frames, limits, rejections, and no patient data out."""

from __future__ import annotations

import io
import logging
import os
import stat
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom", reason="DICOM support is the `dicom` extra: pip install 'sedensenet[dicom]'")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagegen import PLANTED_PHI, make_dicom_folder, write_dicom  # noqa: E402

from sedensenet.data.dicom import (  # noqa: E402
    DicomOptions,
    DicomRejected,
    has_marker,
    is_dicom,
    local_salt,
    patient_group,
    patient_groups,
    read_dicom,
)
from sedensenet.data.images import ImageRejected, check_image, decode_image, load_image, open_checked  # noqa: E402

LIMIT = 89_478_485
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def ramp(bits: int, shape: tuple[int, int] = (16, 16)) -> np.ndarray:
    """Every value from 0 to 2**bits - 1 once in order (and the rest of the image at 0)."""
    n = shape[0] * shape[1]
    values = np.linspace(0, 2**bits - 1, n).round().astype(np.uint16)
    return values.reshape(shape)


def pixels(path: Path | bytes, **options) -> np.ndarray:
    return np.asarray(read_dicom(path, max_pixels=LIMIT, options=DicomOptions(**options)).image)


# ---------------------------------------------------------------------------------------------------------------
# Recognising DICOM
# ---------------------------------------------------------------------------------------------------------------


def test_dicom_is_recognised_by_marker_or_name_never_by_a_png(tmp_path: Path) -> None:
    dcm = write_dicom(tmp_path / "film", ramp(12), bits_stored=12)
    png = tmp_path / "photo.png"
    Image.new("L", (4, 4)).save(png)
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(b"no preamble")
    assert is_dicom(dcm) and has_marker(dcm) and is_dicom(dcm.read_bytes())
    assert is_dicom(io.BytesIO(dcm.read_bytes()))
    assert is_dicom(bare) and not has_marker(bare)  # named .dcm: read as a bare data set
    assert not is_dicom(png) and not is_dicom(png.read_bytes()) and not is_dicom(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------------------------
# Pixels: modality LUT, VOI, MONOCHROME1
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [12, 16])
def test_without_a_window_the_full_range_after_the_modality_lut_is_used_in_float(tmp_path: Path, bits: int) -> None:
    stored = ramp(bits)
    got = pixels(write_dicom(tmp_path / "a.dcm", stored, bits_stored=bits, rescale=(2.0, -1024.0)))
    expected = np.rint(stored.astype(np.float64) / (2**bits - 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(got, expected)  # not stored >> (bits - 8): no 8-bit truncation first
    assert got.min() == 0 and got.max() == 255


def test_the_files_first_window_is_applied_to_rescaled_values(tmp_path: Path) -> None:
    stored = np.array([[0, 1000, 1500, 2000, 2500, 3000, 4095]], dtype=np.uint16)
    path = write_dicom(tmp_path / "w.dcm", stored, bits_stored=12, rescale=(1.0, -1000.0), window=(500.0, 1001.0))
    got = pixels(path)
    hu = stored.astype(np.float64) - 1000.0  # -1000 0 500 1000 1500 2000 3095
    expected = np.rint(np.clip((hu - 499.5) / 1000 + 0.5, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(got, expected)
    assert got.tolist() == [[0, 0, 128, 255, 255, 255, 255]]
    info = read_dicom(path, max_pixels=LIMIT).info
    assert info.window == "file window 500/1001" and (info.rows, info.columns, info.bits_stored) == (1, 7, 12)


def test_an_explicit_window_overrides_the_files(tmp_path: Path) -> None:
    stored = np.array([[0, 1000, 1500, 2000, 4095]], dtype=np.uint16)
    path = write_dicom(tmp_path / "w.dcm", stored, bits_stored=12, window=(3000.0, 10.0))
    assert pixels(path, window=(1500, 1001)).tolist() == [[0, 0, 128, 255, 255]]
    with pytest.raises(ValueError, match="width >= 1"):
        DicomOptions(window=(40, 0))


@pytest.mark.parametrize("bits", [12, 16])
@pytest.mark.parametrize("window", [None, (1200.0, 1800.0)])
def test_monochrome1_decodes_to_the_inverted_monochrome2_image(tmp_path: Path, bits: int, window) -> None:
    high = 2**bits if window is None else 2400  # a window covers part of the range: keep values around it
    stored = np.random.default_rng(bits).integers(0, high, size=(20, 20)).astype(np.uint16)
    mono2 = pixels(write_dicom(tmp_path / "m2.dcm", stored, bits_stored=bits, window=window))
    mono1 = pixels(write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1", bits_stored=bits, window=window))
    np.testing.assert_array_equal(mono1, 255 - mono2)
    assert len(np.unique(mono2)) > 50  # not a flat image


def test_generated_monochrome1_and_monochrome2_sets_show_the_same_films(tmp_path: Path) -> None:
    rows1 = make_dicom_folder(tmp_path / "m1", per_class=3, bits=16, photometric="MONOCHROME1")
    rows2 = make_dicom_folder(tmp_path / "m2", per_class=3, bits=16, photometric="MONOCHROME2")
    assert [r[0] for r in rows1] == [r[0] for r in rows2] == [
        "狗/000.dcm", "狗/001.dcm", "狗/002", "猫/000.dcm", "猫/001.dcm", "猫/002"]  # fmt: skip
    for rel, _, _ in rows1:
        a, b = load_image(tmp_path / "m1" / rel, 1), load_image(tmp_path / "m2" / rel, 1)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # stored inverted, shown the same
    top, bottom = np.asarray(load_image(tmp_path / "m1" / rows1[0][0], 1)).reshape(2, -1).mean(axis=1)
    assert top > bottom + 60  # class 0 is bright at the top after the inversion


def test_real_monochrome1_file_is_inverted(tmp_path: Path) -> None:
    """pydicom's CR film 6154 is MONOCHROME1: the same data relabelled MONOCHROME2 must decode to 255 - it."""
    src = TEST_FILES / "dicomdirtests" / "77654033" / "CR1" / "6154"
    ds = pydicom.dcmread(src)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    ds.PhotometricInterpretation = "MONOCHROME2"
    relabelled = tmp_path / "6154_mono2.dcm"
    ds.save_as(relabelled)
    np.testing.assert_array_equal(pixels(src), 255 - pixels(relabelled))


# ---------------------------------------------------------------------------------------------------------------
# Frames, limits and rejections
# ---------------------------------------------------------------------------------------------------------------


def test_multi_frame_gives_the_first_frame_or_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    frames = np.stack([ramp(12), np.full((16, 16), 4095, np.uint16) - ramp(12), np.zeros((16, 16), np.uint16)])
    path = write_dicom(tmp_path / "cine.dcm", frames, bits_stored=12)
    with caplog.at_level(logging.INFO, logger="sedensenet.data.dicom"):
        first = read_dicom(path, max_pixels=LIMIT)
    np.testing.assert_array_equal(np.asarray(first.image), pixels(write_dicom(tmp_path / "one.dcm", ramp(12))))
    assert first.info.frames == 3 and "multi-frame DICOM (3 frames): using the first frame" in caplog.text
    with pytest.raises(DicomRejected, match=r"multi-frame DICOM \(3 frames\)") as exc:
        read_dicom(path, max_pixels=LIMIT, options=DicomOptions(multiframe="refuse"))
    assert exc.value.kind == "unsupported"


def test_the_declared_size_is_refused_before_any_pixel_is_decoded(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "big.dcm", ramp(12), bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 30000, 30000, 2  # the pixel data is far too short for this
    ds.save_as(path)
    with pytest.raises(ImageRejected, match=r"too large: 1800000000 pixels \(30000x30000x2\) > limit 89478485"):
        open_checked(path)
    assert check_image(tmp_path / "big.dcm", max_pixels=10**10).startswith("cannot decode the pixel data")


def test_files_without_pixels_are_rejected_with_a_reason() -> None:
    sr = TEST_FILES / "test-SR.dcm"
    assert check_image(sr) == "no pixel data: a DICOM file that is not an image (Comprehensive SR Storage)"
    assert check_image(TEST_FILES / "dicomdirtests" / "DICOMDIR") == (
        "no pixel data: a DICOM file that is not an image (DICOMDIR)"
    )
    with pytest.raises(ImageRejected) as exc:
        decode_image(sr.read_bytes())
    assert exc.value.kind == "not_image"


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns while it tries to make sense of the garbage
def test_a_malformed_header_is_rejected_never_raised_by_check(tmp_path: Path) -> None:
    garbage = tmp_path / "scan"
    garbage.write_bytes(write_dicom(tmp_path / "whole.dcm", ramp(12), bits_stored=12).read_bytes()[:150])  # cut off
    assert check_image(garbage) == "malformed DICOM header (no SOP class and no pixel data)"
    text = tmp_path / "notes.dcm"
    text.write_bytes(b"not DICOM at all, only named so " * 4)
    assert check_image(text) == "malformed DICOM header (no SOP class and no pixel data)"
    no_rows = write_dicom(tmp_path / "norows.dcm", ramp(12), bits_stored=12)
    ds = pydicom.dcmread(no_rows)
    del ds.Rows
    ds.save_as(no_rows)
    assert check_image(no_rows) == "malformed DICOM header (Rows missing or not a number)"
    with pytest.raises(ImageRejected, match="malformed DICOM header"):
        load_image(garbage)


def test_a_transfer_syntax_without_its_decoder_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydicom.pixels.decoders.base import Decoder

    j2k = TEST_FILES / "MR_small_jp2klossless.dcm"
    assert check_image(j2k) is None
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: not self.is_encapsulated))
    assert check_image(j2k) == (
        "JPEG 2000 Image Compression (Lossless Only) needs a decoder that is not installed: "
        "pip install 'sedensenet[dicom]' (pylibjpeg with pylibjpeg-openjpeg)"
    )
    with pytest.raises(ImageRejected) as exc:
        open_checked(j2k)
    assert exc.value.kind == "unsupported"


def test_a_syntax_no_decoder_exists_for_is_rejected(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "video.dcm", ramp(8), bits_stored=8, syntax="1.2.840.10008.1.2.4.100")
    assert check_image(path) == "no decoder exists for MPEG2 Main Profile / Main Level"


# ---------------------------------------------------------------------------------------------------------------
# The seam in data/images.py
# ---------------------------------------------------------------------------------------------------------------


def test_images_functions_read_dicom_by_content(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "no_extension", ramp(16), bits_stored=16)
    expected = pixels(path)
    assert check_image(path) is None
    rgb = load_image(path, 3)
    assert rgb.mode == "RGB" and rgb.size == (16, 16)
    np.testing.assert_array_equal(np.asarray(rgb)[..., 1], expected)
    gray = decode_image(path.read_bytes(), 1)
    assert gray.mode == "L"
    np.testing.assert_array_equal(np.asarray(gray), expected)
    windowed = load_image(path, 1, dicom=DicomOptions(window=(1, 1)))  # a threshold at 0.5
    assert np.asarray(windowed)[0, :2].tolist() == [0, 255]


# ---------------------------------------------------------------------------------------------------------------
# Patient data
# ---------------------------------------------------------------------------------------------------------------


def test_no_patient_tag_leaves_the_decoder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_dicom(tmp_path / "a.dcm", np.stack([ramp(12)] * 2), bits_stored=12)
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        decoded = read_dicom(path, max_pixels=LIMIT)
        check_image(path)
        group = patient_group(path, salt=b"k" * 32)
    seen = repr(decoded) + repr(decoded.info.__dict__) + caplog.text + str(group) + str([str(w) for w in warned])
    assert "multi-frame DICOM (2 frames)" in caplog.text  # the log was captured: what is absent is truly absent
    for value in (*PLANTED_PHI.values(), "Zhang", "7734", "1961"):
        assert value not in seen


def test_patient_group_is_a_keyed_hash_of_the_patient_id(tmp_path: Path) -> None:
    a = write_dicom(tmp_path / "a.dcm", ramp(8), bits_stored=8, patient={"PatientID": "P1"})
    b = write_dicom(tmp_path / "b.dcm", ramp(8), bits_stored=8, patient={"PatientID": "P1"})
    c = write_dicom(tmp_path / "c.dcm", ramp(8), bits_stored=8, patient={"PatientID": "P2"})
    none = write_dicom(tmp_path / "d.dcm", ramp(8), bits_stored=8, patient={})
    key = b"k" * 32
    ga, gb, gc = (patient_group(p, salt=key) for p in (a, b, c))
    assert ga == gb != gc and ga.startswith("patient-") and len(ga) == len("patient-") + 16
    assert patient_group(a, salt=b"other key") != ga
    assert patient_group(none, salt=key) is None
    with pytest.raises(ValueError, match="salt"):
        patient_group(a, salt=b"")


def test_local_salt_is_made_once_and_kept_private(tmp_path: Path) -> None:
    first = local_salt(tmp_path / "home")
    assert len(first) == 32 and local_salt(tmp_path / "home") == first
    assert stat.S_IMODE(os.stat(tmp_path / "home" / "dicom-salt").st_mode) == 0o600
    assert local_salt(tmp_path / "other") != first


def test_a_dicom_folders_patients_become_groups(tmp_path: Path) -> None:
    rows = make_dicom_folder(tmp_path, per_class=4, bits=12)
    (tmp_path / "notes.txt").write_text("not DICOM")
    groups = patient_groups([tmp_path / r[0] for r in rows] + [tmp_path / "notes.txt"], salt=b"k" * 32)
    assert len(groups) == 8 and len(set(groups.values())) == 4  # two films per patient
    by_patient = {pid: {groups[tmp_path / rel] for rel, _, p in rows if p == pid} for _, _, pid in rows}
    assert all(len(g) == 1 for g in by_patient.values())


def test_without_pydicom_a_dicom_file_is_skipped_naming_the_extra(tmp_path: Path, monkeypatch) -> None:
    path = write_dicom(tmp_path / "film", ramp(12), bits_stored=12)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if it were not installed: importing it fails
    assert check_image(path) == "DICOM support is not installed: pip install 'sedensenet[dicom]'"
    with pytest.raises(ImageRejected) as exc:
        decode_image(path.read_bytes())
    assert exc.value.kind == "unsupported"
