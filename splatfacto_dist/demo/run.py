"""`splatfacto-dist-demo`: the whole product on the embedded scene, on whatever this machine has.

Generates the scene (first run only), trains splatfacto-dist on all GPUs, or in 2 gloo processes
on a CPU-only machine, and ends with the result: test PSNR / SSIM, a picture of the test views beside
their ground truth (demo_result), where the outputs are and the ns-export command.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch
from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig
from nerfstudio.utils.rich_utils import CONSOLE

from splatfacto_dist.demo.result import PICTURE_SCALE, SUMMARY, evaluate
from splatfacto_dist.launching.launch import main as train_main
from splatfacto_dist.method import splatfacto_dist_config
from splatfacto_dist.scenes.scene import picture_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("outputs/splatfacto-dist-demo"))
    parser.add_argument("--images", type=int, default=None, help="training budget in images")
    args = parser.parse_args()
    scene = args.out / "scene"
    dataparser = ColmapDataParserConfig()  # held-out views: every eval_interval-th, from the first
    assert dataparser.eval_mode == "interval", dataparser.eval_mode
    if not (scene / "colmap").exists() or not (scene / picture_dir(PICTURE_SCALE)).exists():
        # Rendered in a child process: this one forks the CPU ranks later, and a process that has
        # already run torch's OpenMP thread pool cannot be forked safely. The held-out views are
        # also rendered PICTURE_SCALE times larger (320x240), for the result's picture only.
        generate = [sys.executable, "-m", "splatfacto_dist.scenes.scene", str(scene)]
        larger = ["--picture-scale", str(PICTURE_SCALE), "--picture-every", str(dataparser.eval_interval)]
        subprocess.run([*generate, *larger], check=True)
    CONSOLE.log(f"embedded scene: {scene}")

    gpus = torch.cuda.device_count()
    config = splatfacto_dist_config()
    config.machine.device_type = "cuda" if gpus else "cpu"
    config.machine.num_devices = gpus or 2
    config.data = scene
    config.pipeline.datamanager.dataparser = dataparser
    config.output_dir = args.out
    config.experiment_name = "demo"
    config.vis = "tensorboard"
    config.max_num_iterations = args.images or (30000 if gpus else 1200)
    # The test views are evaluated once, after training, from the saved checkpoint (demo_result).
    config.steps_per_eval_image = config.steps_per_eval_all_images = 0
    model = config.pipeline.model
    # No screen-size splits: splatfacto splits every Gaussian wider than 5% of the image until 4,000
    # images, and on the scene's 80x60 images that is nearly all of them (4 pixels), so the model
    # doubles at every refine (millions of Gaussians, seconds per step, before 3,000 images).
    model.stop_screen_size_at = 0
    if not gpus:  # a tiny CPU schedule: refine every 64 images after 128, and full resolution from
        # the start (stock's coarse-to-fine schedule counts 3,000 images per level: 1,200 images
        # would end trained at 1/4 of it and render blurred at full size)
        model.warmup_length, model.refine_every = 128, 64
        model.sh_degree_interval, model.num_downscales = 300, 0
    train_main(config)
    run_dir = config.get_base_dir()
    result = evaluate(run_dir)
    lpips = f", LPIPS {result.lpips:.3f}" if result.lpips is not None else ""
    for line in (
        f"\n[bold green]test views ({result.n_views}):[/bold green] PSNR {result.psnr:.2f} dB, SSIM {result.ssim:.3f}{lpips}",
        f"[bold green]picture:[/bold green] {result.png} (each row: ground truth | render, "
        f"{result.picture_scale}x the training size)",
        f"[bold green]outputs:[/bold green] {run_dir} (summary: {SUMMARY})",
        f"[bold green]export:[/bold green] ns-export gaussian-splat --load-config {run_dir / 'config.yml'} "
        f"--output-dir {run_dir / 'export'}",
    ):
        CONSOLE.print(line, soft_wrap=True)  # paths unbroken, to copy


if __name__ == "__main__":
    main()
