"""Exact and near-duplicate images: one fingerprint per decoded file, pairs found in two stages, then clusters.

A :class:`Fingerprint` is computed from the pixels the file check has already decoded (no second decode):

* ``sha256`` of the file's bytes (identical files) and ``pixels``, a digest of the decoded pixels, mode and size
  (the same image saved twice, e.g. with different metadata): both are *exact* duplicates;
* a 32x32 grayscale thumbnail (EXIF orientation applied) and its 64-bit perceptual hash (pHash: the signs of
  the lowest 8x8 DCT coefficients against their median), for *near* duplicates.

Near pairs are found in two stages. The hashes are compared all against all with a vectorised XOR and popcount,
block by block (no Python loop over pairs); a pair within ``max_distance`` differing bits is a candidate. Then the
candidate's thumbnails must agree in their detail: the thumbnail minus its 5x5 local mean, correlated between the
two images, at least ``min_similarity``. The hash alone cannot tell images that share one structure (chest X-rays
of different patients, aligned faces) from copies: on a generated set of 1,000 such look-alikes 1% of all pairs
are within 10 bits, with detail correlations up to 0.983; re-encoding at JPEG quality 60, resizing to 80%
and a contrast change of 10% kept every copy within 2 bits and above 0.999 (``tests/data/test_dedupe.py``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from sedensenet.errors import UserError

logger = logging.getLogger(__name__)

THUMB_SIZE = 32
DEFAULT_NEAR_DISTANCE = 10
"""Differing bits of the 64-bit perceptual hash within which two images are compared closely."""
MAX_NEAR_DISTANCE = 32
"""Half the hash: two unrelated images differ in about 32 bits, so a larger bound would compare everything."""
DEFAULT_MIN_SIMILARITY = 0.995
"""Correlation of the thumbnails' detail that a candidate pair needs to count as a near duplicate."""

_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class DedupeError(UserError, ValueError):
    """A duplicate-search setting that cannot work (a distance out of range, an unknown mode)."""


@dataclass
class Fingerprint:
    """What the duplicate search (and the data report) needs of one decoded file."""

    sha256: str
    """Digest of the file's bytes."""
    pixels: str
    """Digest of the decoded pixels with their mode and size: equal for the same image in two files."""
    phash: int
    """64-bit perceptual hash of the thumbnail."""
    thumb: np.ndarray = field(compare=False)
    """32x32 uint8 grayscale thumbnail, EXIF orientation applied."""
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    exif_rotated: bool = False
    """The file asks (EXIF orientation 2-8) to be turned or flipped before it is shown."""


@dataclass(frozen=True)
class DuplicatePair:
    """Two files (indices into the list that was searched) that are copies of each other."""

    a: int
    b: int
    kind: str
    """``identical file`` (same bytes), ``same pixels`` (same decoded image) or ``near``."""
    distance: int
    """Differing bits of the perceptual hashes (0 for exact duplicates)."""
    similarity: float
    """Correlation of the thumbnails' detail (1.0 for exact duplicates)."""


def _file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _gray(im: Image.Image) -> Image.Image:
    """8-bit grayscale for hashing; 16-bit, 32-bit and float images are scaled from their own range."""
    if im.mode in ("I", "F") or im.mode.startswith("I;"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
        return Image.fromarray(np.rint((arr - lo) * (255.0 / max(hi - lo, 1e-12))).astype(np.uint8))
    return im.convert("L")


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # malformed EXIF: the pixels as stored, as load_image does
        return 1


def fingerprint_image(im: Image.Image, path: str | os.PathLike) -> Fingerprint:
    """The fingerprint of ``im``, an image already decoded from ``path`` (which is read once more for its hash)."""
    gray = _gray(im)
    thumb = gray.resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BILINEAR, reducing_gap=3.0)
    orientation = _orientation(im)
    if orientation in _TRANSPOSE:
        thumb = thumb.transpose(_TRANSPOSE[orientation])  # a square thumbnail: turning commutes with resizing
    pixels = hashlib.blake2b(f"{im.mode} {im.size} {orientation}".encode(), digest_size=20)
    pixels.update(im.tobytes())
    arr = np.asarray(thumb, dtype=np.uint8)
    return Fingerprint(
        sha256=_file_sha256(path),
        pixels=pixels.hexdigest(),
        phash=int(phashes(arr[None])[0]),
        thumb=arr,
        width=im.width,
        height=im.height,
        mode=im.mode,
        format=im.format or "",
        exif_rotated=orientation in _TRANSPOSE,
    )


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix(THUMB_SIZE)


def phashes(thumbs: np.ndarray) -> np.ndarray:
    """64-bit perceptual hashes (uint64) of ``(n, 32, 32)`` thumbnails: lowest 8x8 DCT coefficients > median."""
    coeffs = _DCT @ thumbs.astype(np.float64) @ _DCT.T  # (n, 32, 32)
    low = coeffs[:, :8, :8].reshape(len(thumbs), 64)
    bits = low > np.median(low[:, 1:], axis=1, keepdims=True)  # the DC term would skew the median
    return np.packbits(bits, axis=1).view(">u8")[:, 0].astype(np.uint64)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    return table[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


def _details(thumbs: np.ndarray) -> np.ndarray:
    """Each thumbnail minus its 5x5 local mean, zero-mean and unit-norm: ``(n, 1024)`` float32."""
    t = thumbs.astype(np.float32)
    padded = np.pad(t, ((0, 0), (2, 2), (2, 2)), mode="edge")
    blur = np.zeros_like(t)
    for dy in range(5):
        for dx in range(5):
            blur += padded[:, dy : dy + THUMB_SIZE, dx : dx + THUMB_SIZE]
    detail = (t - blur / 25.0).reshape(len(t), -1)  # (n, 1024)
    detail -= detail.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(detail, axis=1, keepdims=True)
    return np.divide(detail, norm, out=np.zeros_like(detail), where=norm > 1e-3)


def check_near_distance(max_distance: int) -> None:
    """Refuse a hash distance outside ``0..MAX_NEAR_DISTANCE`` with a message that says what is allowed."""
    if isinstance(max_distance, bool) or not isinstance(max_distance, int | np.integer):
        raise DedupeError(f"near distance must be a whole number of bits, got {max_distance!r}")
    if not 0 <= max_distance <= MAX_NEAR_DISTANCE:
        raise DedupeError(
            f"near distance {max_distance} is out of range: allowed 0 to {MAX_NEAR_DISTANCE} differing bits of the "
            f"64-bit perceptual hash (default {DEFAULT_NEAR_DISTANCE}; unrelated images differ in about 32)"
        )


def near_pairs(
    fingerprints: Sequence[Fingerprint | None],
    max_distance: int = DEFAULT_NEAR_DISTANCE,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    max_cells: int = 1 << 24,
) -> list[DuplicatePair]:
    """Pairs ``(i, j)``, ``i < j``, whose hashes differ in at most ``max_distance`` bits and whose detail agrees.

    Exact duplicates (same decoded pixels) are not returned here: :func:`exact_pairs` finds them. Memory stays
    bounded: hashes are compared ``max_cells`` pairs at a time, and candidates verified in chunks.
    """
    check_near_distance(max_distance)
    index = np.array([i for i, f in enumerate(fingerprints) if f is not None], dtype=np.int64)
    if len(index) < 2:
        return []
    fps = [fingerprints[i] for i in index]
    hashes = np.array([f.phash for f in fps], dtype=np.uint64)
    details = _details(np.stack([f.thumb for f in fps]))
    found: list[DuplicatePair] = []
    block = max(1, min(len(hashes), max_cells // len(hashes)))
    for start in range(0, len(hashes), block):
        rows = hashes[start : start + block]
        dist = _popcount(rows[:, None] ^ hashes[None, start:])  # (block, n - start): each pair once
        ii, jj = np.nonzero(dist <= max_distance)
        keep = jj > ii  # the upper triangle: j indexes from `start`, so j > i means a later file
        bits, ii, jj = dist[ii[keep], jj[keep]], ii[keep] + start, jj[keep] + start
        for c in range(0, len(ii), 1 << 14):  # (chunk, 1024) float32 gathers: 64 MiB at most
            i, j = ii[c : c + (1 << 14)], jj[c : c + (1 << 14)]
            sims = np.einsum("ij,ij->i", details[i], details[j])
            for k in np.nonzero(sims >= min_similarity)[0].tolist():
                a, b = int(i[k]), int(j[k])
                if fps[a].pixels != fps[b].pixels:
                    found.append(DuplicatePair(int(index[a]), int(index[b]), "near", int(bits[c + k]), float(sims[k])))
    return found


def exact_pairs(fingerprints: Sequence[Fingerprint | None]) -> list[DuplicatePair]:
    """Pairs of files with the same decoded pixels: each file paired with the first of its kind (a star, not all
    pairs, so a thousand copies of one blank image give 999 pairs, not half a million)."""
    first: dict[str, int] = {}
    found = []
    for i, f in enumerate(fingerprints):
        if f is None:
            continue
        j = first.setdefault(f.pixels, i)
        if j != i:
            kind = "identical file" if fingerprints[j].sha256 == f.sha256 else "same pixels"
            found.append(DuplicatePair(j, i, kind, 0, 1.0))
    return found


def find_pairs(
    fingerprints: Sequence[Fingerprint | None],
    mode: str = "near",
    max_distance: int = DEFAULT_NEAR_DISTANCE,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
) -> list[DuplicatePair]:
    """Exact pairs, plus near pairs when ``mode`` is ``near``."""
    if mode not in ("exact", "near"):
        raise DedupeError(f"duplicate mode must be 'exact' or 'near', got {mode!r}")
    pairs = exact_pairs(fingerprints)
    if mode == "near":
        pairs += near_pairs(fingerprints, max_distance, min_similarity)
    return pairs


def clusters(n: int, links: Iterable[tuple[int, int]]) -> list[int]:
    """Connected components of ``n`` items joined by ``links``: the smallest member's index for every item."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in links:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [root(i) for i in range(n)]


def duplicates_of(
    reference: Sequence[Fingerprint | None],
    candidates: Sequence[Fingerprint | None],
    mode: str,
    max_distance: int = DEFAULT_NEAR_DISTANCE,
) -> list[bool]:
    """For each of ``candidates``: does it duplicate one of ``reference`` (``exact``: same pixels; ``near``)?"""
    pairs = find_pairs(list(reference) + list(candidates), mode, max_distance)
    joined = clusters(len(reference) + len(candidates), [(p.a, p.b) for p in pairs])
    in_reference = {joined[i] for i in range(len(reference))}
    return [joined[len(reference) + k] in in_reference for k in range(len(candidates))]
