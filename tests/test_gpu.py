"""GPU checks (run on the GPU machines): the CPU reference rasterizer matches gsplat."""

import pytest
import torch

from splatfacto_dist.raster import rasterize
from splatfacto_dist.scene import ground_truth_gaussians, ring_cameras

pytestmark = pytest.mark.gpu

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def scene_inputs(device):
    gt = ground_truth_gaussians()
    n = len(gt["means"])
    g = torch.Generator().manual_seed(0)
    sh = torch.zeros(n, 16, 3)
    sh[:, 0] = (gt["rgb"] - 0.5) / 0.28209479177387814
    sh[:, 1:] = 0.05 * torch.randn(n, 15, 3, generator=g)
    width, height = 96, 72
    K = torch.tensor([[86.4, 0, 48.0], [0, 86.4, 36.0], [0, 0, 1.0]])
    inputs = dict(
        means=gt["means"],
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        scales=torch.exp(gt["scales"]),
        opacities=torch.full((n,), 0.7),
        colors=sh,
        viewmats=ring_cameras(3),
        Ks=K[None].repeat(3, 1, 1),
        width=width,
        height=height,
    )
    out = {
        k: (
            v.to(device).requires_grad_(k in ("means", "quats", "scales", "opacities", "colors"))
            if isinstance(v, torch.Tensor)
            else v
        )
        for k, v in inputs.items()
    }
    return out


@cuda
@pytest.mark.parametrize("sh_degree", [0, 3])
@pytest.mark.parametrize("render_mode", ["RGB", "RGB+ED"])
def test_reference_rasterizer_matches_gsplat(sh_degree, render_mode):
    results = {}
    for device in ("cuda", "cpu"):
        inputs = scene_inputs(device)
        render, alpha, info = rasterize(sh_degree=sh_degree, render_mode=render_mode, absgrad=True, **inputs)
        info["means2d"].retain_grad()
        target = torch.rand(render.shape, generator=torch.Generator().manual_seed(1)).to(device)
        ((render - target) ** 2).mean().add(alpha.mean()).backward()
        results[device] = dict(
            render=render.detach().cpu(),
            alpha=alpha.detach().cpu(),
            radii=info["radii"].cpu(),
            absgrad=info["means2d"].absgrad.cpu(),
            **{f"grad_{k}": inputs[k].grad.cpu() for k in ("means", "scales", "opacities", "colors")},
        )
    gpu, cpu = results["cuda"], results["cpu"]
    # Images: gsplat and the reference composite in float32 in different orders.
    assert (gpu["render"] - cpu["render"]).abs().max() < 2e-3 * max(1.0, gpu["render"].abs().max())
    assert (gpu["alpha"] - cpu["alpha"]).abs().max() < 2e-3
    assert (gpu["radii"] != cpu["radii"]).float().mean() < 1e-3
    for key in ("grad_means", "grad_scales", "grad_opacities", "grad_colors", "absgrad"):
        err = (gpu[key] - cpu[key]).norm() / gpu[key].norm().clamp_min(1e-12)
        assert err < 2e-2, (key, float(err))
