"""Duplicate detection: every planted copy found, no false alarm on look-alikes, clusters and groups kept whole."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagegen import contrast, lookalike_image, make_planted_folder  # noqa: E402

from sedensenet.data import DataError, resolve_data, scan_folder  # noqa: E402
from sedensenet.data.check import check_data, drop_duplicates_of_train, exact_leaks  # noqa: E402
from sedensenet.data.dedupe import (  # noqa: E402
    DEFAULT_NEAR_DISTANCE,
    clusters,
    find_pairs,
    fingerprint_image,
    near_pairs,
    phashes,
)
from sedensenet.data.groups import GroupsError  # noqa: E402
from sedensenet.data.images import inspect_image  # noqa: E402


def unordered(pairs: list[dict]) -> set[frozenset[str]]:
    return {frozenset((p["a"], p["b"])) for p in pairs}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, str]]]:
    root = tmp_path_factory.mktemp("planted") / "数据"
    return root, make_planted_folder(root)


def test_every_planted_pair_is_found_and_nothing_else(planted: tuple) -> None:
    root, pairs = planted
    check = check_data(root)
    assert unordered(check.pairs) == {frozenset(p) for p in pairs}  # the 74 look-alikes raise no false alarm
    kinds = {frozenset((p["a"], p["b"])): p["kind"] for p in check.pairs}
    assert kinds[frozenset(pairs[0])] == "identical file"
    assert [kinds[frozenset(p)] for p in pairs[1:5]] == ["near"] * 4  # q60, 80%, contrast +10%, -10%


def test_planted_pairs_are_sorted_into_their_problems(planted: tuple) -> None:
    root, _ = planted
    check = check_data(root)
    named = {k: sorted(check.files[i].path for i in v) for k, v in check.problems.items()}
    assert named == {
        "test duplicates train": ["test/normal/copy_80pct.png", "test/normal/copy_exact.png"],
        "val duplicates train": ["val/normal/copy_contrast_up.png", "val/normal/copy_q60.jpg"],
        "test duplicates val": ["test/肺炎/copy_q60.jpg"],
        "conflicting labels": ["train/normal/006.png", "train/肺炎/copy_other_class.png"],
        "copies within a class": [
            "train/normal/004.png", "train/normal/005.png", "train/normal/copy_contrast_down.png",
            "train/normal/copy_same.png",
        ],
    }  # fmt: skip
    lines = [v.message for v in check.verdicts]
    assert lines[0].startswith("2 val images duplicate train images: validation scores")
    assert lines[1] == (
        "2 test images duplicate train images: scores on test will be optimistic; `--dedupe near` drops them "
        "from val/test"
    )


def test_cheap_train_check_sees_exact_copies_only(planted: tuple) -> None:
    root, _ = planted
    rows = exact_leaks(scan_folder(root))
    found = {(Path(r["file"]).relative_to(root).as_posix(), Path(r["copy"]).relative_to(root).as_posix()) for r in rows}
    assert found == {
        ("train/normal/000.png", "test/normal/copy_exact.png"),
        ("train/normal/006.png", "train/肺炎/copy_other_class.png"),
    }


def test_dedupe_drops_val_and_test_copies_of_training_images(planted: tuple) -> None:
    root, _ = planted
    splits = scan_folder(root)
    exact, dropped_exact = drop_duplicates_of_train(splits, "exact")
    near, dropped_near = drop_duplicates_of_train(splits, "near")
    assert dropped_exact == {"val": 0, "test": 1}
    assert dropped_near == {"val": 2, "test": 2}  # the val -> test copy stays: it duplicates no training image
    kept = {s.path.relative_to(root).as_posix() for s in near.val + near.test}
    assert "test/肺炎/copy_q60.jpg" in kept
    assert not kept & {"test/normal/copy_exact.png", "test/normal/copy_80pct.png", "val/normal/copy_q60.jpg",
                       "val/normal/copy_contrast_up.png"}  # fmt: skip
    assert len(exact.test) == len(splits.test) - 1


def test_same_pixels_in_another_container_is_an_exact_duplicate(tmp_path: Path) -> None:
    im = lookalike_image(np.random.default_rng(3), 48)
    im.save(tmp_path / "a.png")
    im.save(tmp_path / "b.png", pnginfo=_text_chunk("made by a scanner"))
    im.save(tmp_path / "c.tif")
    fps = [inspect_image(tmp_path / n)[1] for n in ("a.png", "b.png", "c.tif")]
    assert len({f.sha256 for f in fps}) == 3 and len({f.pixels for f in fps}) == 1
    assert [(p.a, p.b, p.kind) for p in find_pairs(fps)] == [(0, 1, "same pixels"), (0, 2, "same pixels")]


def _text_chunk(text: str):  # noqa: ANN202
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", text)
    return info


def _fingerprint(im: Image.Image, tmp_path: Path, name: str):  # noqa: ANN202
    path = tmp_path / name
    im.save(path)
    return fingerprint_image(Image.open(path), path)


def _edits(im: Image.Image) -> dict[str, Image.Image]:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=60)
    return {
        "jpeg_q60": Image.open(io.BytesIO(buf.getvalue())),
        "resize_80": im.resize((im.width * 4 // 5, im.height * 4 // 5), Image.Resampling.LANCZOS),
        "contrast_up": contrast(im, 1.1),
        "contrast_down": contrast(im, 0.9),
    }


@pytest.mark.slow
def test_no_false_alarm_on_1000_lookalikes_and_every_edit_found(tmp_path: Path) -> None:
    rng = np.random.default_rng(2024)
    images = [lookalike_image(rng) for _ in range(1000)]
    fps = [_fingerprint(im, tmp_path, f"{i}.png") for i, im in enumerate(images)]
    hashes = np.array([f.phash for f in fps], dtype=np.uint64)
    close = sum(int(np.bitwise_count(hashes[i] ^ hashes[i + 1 :]).__le__(DEFAULT_NEAR_DISTANCE).sum())
                for i in range(len(hashes)))  # fmt: skip
    assert close > 4000  # 4,949 pairs within 10 bits: the hash alone would raise thousands of false alarms
    assert near_pairs(fps) == []
    assert find_pairs(fps) == []
    for i in range(0, 1000, 50):  # every edit of 20 of them is found, and only next to its original
        edits = [_fingerprint(e.convert("L"), tmp_path, f"e{i}_{k}.png") for k, e in _edits(images[i]).items()]
        found = near_pairs(fps + edits)
        assert sorted((p.a, p.b) for p in found if p.b >= 1000 and p.a < 1000) == [(i, 1000 + k) for k in range(4)]


def test_no_false_alarm_on_builtin_faces() -> None:
    check = check_data(resolve_data("builtin:faces"))
    assert len(check.files) == 200
    assert check.pairs == []
    assert [v.problem for v in check.verdicts] == ["none"]


def test_hash_is_64_bits_and_stable_under_brightness() -> None:
    thumb = np.asarray(lookalike_image(np.random.default_rng(0), 32), dtype=np.uint8)
    a, b = phashes(np.stack([thumb, np.clip(thumb.astype(int) + 20, 0, 255).astype(np.uint8)]))
    assert a.dtype == np.uint64 and int(a) > 2**32
    assert int(np.bitwise_count(a ^ b)) <= 2


def test_clusters_join_transitively() -> None:
    assert clusters(6, [(0, 3), (3, 5), (1, 2)]) == [0, 1, 1, 0, 4, 0]


@pytest.mark.parametrize("distance", [-1, 33, 2.5, "8"])
def test_near_distance_out_of_range_names_the_range(tmp_path: Path, distance: object) -> None:
    with pytest.raises(ValueError, match=r"near distance|whole number of bits") as info:
        check_data(tmp_path, near_distance=distance)  # type: ignore[arg-type]
    assert "0 to 32" in str(info.value) or "whole number" in str(info.value)


# ----------------------------------------------------------------------------------- splits keep clusters whole


def _flat_with_clusters(root: Path, seed: int = 0) -> dict[str, list[str]]:
    """root/<a|b>/ with 20 distinct look-alikes each, and three clusters of copies (one across classes)."""
    rng = np.random.default_rng(seed)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(20):
            lookalike_image(rng, 64).save(root / name / f"{i:02d}.png")
    base = Image.open(root / "a" / "00.png")
    contrast(base, 1.1).save(root / "a" / "00_contrast.png")
    base.save(root / "a" / "00_q60.jpg", quality=60)
    (root / "a" / "05_copy.png").write_bytes((root / "a" / "05.png").read_bytes())
    (root / "b" / "07_from_a.png").write_bytes((root / "a" / "07.png").read_bytes())
    return {
        "c0": ["a/00.png", "a/00_contrast.png", "a/00_q60.jpg"],
        "c1": ["a/05.png", "a/05_copy.png"],
        "c2": ["a/07.png", "b/07_from_a.png"],
    }


def _side(splits, root: Path) -> dict[str, str]:  # noqa: ANN001
    out = {s.path.relative_to(root).as_posix(): "train" for s in splits.train}
    out.update({s.path.relative_to(root).as_posix(): "val" for s in splits.val})
    return out


def test_val_split_keeps_every_duplicate_cluster_on_one_side(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    groups = _flat_with_clusters(root)
    sides_seen = set()
    for seed in range(12):
        splits = scan_folder(root, val_split=0.3, seed=seed)
        side = _side(splits, root)
        for members in groups.values():
            assert len({side[m] for m in members}) == 1, (seed, members)
        sides_seen.add(side["a/00.png"])
        assert 11 <= len(splits.val) <= 14  # 8 of a (25 files) and 6 of b (21), less what a cluster cannot fit
    assert sides_seen == {"train", "val"}  # the cluster is placed, not pinned to train


def test_groups_csv_keeps_each_group_on_one_side(tmp_path: Path, make_tree) -> None:
    root = make_tree(tmp_path / "d", {"cats": 12, "dogs": 12})
    rows = ["file,group"] + [f"{c}/img_{i}.png,patient{i % 4}" for c in ("cats", "dogs") for i in range(12)]
    (tmp_path / "groups.csv").write_text("\n".join(rows), encoding="utf-8")
    for seed in range(5):
        side = _side(scan_folder(root, val_split=0.25, seed=seed, groups=tmp_path / "groups.csv"), root)
        for patient in range(4):
            members = [f"{c}/img_{i}.png" for c in ("cats", "dogs") for i in range(12) if i % 4 == patient]
            assert len({side[m] for m in members}) == 1


def test_groups_csv_missing_and_unknown_files_are_named_before_any_decoding(tmp_path: Path, make_tree) -> None:
    root = make_tree(tmp_path / "d", {"cats": 3, "dogs": 3})
    bad = tmp_path / "groups.csv"
    bad.write_text("file,group\ncats/img_0.png,p1\ncats/nope.png,p2\n", encoding="utf-8")
    with pytest.raises(GroupsError, match=r"names 1 file\(s\) that are not images .*cats/nope.png"):
        scan_folder(root, groups=bad)
    bad.write_text("file,group\ncats/img_0.png,p1\n", encoding="utf-8")
    with pytest.raises(GroupsError, match=r"misses 5 of the 6 images .*cats/img_1.png"):
        scan_folder(root, groups=bad)
    bad.write_text("name;patient\n", encoding="utf-8")
    with pytest.raises(GroupsError, match="must name a file column"):
        scan_folder(root, groups=bad)


def test_empty_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=str(tmp_path)):
        check_data(tmp_path)


def test_groups_and_copies_join_into_one_unit(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    clusters_ = _flat_with_clusters(root)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*"))
    group = {f: f for f in files}
    group["a/00.png"] = group["b/03.png"] = group["a/11.png"] = "patient7"  # a/00's copies now tie in b/03, a/11
    (tmp_path / "g.csv").write_text("file,group\n" + "".join(f"{f},{g}\n" for f, g in group.items()), encoding="utf-8")
    for seed in range(8):
        side = _side(scan_folder(root, val_split=0.3, seed=seed, groups=tmp_path / "g.csv"), root)
        assert len({side[m] for m in [*clusters_["c0"], "b/03.png", "a/11.png"]}) == 1


def test_check_data_reports_groups_found_in_two_splits(planted: tuple, tmp_path: Path) -> None:
    root, _ = planted
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*"))
    rows = [f"{f},{'p1' if f.endswith('/001.png') else f}" for f in files]  # 001.png of every split and class: p1
    (tmp_path / "g.csv").write_text("file,group\n" + "\n".join(rows), encoding="utf-8")
    check = check_data(root, groups=tmp_path / "g.csv")
    assert check.groups_across_splits == {"p1": ["train", "val", "test"]}
    verdict = next(v for v in check.verdicts if v.problem == "groups across splits")
    assert verdict.count == 1 and verdict.message.startswith("1 group (e.g. p1) has images in more than one split")


def test_pair_search_in_small_blocks_finds_the_same_pairs(planted: tuple) -> None:
    root, _ = planted
    splits = scan_folder(root)
    fps = list(splits.fingerprints.values())
    whole = near_pairs(fps)
    assert len(whole) == 5  # q60 twice, 80%, contrast up and down
    assert near_pairs(fps, max_cells=40) == whole  # one row of 52 hashes per block, and ragged blocks
    assert near_pairs(fps, max_cells=170) == whole


def test_an_image_the_hash_cannot_read_is_still_used(tmp_path: Path, make_tree, monkeypatch) -> None:  # noqa: ANN001
    import sedensenet.data.images as images

    def refuse(im: Image.Image, path: Path) -> None:
        raise ValueError(f"conversion from {im.mode} to L not supported")

    monkeypatch.setattr(images, "fingerprint_image", refuse)
    splits = scan_folder(make_tree(tmp_path / "d", {"a": 3, "b": 3}), val_split=0.34)
    assert len(splits.train) + len(splits.val) == 6 and splits.skipped == [] and splits.fingerprints == {}
