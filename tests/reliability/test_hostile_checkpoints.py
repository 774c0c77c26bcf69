"""Checkpoints, resume states and configs are untrusted input: corrupt, truncated, mis-shaped, mis-typed or
crafted to run code. Each gives a clear error naming the file and the problem, and no code from a file ever
runs. ``SEDENSENET_FUZZ_EXAMPLES`` sets the number of fuzz cases per reader (default 200)."""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from relkit import FAST, make_folder
from safetensors.torch import save_file

import sedensenet
from sedensenet import checkpoint as ckpt
from sedensenet.checkpoint import CheckpointError
from sedensenet.cli import main
from sedensenet.config import ConfigError, TrainConfig, load_yaml

FUZZ = settings(
    max_examples=int(os.environ.get("SEDENSENET_FUZZ_EXAMPLES", "200")),
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class RunsCode:
    """Unpickling this calls ``open(marker, "w")``: the marker file appearing proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def run(tiny_run) -> Path:  # noqa: ANN001
    """A finished two-epoch run whose files the tests copy and damage (the session's shared run: never changed)."""
    return tiny_run.run_dir


@pytest.fixture
def fresh_run(run: Path, tmp_path: Path) -> Path:
    """A copy of the run folder (so each test can damage it)."""
    import shutil

    return Path(shutil.copytree(run, tmp_path / "run copy 副本"))


def cli_error(argv: list[str], capsys: pytest.CaptureFixture, one_line: bool = True) -> str:
    """Run the CLI, expect the user-error exit status and no traceback; return the error message."""
    assert main([*argv, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.startswith("error: "), err
    assert not one_line or len(err.splitlines()) == 1, err
    return err


# --------------------------------------------------------------------------------------------- safetensors


def corrupt_header(data: bytes) -> bytes:
    return data[:8] + b"{not json" + data[17:]


def huge_header_length(data: bytes) -> bytes:
    return struct.pack("<Q", 2**62) + data[8:]


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize("damage", [corrupt_header, huge_header_length, truncated, lambda d: b"", lambda d: b"hi"])
def test_damaged_safetensors_is_a_clear_error(run: Path, tmp_path: Path, damage, capsys) -> None:  # noqa: ANN001
    path = tmp_path / "model.safetensors"
    path.write_bytes(damage((run / "weights" / "best.safetensors").read_bytes()))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a readable safetensors checkpoint"):
        sedensenet.load_model(path)
    line = cli_error(["predict", str(path), str(run / "config.yaml")], capsys)
    assert str(path) in line


def rewritten(src: Path, dst: Path, change) -> Path:  # noqa: ANN001
    tensors, meta = ckpt.read_checkpoint(src)
    tensors = change(dict(tensors))
    header = {"sedensenet": ckpt.meta_to_json(meta)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst), metadata=header)
    return dst


def test_wrong_shape_or_dtype_names_the_tensor(run: Path, tmp_path: Path) -> None:
    src = run / "weights" / "best.safetensors"
    shape = rewritten(src, tmp_path / "shape.safetensors", lambda t: {**t, "classifier.weight": torch.zeros(5, 3)})
    dtype = rewritten(src, tmp_path / "dtype.safetensors", lambda t: {k: v.double() for k, v in t.items()})
    missing = rewritten(
        src, tmp_path / "missing.safetensors", lambda t: {k: v for k, v in t.items() if "norm" not in k}
    )
    with pytest.raises(CheckpointError, match=r"shape\.safetensors: .*classifier\.weight: file \(5, 3\)"):
        sedensenet.load_model(shape)
    with pytest.raises(CheckpointError, match=r"dtype\.safetensors: .*torch\.float64 vs model .* torch\.float32"):
        sedensenet.load_model(dtype)
    with pytest.raises(CheckpointError, match=r"missing\.safetensors: .*missing \['features\."):
        sedensenet.load_model(missing)


@pytest.mark.parametrize(
    "meta, problem",
    [("[1, 2]", "a JSON list"), ('{"model": {}, "classes": "cat"}', "classes must be a list"),
     ('{"model": {}, "classes": ["a"], "image_size": -3}', "image_size must be a positive integer"),
     ('{"model": {}, "classes": ["a"], "mean": "x"}', "mean must be a list"),
     ('{"model": {}, "classes": ["a"], "evaluation": [1]}', "evaluation must be an object"),
     ('{"model": {}, "classes": ["a"], "evaluation": {"splits": [{"split": "test", "label": "t", "images": -1}]}}',
      r"evaluation\.splits\[0\]\.images must be a count"),
     ('{"model": {}, "classes": ["a"], "evaluation": {"splits": [{"split": "test", "label": "t", "images": 3, '
      '"accuracy": {"value": "high"}, "balanced_accuracy": {"value": 1}}]}}',
      r"evaluation\.splits\[0\]\.accuracy\.value must be a number"),
     ('{"model": {}, "classes": ["a"], "evaluation": {"splits": [], "threshold": 0.5}}', "non-empty list")],
)  # fmt: skip
def test_malformed_metadata_is_a_clear_error(tmp_path: Path, meta: str, problem: str) -> None:
    path = tmp_path / "meta.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"sedensenet": meta})
    with pytest.raises(CheckpointError, match=rf"meta\.safetensors: its metadata is malformed \(.*{problem}"):
        ckpt.read_checkpoint(path)


def test_metadata_claiming_a_huge_network_allocates_nothing(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings are checked against the tensors on the meta device: a crafted header cannot make us build a
    network of the size it claims (here about 40 GB)."""
    tensors, meta = ckpt.read_checkpoint(run / "weights" / "best.safetensors")
    meta.model = {**meta.model, "growth_rate": 2048, "block_config": [64, 64]}
    header = {"sedensenet": ckpt.meta_to_json(meta)}
    path = tmp_path / "claims.safetensors"
    save_file(tensors, str(path), metadata=header)
    devices: list[str] = []
    real = ckpt.DenseNet

    def spy(config):  # noqa: ANN001, ANN202
        devices.append(str(torch.get_default_device()))
        return real(config)

    monkeypatch.setattr(ckpt, "DenseNet", spy)
    with pytest.raises(CheckpointError, match=r"claims\.safetensors: weights do not match the stored architecture"):
        ckpt.load_checkpoint(path)
    assert devices == ["meta"]


@FUZZ
@given(data=st.data())
def test_fuzzed_checkpoint_loads_or_is_a_checkpoint_error(run: Path, tmp_path_factory, data: st.DataObject) -> None:
    original = (run / "weights" / "best.safetensors").read_bytes()
    b = bytearray(original)
    header_end = 8 + struct.unpack("<Q", original[:8])[0]
    for pos, value in data.draw(st.lists(st.tuples(st.integers(0, header_end + 64), st.integers(0, 255)), max_size=6)):
        b[min(pos, len(b) - 1)] = value
    cut = data.draw(st.one_of(st.just(len(b)), st.integers(0, len(b))))
    path = tmp_path_factory.mktemp("ckfuzz") / "fuzzed.safetensors"
    path.write_bytes(bytes(b[:cut]))
    try:
        model, meta = ckpt.load_checkpoint(path)
    except CheckpointError as e:
        assert "fuzzed.safetensors" in str(e)
    else:
        assert isinstance(meta.classes, list) and isinstance(model, torch.nn.Module)


# --------------------------------------------------------------------------------------------- resume state


@pytest.mark.parametrize("fmt", ["torch zip", "torch legacy", "plain pickle"])
def test_a_state_crafted_to_run_code_is_refused_and_runs_nothing(
    fresh_run: Path, tmp_path: Path, fmt: str, capsys
) -> None:
    marker = tmp_path / "code ran"
    payload = {"epoch": 1, "optimizer": RunsCode(marker)}
    buf = io.BytesIO()
    if fmt == "plain pickle":
        buf.write(pickle.dumps(payload))
    else:
        torch.save(payload, buf, _use_new_zipfile_serialization=fmt == "torch zip")
    state = fresh_run / "state" / "last.pt"
    state.write_bytes(buf.getvalue())

    line = cli_error(["train", "--resume", str(fresh_run)], capsys)
    assert not marker.exists(), "code from the state file ran"
    assert str(state) in line
    expected = "not a readable resume state" if fmt == "plain pickle" else "would run code when unpickled"
    assert expected in line, line
    # The payload is live: an unsafe load would have run it.
    (tmp_path / "copy.pt").write_bytes(buf.getvalue())
    if fmt == "plain pickle":
        pickle.loads(buf.getvalue())
    else:
        torch.load(tmp_path / "copy.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    "content, problem",
    [(b"", "truncated or corrupt"), (b"hello", "truncated or corrupt"), ("half", "truncated or corrupt"),
     (pickle.dumps([1, 2]), "corrupt, or not a state file")],
)  # fmt: skip
def test_damaged_state_is_a_clear_error(fresh_run: Path, content: bytes | str, problem: str, capsys) -> None:
    state = fresh_run / "state" / "last.pt"
    state.write_bytes(state.read_bytes()[:2000] if content == "half" else content)
    line = cli_error(["train", "--resume", str(fresh_run)], capsys)
    assert str(state) in line and problem in line, line


def test_a_state_of_the_wrong_shape_is_a_clear_error(run: Path, fresh_run: Path, capsys) -> None:
    state_path = fresh_run / "state" / "last.pt"
    for broken in ({"epoch": 1}, {**ckpt.load_state(state_path), "optimizer": {"state": {}, "param_groups": [{}]}}):
        torch.save(broken, state_path)
        line = cli_error(["train", "--resume", str(fresh_run)], capsys)
        assert f"{state_path} is not a usable sedensenet resume state" in line, line
    good = ckpt.load_state(run / "state" / "last.pt")
    good["model"] = {k: v[:1] if v.ndim else v for k, v in good["model"].items()}
    torch.save(good, state_path)
    assert "weights do not match" in cli_error(["train", "--resume", str(fresh_run)], capsys)


@FUZZ
@given(data=st.data())
def test_fuzzed_state_loads_or_is_a_checkpoint_error(run: Path, tmp_path_factory, data: st.DataObject) -> None:
    b = bytearray((run / "state" / "last.pt").read_bytes())
    for pos, value in data.draw(st.lists(st.tuples(st.integers(0, len(b) - 1), st.integers(0, 255)), max_size=6)):
        b[pos] = value
    path = tmp_path_factory.mktemp("stfuzz") / "last.pt"
    path.write_bytes(bytes(b[: data.draw(st.integers(0, len(b)))]))
    try:
        state = ckpt.load_state(path)
    except CheckpointError as e:
        assert str(path) in str(e)
    else:
        assert isinstance(state, dict)


def test_damaged_last_weights_do_not_block_resume(fresh_run: Path, capsys) -> None:
    # state/last.pt carries its own copy of the weights and is the resume point; a damaged last.safetensors
    # is rewritten by the next epoch rather than stopping the run.
    last = fresh_run / "weights" / "last.safetensors"
    last.write_bytes(truncated(last.read_bytes()))
    assert main(["train", "--resume", str(fresh_run), "--epochs", "3", "-q"]) == 0
    ckpt.load_checkpoint(last)


def test_wrong_shaped_weights_in_the_state_name_the_file(fresh_run: Path, capsys) -> None:
    state_path = fresh_run / "state" / "last.pt"
    state = ckpt.load_state(state_path)
    state["model"]["classifier.weight"] = torch.zeros(2, 99)
    torch.save(state, state_path)
    line = cli_error(["train", "--resume", str(fresh_run)], capsys)
    assert str(state_path) in line and "classifier.weight" in line


# --------------------------------------------------------------------------------------------- configs


EVIL_YAML = 'epochs: !!python/object/apply:builtins.open ["{marker}", "w"]\n'


def test_config_with_python_tags_is_refused_through_config_and_resume(fresh_run: Path, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "yaml code ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(EVIL_YAML.format(marker=marker), encoding="utf-8")
    # one_line=False: the YAML parser's message spans lines (config.load_yaml; reported)
    line = cli_error(["train", "--config", str(evil), "--data", str(tmp_path)], capsys, one_line=False)
    assert str(evil) in line and "no !!python tags" in line
    (fresh_run / "config.yaml").write_text(EVIL_YAML.format(marker=marker), encoding="utf-8")
    line = cli_error(["train", "--resume", str(fresh_run)], capsys, one_line=False)
    assert str(fresh_run / "config.yaml") in line and "no !!python tags" in line
    assert not marker.exists()
    yaml.unsafe_load(evil.read_text(encoding="utf-8"))  # the payload is live: an unsafe loader runs it
    assert marker.exists()


@FUZZ
@given(data=st.data())
def test_fuzzed_config_loads_or_is_a_config_error(run: Path, tmp_path_factory, data: st.DataObject) -> None:
    text = (run / "config.yaml").read_text(encoding="utf-8")
    lines = text.splitlines()
    i = data.draw(st.integers(0, len(lines) - 1))
    key = lines[i].split(":")[0]
    value = data.draw(
        st.sampled_from(
            [
                "-1",
                "0",
                "1e999",
                ".nan",
                ".inf",
                "-.inf",
                "[1, 2]",
                "{a: 1}",
                "''",
                "~",
                "yes",
                "中文",
                "&a 1",
                "*a",
                "!!binary aGk=",
                "9" * 40,
                "- x",
                "!!set {a}",
            ]
        )
    )
    kind = data.draw(st.sampled_from(["value", "key", "text"]))
    if kind == "value":
        lines[i] = f"{key}: {value}"
    elif kind == "key":
        lines[i] = f"{value}: 1"
    else:
        lines[i] = data.draw(st.text(max_size=20))
    path = tmp_path_factory.mktemp("cfgfuzz") / "config.yaml"
    path.write_text("\n".join(lines), encoding="utf-8")
    try:  # only ConfigError (a ValueError) may come out
        config = TrainConfig.from_dict(load_yaml(path), source=str(path))
    except ConfigError as e:
        assert str(e)
    else:
        assert config.lr > 0 and config.epochs >= 1


@pytest.mark.parametrize("text", ["epochs: .inf\n", "lr: .nan\n", "1: 2\nepoch: 3\n"])
def test_config_values_that_escape_the_checks(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError):
        TrainConfig.from_dict(load_yaml(path), source=str(path))


def test_a_bad_value_in_a_config_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("lr: -1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"config\.yaml"):
        TrainConfig.from_dict(load_yaml(path), source=str(path))


# --------------------------------------------------------------------------------------------- other models


def test_weights_of_another_architecture_are_refused_before_the_run_folder(run: Path, tmp_path: Path) -> None:
    other = sedensenet.create_model("densenet_bc_100", num_classes=2)
    meta = ckpt.CheckpointMeta(model=other.config.to_dict(), classes=["a", "b"], image_size=32)
    path = ckpt.save_checkpoint(tmp_path / "bc100.safetensors", other, meta)
    data = run.parent.parent / "data"
    with pytest.raises(CheckpointError, match=r"bc100\.safetensors is a checkpoint of another architecture .*growth"):
        sedensenet.train(data=str(data), project=str(tmp_path / "runs"), weights=str(path), epochs=1, **FAST)
    assert not (tmp_path / "runs" / "train").exists()


def test_evaluate_refuses_data_whose_classes_the_checkpoint_lacks(run: Path, tmp_path: Path, capsys) -> None:
    data = make_folder(tmp_path / "other", per_class=2)
    (data / "狗").rename(data / "horse")
    line = cli_error(["evaluate", str(run), "--data", str(data), "--device", "cpu"], capsys)
    assert "['horse'] are not classes of this model" in line
