"""A resume trains with the new run's optimizer settings and the checkpoint's moments."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import train

from splatfacto_dist.engine.checkpoint import continue_schedules, load_moments

SETTINGS = ("lr", "eps", "betas", "initial_lr", "weight_decay", "fused")


def _checkpoint(run: Path) -> dict:
    (path,) = (run / "nerfstudio_models").glob("step-*.ckpt")
    return torch.load(path, map_location="cpu")


def _hyperparameters(ckpt: dict) -> dict:
    """Per optimizer: its group settings but the scheduled lr; per scheduler: its base lrs."""
    out = {}
    for name, state in ckpt["optimizers"].items():
        (group,) = state["param_groups"]
        scheduled = name in ckpt["schedulers"]
        out[name] = {k: group.get(k) for k in SETTINGS if not (scheduled and k == "lr")}
    for name, state in ckpt["schedulers"].items():
        out[f"{name} scheduler"] = state["base_lrs"]
    return out


def test_resume_on_another_count_keeps_the_new_counts_hyperparameters(tmp_path, scene):
    """16 images on 2 ranks and on 1, then 4 more on the other count: every optimizer and scheduler
    setting equals that of the run that trained on that count from the start (Adam is scaled per
    images per step)."""
    first = {n: train(tmp_path / f"first{n}", scene, n, ["--max-num-iterations", "16"]) for n in (2, 1)}
    expected = {n: _hyperparameters(_checkpoint(run)) for n, run in first.items()}
    assert expected[1] != expected[2]  # the counts really differ in their settings
    for before, after in ((2, 1), (1, 2)):
        resumed = train(
            tmp_path / f"resumed{before}{after}",
            scene,
            after,
            ["--max-num-iterations", "4", "--load-dir", str(first[before] / "nerfstudio_models")],
        )
        resumed_ckpt = _checkpoint(resumed)
        assert _hyperparameters(resumed_ckpt) == expected[after]
        assert resumed_ckpt["step"] == 16 // after + 4 // after - 1  # continues at the same images seen
        last_epoch = {name: state["last_epoch"] for name, state in resumed_ckpt["schedulers"].items()}
        assert set(last_epoch.values()) == {resumed_ckpt["step"] + 1}


def test_load_moments_keeps_settings_and_takes_moments():
    param = torch.nn.Parameter(torch.ones(4))
    saving = torch.optim.Adam([param], lr=0.5, eps=1e-8, betas=(0.81, 0.998))
    param.grad = torch.arange(4.0)
    saving.step()
    saved = saving.state_dict()
    loading = torch.optim.Adam([param], lr=0.1, eps=1e-15, betas=(0.9, 0.999))
    load_moments(loading, saved)
    (group,) = loading.param_groups
    assert (group["lr"], group["eps"], group["betas"]) == (0.1, 1e-15, (0.9, 0.999))
    state = loading.state[param]
    assert torch.equal(state["exp_avg"], saved["state"][0]["exp_avg"])
    assert torch.equal(state["exp_avg_sq"], saved["state"][0]["exp_avg_sq"])
    assert float(state["step"]) == 1.0


def test_continue_schedules_puts_fresh_schedules_at_the_resumed_step():
    param = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.Adam([param], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    continue_schedules({"g": scheduler}, start=3)
    assert scheduler.last_epoch == 3
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.125)
    assert scheduler.base_lrs == [1.0]
