"""How good the demo's model is: test PSNR / SSIM and a picture of every test view beside its ground truth.

Training ends with where its outputs are, which does not tell a new user whether it worked. This
reloads the final checkpoint in the demo's own process the way ns-eval does (`eval_setup`), so the
numbers and the picture come from what the stock tools will read, measured by the model's own
metrics (splatfacto's PSNR, SSIM, and LPIPS where its weights load). The record is also written as
JSON beside the run, for the test and for scripts, which should not parse console text.

The metrics are measured at the training size (the scene's 80x60), as ns-eval measures them. The
picture shows each view `PICTURE_SCALE` times larger (320x240): the scene's ground truth rendered at
that size (`scenes.scene.generate_scene`'s `picture_scale`) beside the model's render of the same
camera at that size (its intrinsics scaled), so what was trained can be seen; nothing is upscaled.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np
import torch
from nerfstudio.utils.eval_utils import eval_setup
from nerfstudio.utils.rich_utils import CONSOLE
from PIL import Image

from splatfacto_dist.scenes.scene import picture_dir

PICTURE_SCALE = 4  # the picture's views: 320x240 for the scene's 80x60
SUMMARY = "demo_summary.json"
PICTURE = "demo.png"


@dataclass
class DemoResult:
    """Means over the test views; `views` are their ground-truth files, in the picture's row order, and
    `picture_views` the same views `picture_scale` times larger, as the picture shows them."""

    psnr: float
    ssim: float
    lpips: Optional[float]
    n_views: int
    png: str
    views: List[str]
    picture_scale: int
    picture_views: List[str]


def evaluate(run_dir: Path, picture_scale: int = PICTURE_SCALE) -> DemoResult:
    """Render every test view of the run's final checkpoint; write `demo.png` (one row per view:
    ground truth | render, `picture_scale` times the training size) and `demo_summary.json` into
    `run_dir`. The scene must hold its views at that size (`picture_dir`)."""
    with _held_back():  # loading repeats the training's start-up notes ("rank 0: trains on ...")
        _, pipeline, _, _ = eval_setup(run_dir / "config.yml", test_mode="test")
    model, dataset = pipeline.model, pipeline.datamanager.eval_dataset
    metrics, rows, views, picture_views = [], [], [], []
    with torch.no_grad():
        for camera, batch in pipeline.datamanager.fixed_indices_eval_dataloader:
            view_metrics, _ = model.get_image_metrics_and_images(model.get_outputs_for_camera(camera), batch)
            metrics.append(view_metrics)
            view = Path(dataset.image_filenames[batch["image_idx"]])
            large = view.parent.parent / picture_dir(picture_scale) / view.name
            if not large.exists():
                raise FileNotFoundError(f"{large}: the scene's view at {picture_scale}x its size, for the picture")
            truth = torch.from_numpy(np.asarray(Image.open(large).convert("RGB"), dtype=np.float32) / 255)
            rows.append(torch.cat([truth, _render(model, camera, picture_scale)], dim=1))
            views.append(str(view))
            picture_views.append(str(large))
    png = run_dir / PICTURE
    Image.fromarray((torch.cat(rows).numpy() * 255).round().astype(np.uint8)).save(png)

    def mean(key: str) -> float:
        values = [m.get(key, math.nan) for m in metrics]  # the model leaves out LPIPS where it is unavailable
        return float(np.mean(values))

    lpips = mean("lpips")
    result = DemoResult(
        psnr=mean("psnr"),
        ssim=mean("ssim"),
        lpips=None if math.isnan(lpips) else lpips,
        n_views=len(views),
        png=str(png),
        views=views,
        picture_scale=picture_scale,
        picture_views=picture_views,
    )
    (run_dir / SUMMARY).write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


def _render(model: torch.nn.Module, camera, scale: int) -> torch.Tensor:
    """The model's [H, W, 3] render of `camera` at `scale` times its size (focal lengths and principal
    point scaled with it), on the CPU."""
    camera = copy.deepcopy(camera)
    if camera.metadata:
        camera.metadata.pop("image_size", None)  # a size carried with the camera would win over its own
    camera.rescale_output_resolution(scale)
    rgb = model.get_outputs_for_camera(camera)["rgb"]
    expected = (int(camera.height[0]), int(camera.width[0]), 3)
    assert tuple(rgb.shape) == expected, (tuple(rgb.shape), expected)
    return rgb.clamp(0, 1).cpu()


@contextmanager
def _held_back() -> Iterator[None]:
    """nerfstudio's console output of a block, shown only if the block fails (its errors print, then exit)."""
    capture = CONSOLE.capture()
    try:
        with capture:
            yield
    except BaseException:
        sys.stdout.write(capture.get())
        raise
