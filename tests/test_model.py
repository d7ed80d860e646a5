import pytest
import torch
from conftest import build_model
from nerfstudio.cameras.cameras import Cameras
from torchmetrics.image import PeakSignalNoiseRatio

from splatfacto_dist.models.model import intrinsics, psnr

GAUSSIAN_KEYS = ["means", "scales", "quats", "features_dc", "features_rest", "opacities"]


@pytest.mark.parametrize("random_init", [False, True])
def test_model_builds_on_cpu_with_contiguous_parameters(random_init):
    model = build_model(random_init)
    n = 500 if random_init else 300
    for key in GAUSSIAN_KEYS:
        param = model.gauss_params[key]
        assert param.shape[0] == n
        assert param.device.type == "cpu"
        assert param.is_contiguous(), key
    assert model.gauss_params["features_rest"].shape[1:] == (15, 3)


def test_seed_points_set_colours_and_positions():
    g = torch.Generator().manual_seed(0)
    points = (torch.rand(300, 3, generator=g) - 0.5) * 2
    colors = torch.randint(0, 256, (300, 3), generator=g, dtype=torch.uint8)
    model = build_model(random_init=False)
    assert torch.equal(model.gauss_params["means"], points)
    expected_dc = (colors.float() / 255 - 0.5) / 0.28209479177387814
    assert torch.allclose(model.gauss_params["features_dc"], expected_dc, atol=1e-6)


def test_initialization_is_a_function_of_the_shared_seed_only():
    torch.manual_seed(1)
    a = build_model(random_init=True)
    torch.manual_seed(2)  # a different per-rank global seed must not matter
    b = build_model(random_init=True)
    c = build_model(random_init=True, seed=7)
    for key in GAUSSIAN_KEYS:
        assert torch.equal(a.gauss_params[key], b.gauss_params[key]), key
    assert not torch.equal(a.gauss_params["means"], c.gauss_params["means"])


def test_renders_a_batch_of_cameras_like_one_by_one():
    model = build_model(random_init=False)
    model.eval()
    c2w = torch.eye(4)[None, :3, :].repeat(2, 1, 1)
    c2w[:, 2, 3] = torch.tensor([3.0, 3.5])
    cameras = Cameras(camera_to_worlds=c2w, fx=40.0, fy=40.0, cx=16.0, cy=12.0, width=32, height=24)
    batch = model.get_outputs(cameras)
    for i in range(2):
        single = model.get_outputs(cameras[i : i + 1])
        assert torch.allclose(batch["rgb"][i], single["rgb"], atol=1e-5)
        assert torch.allclose(batch["depth"][i], single["depth"], atol=1e-4)
    assert batch["rgb"].shape == (2, 24, 32, 3)


@pytest.mark.parametrize("given, expected", [(None, 7), (3, 3)])
def test_machine_seed_seeds_the_model_unless_the_model_seed_is_given(tmp_path, given, expected):
    from splatfacto_dist.engine.trainer import DistTrainer
    from splatfacto_dist.method import splatfacto_dist_config

    config = splatfacto_dist_config()
    config.machine.device_type, config.machine.seed = "cpu", 7
    config.pipeline.model.seed, config.output_dir = given, tmp_path
    config.set_timestamp()
    trainer = DistTrainer(config)
    assert trainer.config.pipeline.model.seed == expected
    assert config.pipeline.model.seed == given  # the user's config (config.yml) keeps what was typed


def _cameras(n: int) -> Cameras:
    g = torch.Generator().manual_seed(3)
    return Cameras(
        camera_to_worlds=torch.eye(4)[:3].expand(n, 3, 4).clone(),
        fx=500 + 100 * torch.rand(n, 1, generator=g),
        fy=500 + 100 * torch.rand(n, 1, generator=g),
        cx=torch.full((n, 1), 320.5),
        cy=torch.full((n, 1), 240.25),
        width=torch.full((n, 1), 641),
        height=torch.full((n, 1), 481),
    )


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_intrinsics_are_stocks_rescaled_intrinsics(scale):
    """The training intrinsics, made without stock's round trip through the CPU, are exactly stock's."""
    cameras = _cameras(3)
    ours = intrinsics(cameras, scale)
    cameras.rescale_output_resolution(1 / scale)
    assert torch.equal(ours, cameras.get_intrinsics_matrices())


def test_training_psnr_is_torchmetrics_psnr():
    g = torch.Generator().manual_seed(5)
    pred, gt = torch.rand(2, 48, 64, 3, generator=g).unbind()
    expected = PeakSignalNoiseRatio(data_range=1.0)(pred, gt)
    assert torch.allclose(psnr(pred, gt), expected, rtol=1e-6)
