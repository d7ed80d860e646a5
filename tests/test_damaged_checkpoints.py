"""Damaged checkpoints: a resume skips a checkpoint that does not load for the next older complete
one, naming each in one line; a save that fails says so in one line (path, bytes needed), leaves no
temporary file and keeps the previous checkpoint; free space is checked before writing."""

from __future__ import annotations

import errno
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import train

from splatfacto_dist.engine import checkpoint
from splatfacto_dist.engine.trainer import DistTrainer


def _state(step: int) -> dict:
    means = torch.full((10, 3), float(step))
    return {"step": step, "pipeline": {"_model.gauss_params.means": means}, "optimizers": {}, "scalers": {}}


def _write(folder: Path, step: int) -> Path:
    path = folder / f"step-{step:09d}.ckpt"
    checkpoint.save_atomic(_state(step), path)
    return path


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_newest_checkpoint_is_named_and_the_next_older_complete_one_resumes(tmp_path):
    for step in (10, 20, 30):
        _write(tmp_path, step)
    _truncate(tmp_path / "step-000000030.ckpt")
    (tmp_path / "step-000000020.ckpt").write_bytes(b"")  # empty: a save killed before it wrote anything
    said = []
    path, loaded = checkpoint.resume_from(tmp_path, None, None, said.append)
    assert path == tmp_path / "step-000000010.ckpt" and loaded["step"] == 10
    assert len(said) == 2 and all("\n" not in line for line in said)
    assert str(tmp_path / "step-000000030.ckpt") in said[0] and "trying the next older one" in said[0]
    assert str(tmp_path / "step-000000020.ckpt") in said[1]


def test_a_checkpoint_without_the_model_is_skipped_too(tmp_path):
    _write(tmp_path, 10)
    torch.save({"step": 20, "pipeline": {}, "optimizers": {}}, tmp_path / "step-000000020.ckpt")
    said = []
    path, _ = checkpoint.resume_from(tmp_path, None, None, said.append)
    assert path.name == "step-000000010.ckpt"
    assert "incomplete" in said[0] and "step-000000020.ckpt" in said[0]


def test_no_loadable_checkpoint_is_one_line(tmp_path):
    _truncate(_write(tmp_path, 10))
    with pytest.raises(checkpoint.CheckpointError, match="none of the 1 checkpoints") as err:
        checkpoint.resume_from(tmp_path, None, None, lambda line: None)
    assert "\n" not in str(err.value)


def test_a_named_checkpoint_that_does_not_load_is_not_replaced_by_another(tmp_path):
    """--load-step and --load-checkpoint name one file: it loads or the resume stops, naming it."""
    _write(tmp_path, 10)
    damaged = _write(tmp_path, 20)
    _truncate(damaged)
    for args in ((tmp_path, 20, None), (None, None, damaged)):
        with pytest.raises(checkpoint.CheckpointError) as err:
            checkpoint.resume_from(*args, say=pytest.fail)
        assert str(damaged) in str(err.value) and "does not load" in str(err.value) and "\n" not in str(err.value)


def test_a_save_that_fails_midway_leaves_no_temporary_file_and_the_previous_checkpoint(tmp_path, monkeypatch):
    previous = _write(tmp_path, 10)
    before = previous.read_bytes()

    def disk_full(state, tmp):
        Path(tmp).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file\nstack")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    path = tmp_path / "step-000000020.ckpt"
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.save_atomic(_state(20), path)
    line = str(err.value)
    assert "\n" not in line and str(path) in line and "failed writing" in line
    assert f"needs about {checkpoint.state_bytes(_state(20))} bytes" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == [previous.name]  # no .tmp, no new file
    assert previous.read_bytes() == before


def test_a_save_is_refused_before_writing_when_the_disk_lacks_the_room(tmp_path, monkeypatch):
    previous = _write(tmp_path, 10)
    needed = checkpoint.state_bytes(_state(20))
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda folder: SimpleNamespace(free=needed - 1))
    wrote = []
    monkeypatch.setattr(checkpoint.torch, "save", lambda *args: wrote.append(args))
    with pytest.raises(checkpoint.CheckpointError, match=f"needs about {needed} bytes.*{needed - 1} bytes"):
        checkpoint.save_atomic(_state(20), tmp_path / "step-000000020.ckpt")
    assert not wrote and [p.name for p in tmp_path.iterdir()] == [previous.name]


def test_an_unwritable_checkpoint_folder_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(checkpoint.CheckpointError, match="not written") as err:
        checkpoint.save_atomic(_state(1), blocker / "nerfstudio_models" / "step-000000001.ckpt")
    assert "\n" not in str(err.value)


def _trainer(tmp_path: Path, state: str, latest_only: bool) -> SimpleNamespace:
    """What DistTrainer.save_checkpoint reads of a trainer (checkpoint.save itself is replaced)."""
    return SimpleNamespace(
        checkpoint_dir=tmp_path,
        images_per_step=2,
        grad_scaler=SimpleNamespace(state_dict=dict),
        pipeline=SimpleNamespace(model=SimpleNamespace(layout=None)),
        optimizers=None,
        training_state=state,
        config=SimpleNamespace(save_only_latest_checkpoint=latest_only),
    )


def test_a_failed_periodic_save_says_so_and_training_goes_on_the_final_one_stops(tmp_path, monkeypatch, capsys):
    previous = _write(tmp_path, 10)

    def full(path, *args):
        raise checkpoint.CheckpointError(f"checkpoint {path} not written: OSError: [Errno 28] No space left")

    monkeypatch.setattr(checkpoint, "save", full)
    DistTrainer.save_checkpoint(_trainer(tmp_path, "training", latest_only=True), 20)  # type: ignore[arg-type]
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "error:" in line]
    assert "step-000000020.ckpt not written" in line and "training goes on" in line
    assert previous.exists()  # save_only_latest_checkpoint deletes nothing when nothing new was written
    with pytest.raises(checkpoint.CheckpointError):
        DistTrainer.save_checkpoint(_trainer(tmp_path, "completed", latest_only=True), 30)  # type: ignore[arg-type]
    assert previous.exists()


def test_a_disk_full_save_in_a_real_write(tmp_path, monkeypatch):
    """The real torch.save into a file that fills up (ENOSPC after some bytes): its error, cleaned up."""
    real_open = open
    limit = 1000

    class Full:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > limit:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    real_save = torch.save
    monkeypatch.setattr(
        checkpoint.torch,
        "save",
        lambda obj, tmp: real_save(obj, Full(real_open(tmp, "wb"))),  # noqa: SIM115
    )
    with pytest.raises(checkpoint.CheckpointError, match="No space left") as err:
        checkpoint.save_atomic(_state(5), tmp_path / "step-000000005.ckpt")
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_a_resume_skips_a_truncated_newest_checkpoint_end_to_end(tmp_path, scene):
    """One process: 8 steps saved at 4 and 7; step 7 truncated; --load-dir resumes from step 4."""
    first = train(
        tmp_path / "first",
        scene,
        1,
        [
            "--max-num-iterations",
            "8",
            "--steps-per-save",
            "4",
            "--save-only-latest-checkpoint",
            "False",
            "--schedule-unit",
            "steps",
        ],
    )
    models = first / "nerfstudio_models"
    assert sorted(p.name for p in models.glob("*.ckpt")) == ["step-000000004.ckpt", "step-000000007.ckpt"]
    _truncate(models / "step-000000007.ckpt")
    train(
        tmp_path / "resumed",
        scene,
        1,
        ["--max-num-iterations", "2", "--load-dir", str(models), "--schedule-unit", "steps"],
    )
    log = (tmp_path / "resumed" / "train.log").read_text()
    assert f"checkpoint {models / 'step-000000007.ckpt'} does not load" in " ".join(log.split())
    assert "continuing at step 5" in log
