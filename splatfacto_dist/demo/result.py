"""How good the demo's model is: test PSNR / SSIM and a picture of every test view beside its ground truth.

Training ends with where its outputs are, which does not tell a new user whether it worked. This
reloads the final checkpoint in the demo's own process the way ns-eval does (`eval_setup`), so the
numbers and the picture come from what the stock tools will read, measured by the model's own
metrics (splatfacto's PSNR, SSIM, and LPIPS where its weights load). The record is also written as
JSON beside the run, for the test and for scripts, which should not parse console text.
"""

from __future__ import annotations

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

SUMMARY = "demo_summary.json"
PICTURE = "demo.png"


@dataclass
class DemoResult:
    """Means over the test views; `views` are their ground-truth files, in the picture's row order."""

    psnr: float
    ssim: float
    lpips: Optional[float]
    n_views: int
    png: str
    views: List[str]


def evaluate(run_dir: Path) -> DemoResult:
    """Render every test view of the run's final checkpoint; write `demo.png` (one row per view:
    ground truth | render) and `demo_summary.json` into `run_dir`."""
    with _held_back():  # loading repeats the training's start-up notes ("rank 0: trains on ...")
        _, pipeline, _, _ = eval_setup(run_dir / "config.yml", test_mode="test")
    model, dataset = pipeline.model, pipeline.datamanager.eval_dataset
    metrics, rows, views = [], [], []
    with torch.no_grad():
        for camera, batch in pipeline.datamanager.fixed_indices_eval_dataloader:
            view_metrics, images = model.get_image_metrics_and_images(model.get_outputs_for_camera(camera), batch)
            metrics.append(view_metrics)
            rows.append(images["img"].clamp(0, 1).cpu())  # splatfacto's [ground truth | render]
            views.append(str(dataset.image_filenames[batch["image_idx"]]))
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
    )
    (run_dir / SUMMARY).write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


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
