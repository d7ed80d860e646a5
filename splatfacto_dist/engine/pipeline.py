"""DistPipeline: nerfstudio's VanillaPipeline without the DDP wrapper, with distributed eval.

DDP registers hooks on the Parameters it sees at construction; gsplat's densification replaces
every Gaussian Parameter, after which DDP silently stops averaging their gradients. Gradients are
averaged by the trainer instead (comm.average_gradients), so the base class is built as if
single-process and the data side reads the global rank from torch.distributed itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Type

import torch
import torchvision.utils as vutils
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils import profiler
from torch.cuda.amp.grad_scaler import GradScaler

from splatfacto_dist import comm
from splatfacto_dist.data.datamanager import ConfigError, stack_images
from splatfacto_dist.reporting.profiling import PHASES


@dataclass
class DistPipelineConfig(VanillaPipelineConfig):
    _target: Type = field(default_factory=lambda: DistPipeline)


class DistPipeline(VanillaPipeline):
    """One replica of the model per rank, started from rank 0's exact state."""

    def __init__(
        self,
        config: DistPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Optional[GradScaler] = None,
    ) -> None:
        super().__init__(
            config, device, test_mode=test_mode, world_size=1, local_rank=local_rank, grad_scaler=grad_scaler
        )
        self.world_size = world_size
        self._refuse_mixed_sizes_in_sharded_batches()
        self._start_alike()

    def _start_alike(self) -> None:
        """Every rank starts from rank 0's exact replicated state; split Gaussian groups were drawn
        identically everywhere and cut to each rank's rows, so they are not sent."""
        split = self.model.layout.split_groups
        shared = [
            p for name, p in self.model.named_parameters()
            if not (name.startswith("gauss_params.") and name.split(".")[1] in split)
        ]  # fmt: skip
        comm.broadcast_tensors(shared + list(self.model.buffers()))

    def _refuse_mixed_sizes_in_sharded_batches(self) -> None:
        """A sharded step exchanges Gaussians once per render, so every rank must render its batch at
        once; a batch of several image sizes renders once per size. Known only once data is read."""
        if not self.model.layout.sharded or self.datamanager.config.cameras_per_rank == 1:
            return
        cameras = self.datamanager.train_dataset.cameras
        sizes = set(zip(cameras.width.flatten().tolist(), cameras.height.flatten().tolist()))
        if len(sizes) > 1:
            raise ConfigError(
                f"--pipeline.model.gaussian-layout sharded with --pipeline.datamanager.cameras-per-rank > 1 needs one "
                f"image size; this data has {len(sizes)}: use cameras-per-rank 1"
            )

    @profiler.time_function
    def get_train_loss_dict(self, step: int):
        with PHASES.phase("data"):
            cameras, batch = self.datamanager.next_train(step)
        with PHASES.phase("render+loss"):
            if isinstance(batch["image"], list):
                return self._loss_by_image_size(cameras, batch)
            outputs = self.model(cameras)
            batch = self.model.ground_truth_for(outputs, batch)
            metrics_dict = self.model.get_metrics_dict(outputs, batch)
            loss_dict = self.model.get_loss_dict(outputs, batch, metrics_dict)
        return outputs, loss_dict, metrics_dict

    def _loss_by_image_size(self, cameras, batch: Dict[str, list]):
        """Render each image size of a mixed batch separately; weight losses and metrics by image count.

        The loss stays the mean over all n images, so each render's densification statistics are
        normalized by n (`views_in_loss`), as if the whole batch had been rendered at once.
        """
        n = len(batch["image"])
        groups: Dict[tuple, List[int]] = {}
        for i, image in enumerate(batch["image"]):
            groups.setdefault(tuple(image.shape[:2]), []).append(i)
        cam_idx = cameras.metadata["cam_idx"]
        loss_dict: Dict[str, torch.Tensor] = {}
        metrics_dict: Dict[str, torch.Tensor] = {}
        for (height, width), members in groups.items():
            group = cameras[torch.tensor(members, device=cameras.device)]
            ids = [cam_idx[i] for i in members]
            group.metadata = {
                "cam_idx": ids[0] if len(ids) == 1 else ids,
                "image_size": (width, height),
                "batch_positions": members,
                "batch_size": n,
            }
            sub = {key: stack_images([values[i] for i in members]) for key, values in batch.items()}
            outputs = self.model(group)
            self.model.info["views_in_loss"] = n
            weight = len(members) / n
            metrics = self.model.get_metrics_dict(outputs, sub)
            for target, values in (
                (loss_dict, self.model.get_loss_dict(outputs, sub, metrics)),
                (metrics_dict, metrics),
            ):
                for key, value in values.items():
                    target[key] = target.get(key, 0) + weight * value
        return outputs, loss_dict, metrics_dict

    @profiler.time_function
    @torch.no_grad()
    def get_average_eval_image_metrics(
        self, step: Optional[int] = None, output_path: Optional[Path] = None, get_std: bool = False
    ) -> Dict[str, float]:
        """Exact means (and stds) over the whole eval set; each rank renders its own share."""
        self.eval()
        local: List[Dict[str, float]] = []
        if output_path is not None:
            output_path.mkdir(exist_ok=True, parents=True)
        views = self.datamanager.fixed_indices_eval_dataloader
        # Sharded, every render needs every rank: ranks with fewer eval images serve the others.
        rounds = max(comm.all_gather_ints(len(views))) if self.model.layout.sharded else len(views)
        for i in range(rounds):
            if i >= len(views):
                self.model.serve_render()
                continue
            camera, batch = views[i]
            start = time.perf_counter()
            outputs = self.model.get_outputs_for_camera(camera=camera)
            metrics, images = self.model.get_image_metrics_and_images(outputs, batch)
            elapsed = max(time.perf_counter() - start, 1e-9)
            pixels = int(camera.height.item() * camera.width.item())
            metrics["num_rays_per_sec"] = pixels / elapsed
            metrics["fps"] = 1.0 / elapsed
            local.append(metrics)
            if output_path is not None:
                for key, image in images.items():
                    vutils.save_image(
                        image.permute(2, 0, 1).cpu(), output_path / f"eval_{key}_{batch['image_idx']:04d}.png"
                    )
        gathered = [m for part in comm.all_gather_objects(local) for m in part]
        self.train()
        result: Dict[str, float] = {}
        for key in gathered[0]:
            values = torch.tensor([m[key] for m in gathered], dtype=torch.float64)
            result[key] = float(values.mean())
            if get_std:
                result[f"{key}_std"] = float(values.std()) if len(values) > 1 else 0.0
        return result
