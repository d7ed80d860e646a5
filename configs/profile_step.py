"""Where a training step's GPU time goes: stock splatfacto against splatfacto-dist, same Gaussians.

Builds both trainers in this process on one GPU at full resolution, gives splatfacto-dist the
stock model's initial Gaussians, runs --warmup steps of each (before any densification), then
times --steps steps and profiles them with torch.profiler, printing the CUDA kernels by total time.
Usage (GPU machine, LPIPS stubbed): PYTHONPATH=configs/lpips_stub python configs/profile_step.py DATA [DATAPARSER]
"""

from __future__ import annotations

import sys
import tempfile
import time

import torch
import tyro
from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion
from nerfstudio.engine.callbacks import TrainingCallbackLocation
from torch.profiler import ProfilerActivity, profile


def build(method: str, data: str, parser: str):
    args = [
        method,
        "--vis",
        "tensorboard",
        "--output-dir",
        tempfile.mkdtemp(),
        "--pipeline.model.num-downscales",
        "0",
        "--max-num-iterations",
        "100000",
        parser,
        "--data",
        data,
    ]
    config = tyro.cli(AnnotatedBaseConfigUnion, args=args)
    config.set_timestamp()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def step(trainer, s: int) -> None:
    trainer.pipeline.train()
    for callback in trainer.callbacks:
        callback.run_callback_at_location(s, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
    trainer.train_iteration(s)
    for callback in trainer.callbacks:
        callback.run_callback_at_location(s, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)


def measure(name: str, trainer, warmup: int, steps: int) -> None:
    for s in range(warmup):
        step(trainer, s)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for s in range(warmup, warmup + steps):
        step(trainer, s)
    torch.cuda.synchronize()
    ms = 1000 * (time.perf_counter() - start) / steps
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for s in range(warmup + steps, warmup + 2 * steps):
            step(trainer, s)
        torch.cuda.synchronize()
    n = trainer.pipeline.model.num_points
    print(f"\n=== {name}: {ms:.2f} ms/step over {steps} steps, {n} Gaussians ===")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))


def main() -> None:
    data = sys.argv[1]
    parser = sys.argv[2] if len(sys.argv) > 2 else "nerfstudio-data"
    warmup, steps = 300, 50
    stock = build("splatfacto", data, parser)
    dist = build("splatfacto-dist", data, parser)
    with torch.no_grad():
        for name, param in dist.pipeline.model.gauss_params.items():
            param.data = stock.pipeline.model.gauss_params[name].detach().clone().contiguous()
    measure("splatfacto-dist", dist, warmup, steps)
    measure("stock splatfacto", stock, warmup, steps)


if __name__ == "__main__":
    main()
