"""Every bad input is refused in one `error:` line, exit 2, before any rank starts, naming the file
and what is wrong: damaged, missing or mis-sized images, a missing or malformed camera model, an
output folder that cannot be written, counts below 1."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest
from conftest import train_command
from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from PIL import Image

from splatfacto_dist.data.datamanager import ConfigError, _load_and_undistort
from splatfacto_dist.launching import preflight, rank
from splatfacto_dist.method import splatfacto_dist_config


def _copy(scene: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(scene, tmp_path / "scene"))


def _config(data: Path, parser=None):
    config = splatfacto_dist_config()
    config.machine.device_type = "cpu"
    config.pipeline.datamanager.dataparser = parser or ColmapDataParserConfig()
    config.pipeline.datamanager.data = data
    return config


def _image(scene: Path, i: int = 3) -> Path:
    return scene / "images" / f"frame_{i:04d}.png"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _resize(path: Path) -> None:
    Image.open(path).resize((32, 24)).save(path)


# A fault planted in a copy of the scene -> words of its one line (besides the file's name).
IMAGE_FAULTS = {
    "truncated": (_truncate, "cannot be decoded (truncated or damaged?)"),
    "empty": (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    "not an image": (lambda p: p.write_bytes(b"not a PNG at all" * 10), "cannot be decoded"),
    "missing": (Path.unlink, "does not exist (listed in the COLMAP model"),
    "another size": (_resize, "is 32x24 but its camera says 64x48"),
}


@pytest.mark.parametrize("fault", IMAGE_FAULTS)
def test_a_bad_image_is_one_line_naming_it(tmp_path, scene, fault):
    plant, words = IMAGE_FAULTS[fault]
    data = _copy(scene, tmp_path)
    assert preflight.data_refusal(_config(data), 2) is None  # the copy is fine before the fault
    plant(_image(data))
    line = preflight.data_refusal(_config(data), 2)
    assert line is not None and "\n" not in line
    assert str(_image(data)) in line and words in line, line


def test_a_truncated_jpeg_is_found_without_a_full_decode(tmp_path):
    path = tmp_path / "a.jpg"
    Image.effect_noise((64, 48), 40).convert("RGB").save(path, quality=90)
    from splatfacto_dist.data.datamanager import image_problem

    assert image_problem(path, 64, 48) is None
    _truncate(path)
    assert "truncated" in image_problem(path, 64, 48)


MODEL_FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "no sparse/0": (lambda d: shutil.rmtree(d / "colmap"), "does not exist"),
    "malformed cameras.txt": (
        lambda d: (d / "colmap/sparse/0/cameras.txt").write_text("1 PINHOLE sixty-four 48 50 50 32 24\n"),
        "ValueError",
    ),
    "truncated images.txt": (
        lambda d: (d / "colmap/sparse/0/images.txt").write_text("# nothing listed\n"),
        "No images found",
    ),
}


@pytest.mark.parametrize("fault", MODEL_FAULTS)
def test_a_missing_or_malformed_colmap_model_is_one_line_naming_it(tmp_path, scene, fault):
    plant, words = MODEL_FAULTS[fault]
    data = _copy(scene, tmp_path)
    plant(data)
    line = preflight.data_refusal(_config(data), 2)
    assert line is not None and "\n" not in line
    assert f"the COLMAP model {data / 'colmap/sparse/0'} cannot be read" in line and words in line, line


@pytest.mark.parametrize("content", [None, "{ not json", '{"frames": []}'])
def test_a_missing_or_malformed_transforms_json_is_one_line_naming_it(tmp_path, content):
    if content is not None:
        (tmp_path / "transforms.json").write_text(content)
    line = preflight.data_refusal(_config(tmp_path, NerfstudioDataParserConfig()), 2)
    assert line is not None and "\n" not in line
    assert line.startswith(f"the transforms file {tmp_path / 'transforms.json'} cannot be read"), line


def test_too_few_cameras_for_the_shards_are_refused_with_the_real_count(tmp_path, scene):
    config = _config(scene)
    config.pipeline.datamanager.data_shards = 64
    line = preflight.data_refusal(config, 2)
    assert line is not None and "cannot fill 64 shards" in line


def test_the_datamanager_names_an_image_that_does_not_load(tmp_path, scene):
    """ns-train's launcher runs no pre-flight: a rank's datamanager names the file in one line."""
    data = _copy(scene, tmp_path)
    _truncate(_image(data, 1))
    outputs = ColmapDataParserConfig(data=data, load_3D_points=False).setup().get_dataparser_outputs("train")
    dataset = InputDataset(outputs)
    index = [Path(f) for f in dataset.image_filenames].index(_image(data, 1))
    with pytest.raises(ConfigError) as err:
        _load_and_undistort(dataset, index, "uint8")
    assert str(_image(data, 1)) in str(err.value) and "\n" not in str(err.value)


COUNTS = [
    ("machine.num_devices", "--machine.num-devices"),
    ("machine.num_machines", "--machine.num-machines"),
    ("max_num_iterations", "--max-num-iterations"),
    ("pipeline.datamanager.cameras_per_rank", "--pipeline.datamanager.cameras-per-rank"),
    ("steps_per_save", "--steps-per-save"),
]


@pytest.mark.parametrize("field, flag", COUNTS, ids=[flag for _, flag in COUNTS])
@pytest.mark.parametrize("value", [0, -1])
def test_a_count_below_one_is_refused_at_parse_and_by_the_launcher(scene, field, flag, value):
    config = _config(scene)
    *parents, name = field.split(".")
    section = config
    for parent in parents:
        section = getattr(section, parent)
    setattr(section, name, value)
    line = preflight.refusal_at_parse(config)
    assert line is not None and line.startswith(f"{flag} {value}: give a positive number"), line
    job = rank.Job(world_size=2, num_devices_per_machine=2, machine_rank=0, init_method="tcp://127.0.0.1:1")
    with pytest.raises(preflight.LaunchError) as err:
        preflight.check_job(config, job)
    assert err.value.message == line


def test_an_output_folder_under_a_file_is_refused_but_not_the_default_one(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = splatfacto_dist_config()
    config.output_dir = blocker / "outputs"
    assert (
        preflight.refusal_at_parse(config) == f"--output-dir {blocker / 'outputs'}: {blocker} is a file, not a folder"
    )
    config.output_dir = tmp_path / "new" / "outputs"
    assert preflight.refusal_at_parse(config) is None
    # The method registry builds the default config at import (ns-export, ns-eval): never refused there.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").write_text("")
    assert preflight.output_refusal(Path("outputs")) is not None
    assert preflight.refusal_at_parse(splatfacto_dist_config()) is None


def _refused(cmd: list, out: Path) -> str:
    """The one `error:` line of a command that must exit 2 before any rank starts."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2, log[-3000:]
    lines = log.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(errors) == 1, log[-3000:]
    assert "Traceback" not in log and "rank 0" not in log, log[-3000:]  # no rank ever started
    # launch.main prints a LaunchError on nerfstudio's 120-column console, which wraps a long line
    # (until it prints with soft_wrap): its words are read to the end of the output.
    return " ".join(lines[errors[0] :])


def test_replicated_offload_on_several_ranks_is_refused_in_one_line(tmp_path, scene):
    line = _refused(train_command(tmp_path / "out", scene, 2, ["--pipeline.model.offload", "True"]), tmp_path)
    assert "--pipeline.model.offload" in line and "gaussian-layout sharded" in line


def test_a_truncated_image_stops_a_two_rank_run_in_one_line(tmp_path, scene):
    data = _copy(scene, tmp_path)
    _truncate(_image(data, 5))
    line = _refused(train_command(tmp_path / "out", data, 2), tmp_path)
    assert str(_image(data, 5)) in line and "truncated" in line
    assert not list((tmp_path / "out").glob("*/*/*/nerfstudio_models"))


@pytest.mark.parametrize("case", ["num-devices 0", "output under a file"])
def test_the_command_line_refuses_in_one_line(tmp_path, scene, case):
    blocker = tmp_path / "file"
    blocker.write_text("")
    if case == "num-devices 0":
        line = _refused(train_command(tmp_path / "out", scene, 0), tmp_path)
        assert "--machine.num-devices 0: give a positive number" in line
    else:
        line = _refused(train_command(blocker / "out", scene, 2), tmp_path)
        assert f"{blocker} is a file, not a folder" in line
