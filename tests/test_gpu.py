"""GPU checks (run on the GPU machines): the CPU reference rasterizer matches gsplat."""

import pytest
import torch
from gsplat.rendering import rasterization as gsplat_rasterization

from splatfacto_dist.render.raster import EPS2D, FAR_PLANE, NEAR_PLANE, TILE_SIZE, rasterize
from splatfacto_dist.scenes.scene import ground_truth_gaussians, ring_cameras

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


@cuda
@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_colours_evaluated_before_gsplat_render_and_train_as_gsplats_own(sh_degree):
    """`rasterize` evaluates the SH itself (camera centres without `torch.inverse`'s host sync): the
    images, the densification statistics and every gradient are gsplat's own SH path's."""
    results = []
    for ours in (True, False):
        inputs = scene_inputs("cuda")
        options = dict(sh_degree=sh_degree, render_mode="RGB+ED", absgrad=True)
        if ours:
            render, alpha, info = rasterize(**options, **inputs)
        else:
            render, alpha, info = gsplat_rasterization(
                packed=False, near_plane=NEAR_PLANE, far_plane=FAR_PLANE, eps2d=EPS2D, sparse_grad=False,
                tile_size=TILE_SIZE, **options, **inputs,
            )  # fmt: skip
        info["means2d"].retain_grad()
        target = torch.rand(render.shape, generator=torch.Generator().manual_seed(1)).cuda()
        ((render - target) ** 2).mean().add(alpha.mean()).backward()
        grads = {k: inputs[k].grad for k in ("means", "quats", "scales", "opacities", "colors")}
        results.append(dict(render=render, alpha=alpha, grad2d=info["means2d"].grad, absgrad=info["means2d"].absgrad,
                            radii=info["radii"], **grads))  # fmt: skip
    ours, theirs = results
    assert torch.equal(ours["radii"], theirs["radii"])
    assert torch.count_nonzero(ours["radii"]) > 0
    for key, value in theirs.items():
        scale = value.abs().max().clamp_min(1e-12)
        assert ((ours[key] - value).abs().max() / scale) < 1e-5, key


def _parameter_rows(device):
    """Parameter rows (splatfacto's, before activation) of the `scene_inputs` scene, with gradients."""
    inputs = scene_inputs("cpu")
    rows = {
        "means": inputs["means"].detach(),
        "quats": inputs["quats"].detach(),
        "scales": torch.log(inputs["scales"].detach()),
        "opacities": torch.logit(inputs["opacities"].detach())[:, None],
        "features_dc": inputs["colors"][:, 0].detach(),
        "features_rest": inputs["colors"][:, 1:].detach(),
    }
    cameras = {k: inputs[k] for k in ("viewmats", "Ks", "width", "height")}
    return {k: v.to(device).requires_grad_() for k, v in rows.items()}, {
        k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in cameras.items()
    }


@cuda
@pytest.mark.parametrize("rasterize_mode", ["classic", "antialiased"])
def test_projected_pairs_render_as_one_rasterization(rasterize_mode):
    """The sharded layout's path (owners project and colour, the renderer rasterizes the received
    pairs with gsplat's packed kernels; here on one rank) renders what one gsplat call renders,
    with the same gradients, absgrad and radii; and the CPU reference of that path matches it."""
    from splatfacto_dist.layouts.replicated import ReplicatedLayout
    from splatfacto_dist.layouts.sharded import ShardedLayout

    results = {}
    for name, layout, device in (
        ("replicated", ReplicatedLayout(), "cuda"),
        ("sharded", ShardedLayout(), "cuda"),
        ("sharded_cpu", ShardedLayout(), "cpu"),
    ):
        rows, cameras = _parameter_rows(device)
        render, alpha, info = layout.render(
            rows, sh_degree=3, render_mode="RGB+ED", rasterize_mode=rasterize_mode,
            absgrad=True, **cameras,
        )  # fmt: skip
        info["means2d"].retain_grad()
        target = torch.rand(render.shape, generator=torch.Generator().manual_seed(1)).to(device)
        ((render - target) ** 2).mean().add(alpha.mean()).backward()
        results[name] = dict(
            render=render.detach().cpu(),
            alpha=alpha.detach().cpu(),
            visible=int((info["radii"] > 0).sum()),
            absgrad=float(info["means2d"].absgrad.norm()),
            **{f"grad_{k}": v.grad.cpu() for k, v in rows.items()},
        )
    want, got, cpu = results["replicated"], results["sharded"], results["sharded_cpu"]
    assert want["visible"] > 100 and got["visible"] == want["visible"]
    assert (got["render"] - want["render"]).abs().max() < 1e-4 * max(1.0, want["render"].abs().max())
    assert (got["alpha"] - want["alpha"]).abs().max() < 1e-5
    assert abs(got["absgrad"] - want["absgrad"]) < 1e-4 * want["absgrad"]
    for key in [k for k in want if k.startswith("grad_")]:
        assert want[key].norm() > 0, key
        assert (got[key] - want[key]).norm() / want[key].norm() < 1e-4, key
        assert (cpu[key] - want[key]).norm() / want[key].norm() < 2e-2, key
    assert (cpu["render"] - want["render"]).abs().max() < 2e-3 * max(1.0, want["render"].abs().max())


@cuda
def test_camera_math_of_a_step_leaves_no_cublas_workspace():
    """A CUDA matmul makes cuBLAS keep a workspace (32 MiB on Hopper) per thread for the process's
    life; the step's camera math runs on the training thread and, in a sharded replay, on the
    autograd thread: done by hand, it holds nothing after its tensors are gone."""
    from splatfacto_dist.models.model import SplatfactoDistModel
    from splatfacto_dist.render.raster import camera_centres

    torch._C._cuda_clearCublasWorkspaces()
    poses = torch.randn(2, 3, 4, device="cuda", requires_grad=True)
    baseline = torch.cuda.memory_allocated()
    centres = camera_centres(SplatfactoDistModel._viewmats(poses))
    centres.sum().backward()
    del centres
    poses.grad = None
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() - baseline
    torch._C._cuda_clearCublasWorkspaces()
    assert held == torch.cuda.memory_allocated() - baseline == 0, f"{held} bytes held after the camera math"
