"""Writing the run folder: real write failures mid-run (a file-size limit makes the OS refuse the write), a crash
between two files of one epoch, a disk found full before the first epoch, run names that never collide, and the
permissions of what is written."""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys
from pathlib import Path

import pytest
from relkit import FAST, check_run_folder, cli_args, make_folder, same_weights

import sedensenet
from sedensenet import checkpoint as ckpt
from sedensenet.cli import main
from sedensenet.engine import trainer
from sedensenet.engine.faults import RunWriteError
from sedensenet.fileio import atomic_write_text, remove_stale_temporaries
from sedensenet.reports import run as run_module
from sedensenet.reports.run import RunDirError

SETTINGS = dict(FAST, epochs=4, drop_rate=0.1, scheduler="cosine")
WRITE_ORDER = ("weights/last.safetensors", "history.csv", "curves.png", "state/last.pt")  # best.safetensors: maybe


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("writes")
    data = make_folder(root / "data", per_class=10)
    result = sedensenet.train(data=str(data), project=str(root / "runs"), name="reference", **SETTINGS)
    return data, result.run_dir


def snapshot(run: Path) -> dict[str, bytes]:
    return {f: (run / f).read_bytes() for f in ("weights/last.safetensors", "weights/best.safetensors",
                                                "state/last.pt", "history.csv")}  # fmt: skip


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
@pytest.mark.parametrize("target", ["weights/last.safetensors", "curves.png", "state/last.pt"])
def test_a_real_write_failure_mid_run_keeps_the_last_complete_epoch(
    reference: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    """After epoch 2 the process may write no file larger than ``target`` was: the OS refuses the write (EFBIG)
    inside safetensors, matplotlib or torch.save. Nothing of epoch 2 may be lost, and the run resumes exactly."""
    import resource

    data, ref = reference
    real_end = trainer.end_epoch
    saved: dict[str, bytes] = {}
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so the write fails instead of killing us
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def limit_after_two(ctx, epoch, row, train):  # noqa: ANN001, ANN202
        stop = real_end(ctx, epoch, row, train)
        if epoch == 2:
            run = ctx.run_dir
            saved.update(snapshot(run))
            sizes = {f: (run / f).stat().st_size for f in WRITE_ORDER}
            earlier = max([sizes[f] for f in WRITE_ORDER[: WRITE_ORDER.index(target)]], default=0)
            limit = (earlier + sizes[target]) // 2  # the files before the target still fit (they grow a little)
            assert earlier * 1.1 < limit < sizes[target] * 0.9, sizes
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        return stop

    monkeypatch.setattr(trainer, "end_epoch", limit_after_two)
    try:
        with pytest.raises(RunWriteError) as info:
            sedensenet.train(data=str(data), project=str(tmp_path), name="full", **SETTINGS)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    monkeypatch.undo()
    run = tmp_path / "full"
    message = str(info.value)
    assert f"could not write {run / target} after epoch 3" in message, message
    assert "The last complete checkpoint is epoch 2" in message and f"--resume {run}" in message, message
    seen = check_run_folder(run)
    assert seen["state_epoch"] == 2
    if target != "weights/last.safetensors":  # last.safetensors may already hold epoch 3: the state decides
        assert seen["last_epoch"] == 3
    assert snapshot(run)["state/last.pt"] == saved["state/last.pt"]
    assert sedensenet.train(resume=run).run_dir == run
    assert same_weights(run / "weights" / "last.safetensors", ref / "weights" / "last.safetensors")


def test_disk_full_message_names_the_file_and_the_resume_point(
    reference: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, _ = reference
    real = trainer.write_history_csv

    def full_at_three(rows, path):  # noqa: ANN001, ANN202
        if len(rows) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(rows, path)

    monkeypatch.setattr(trainer, "write_history_csv", full_at_three)
    with pytest.raises(RunWriteError, match=r"history\.csv after epoch 3 \(No space left on device; [\d.]+ MiB free"):
        sedensenet.train(data=str(data), project=str(tmp_path), name="full", **SETTINGS)
    assert check_run_folder(tmp_path / "full")["history_epochs"] == [1, 2]


def test_crash_between_the_weights_and_the_state_resumes_exactly(
    reference: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process dying after ``weights/last.safetensors`` of epoch 3 but before ``state/last.pt``: the state (with
    its own copy of the weights) is the resume point, so epoch 3 is redone from epoch 2's weights."""
    data, ref = reference
    real = ckpt.save_state

    def die_at_three(path, state):  # noqa: ANN001, ANN202
        if state["epoch"] == 3:
            raise KeyboardInterrupt("the process dies here")
        return real(path, state)

    monkeypatch.setattr(ckpt, "save_state", die_at_three)
    with pytest.raises(KeyboardInterrupt):
        sedensenet.train(data=str(data), project=str(tmp_path), name="crash", **SETTINGS)
    monkeypatch.undo()
    run = tmp_path / "crash"
    seen = check_run_folder(run)
    assert (seen["last_epoch"], seen["state_epoch"]) == (3, 2)
    sedensenet.train(resume=run)
    for name in ("last", "best"):
        assert same_weights(run / "weights" / f"{name}.safetensors", ref / "weights" / f"{name}.safetensors")


def test_full_disk_is_reported_before_the_first_epoch(
    reference: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, _ = reference

    def no_space(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(run_module.tempfile, "mkstemp", no_space)
    with pytest.raises(RunDirError, match=r"cannot write to .*probe: no space left on device \(disk full\)"):
        sedensenet.train(data=str(data), project=str(tmp_path), name="probe", **SETTINGS)
    assert not (tmp_path / "probe" / "weights").exists()  # no epoch ran


def test_cli_reports_an_unwritable_output_folder_in_one_line(
    reference: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    data, _ = reference

    def read_only(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(run_module.tempfile, "mkstemp", read_only)
    assert main(["train", "--data", str(data), "--project", str(tmp_path), "-q", *cli_args(SETTINGS)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("error: cannot write to") and "read-only file system" in err
    assert "Traceback" not in err


def test_same_name_never_overwrites_and_exist_ok_reuses(reference: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = reference
    settings = dict(SETTINGS, epochs=1)
    first = sedensenet.train(data=str(data), project=str(tmp_path), name="exp", **settings).run_dir
    second = sedensenet.train(data=str(data), project=str(tmp_path), name="exp", **settings).run_dir
    again = sedensenet.train(data=str(data), project=str(tmp_path), name="exp", exist_ok=True, **settings).run_dir
    assert (first.name, second.name, again) == ("exp", "exp2", first)


def test_written_files_get_ordinary_permissions(tmp_path: Path) -> None:
    """mkstemp makes owner-only files; a run folder's files must be readable as any file the user writes."""
    umask = os.umask(0o022)
    os.umask(umask)
    fresh = atomic_write_text(tmp_path / "a.txt", "x")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask
    os.chmod(fresh, 0o640)
    atomic_write_text(fresh, "y")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o640  # a replaced file keeps its mode


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path: Path) -> None:
    keep = [tmp_path / "notes.tmp", tmp_path / ".hidden", tmp_path / "weights" / "last.safetensors"]
    stale = [tmp_path / ".history.csv.abc123.tmp", tmp_path / "weights" / ".last.safetensors.x1y2.tmp"]
    for p in keep + stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)
