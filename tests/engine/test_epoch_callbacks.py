"""``train_run``'s one hook: callbacks see every saved epoch, and ``StopRun`` ends the run there, cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest

from sedensenet import api
from sedensenet.engine.faults import StopRun
from sedensenet.engine.run import EpochEnd
from sedensenet.reports import read_history_csv

TINY = {"model": "se_densenet_tiny", "image_size": 16, "batch_size": 4, "workers": 0, "max_steps": 1, "verbose": 0}


def test_callbacks_see_each_saved_epoch_and_stop_run_ends_the_run_without_the_final_evaluation(
    tiny_images: Path, tmp_path: Path
) -> None:
    seen: list[EpochEnd] = []

    def watch(event: EpochEnd) -> None:
        assert (event.run_dir / "history.csv").is_file()  # the epoch is saved before callbacks hear of it
        seen.append(event)

    def stop_at_2(event: EpochEnd) -> None:
        if event.epoch == 2:
            raise StopRun("enough", epoch=2)

    with pytest.raises(StopRun, match="enough"):
        api.train(str(tiny_images), epochs=3, project=str(tmp_path), callbacks=[watch, stop_at_2], **TINY)
    run = tmp_path / "train"
    assert [(e.epoch, e.epochs, e.run_dir) for e in seen] == [(1, 3, run), (2, 3, run)]
    history = read_history_csv(run / "history.csv")
    assert [float(r["val_accuracy"]) for r in history] == [e.row["val_accuracy"] for e in seen]
    assert not (run / "metrics.json").exists()  # no final evaluation
    resumed = api.train(resume=run, **{k: v for k, v in TINY.items() if k == "verbose"})
    assert resumed.history.epoch == [1, 2, 3] and (run / "metrics.json").is_file()  # and it resumes from there
