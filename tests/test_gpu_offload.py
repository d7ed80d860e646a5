"""GPU checks of host offload (offload/): the colours stay in host memory while the model trains on
the GPU, and training takes the same densification decisions and renders alike with it on or off
(gsplat's kernels sum in another order for a working set than for the whole model, so the runs are
compared by their renders, not bitwise as on the CPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import CUDA_TWO_RANKS, SCHEDULE, SHARDED, assert_renders_match, build_model, gaussians, train

from splatfacto_dist.offload.working_set import HOST_GROUPS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
OFFLOAD = ["--pipeline.model.offload", "True"]


@pytest.mark.parametrize(
    "ranks, layout",
    [(1, ["--machine.device-type", "cuda"]), (2, CUDA_TWO_RANKS + SHARDED)],
    ids=["replicated-1", "sharded-2"],
)
def test_offload_on_the_gpu_takes_the_same_decisions_and_renders_alike(tmp_path, scene, ranks, layout):
    schedule = SCHEDULE + layout + ["--pipeline.model.sh-degree-interval", "8"]
    on_gpu = train(tmp_path / "gpu", scene, ranks, schedule)
    offloaded = train(tmp_path / "offload", scene, ranks, schedule + OFFLOAD)
    assert len(gaussians(on_gpu)["means"]) == len(gaussians(offloaded)["means"])
    assert_renders_match(on_gpu, offloaded)


def test_an_offloaded_model_on_the_gpu_keeps_its_colours_and_their_gradients_in_host_memory():
    model = build_model(random_init=True)
    model.config.offload = True
    model.layout.offload = "dense"
    model.to("cuda")
    model.step = model.config.sh_degree * model.config.sh_degree_interval  # every SH degree active
    devices = {name: p.device.type for name, p in model.gauss_params.items()}
    assert all(devices[name] == "cpu" for name in HOST_GROUPS) and devices["means"] == "cuda", devices
    rows, sh_degree = model._gaussian_rows()
    viewmat = torch.eye(4, device="cuda")
    viewmat[2, 3] = 3.0
    K = torch.tensor([[40.0, 0, 16], [0, 40, 12], [0, 0, 1]], device="cuda")
    render, _, _ = model.layout.render(
        rows, viewmats=viewmat[None], Ks=K[None], width=32, height=24, sh_degree=sh_degree
    )
    render.sum().backward()
    for name in HOST_GROUPS:
        assert model.gauss_params[name].grad.device.type == "cpu"
        assert model.gauss_params[name].grad.abs().sum() > 0
    assert model.gauss_params["means"].grad.device.type == "cuda"
