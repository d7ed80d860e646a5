"""The `splatfacto-dist` method for nerfstudio's registry (wiring only).

The optimizer and schedule settings are splatfacto's; read as image counts, they mean the same
training on any number of GPUs (see scaling.py).
"""

from __future__ import annotations

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.plugins.types import MethodSpecification

from splatfacto_dist.data.datamanager import ShardedFullImageDatamanagerConfig
from splatfacto_dist.engine.pipeline import DistPipelineConfig
from splatfacto_dist.engine.trainer import DistTrainerConfig
from splatfacto_dist.models.model import SplatfactoDistModelConfig


def _adam(lr: float) -> AdamOptimizerConfig:
    return AdamOptimizerConfig(lr=lr, eps=1e-15)


def splatfacto_dist_config(big: bool = False) -> DistTrainerConfig:
    """A fresh config equal to stock splatfacto's (`big`: stock splatfacto-big's), on the distributed
    pipeline. The differences of splatfacto-big are written out here rather than read from
    nerfstudio's method table, whose import builds every installed method (seconds per rank)."""
    return DistTrainerConfig(
        method_name="splatfacto-dist-big" if big else "splatfacto-dist",  # nerfstudio's registry key
        steps_per_eval_image=100,
        steps_per_eval_batch=0,
        steps_per_save=2000,
        steps_per_eval_all_images=1000,
        max_num_iterations=30000,
        mixed_precision=False,
        pipeline=DistPipelineConfig(
            datamanager=ShardedFullImageDatamanagerConfig(
                dataparser=NerfstudioDataParserConfig(load_3D_points=True),
                cache_images_type="uint8",
            ),
            model=SplatfactoDistModelConfig(cull_alpha_thresh=0.005, densify_grad_thresh=0.0005)
            if big
            else SplatfactoDistModelConfig(),
        ),
        optimizers={
            "means": {
                "optimizer": _adam(1.6e-4),
                "scheduler": ExponentialDecaySchedulerConfig(lr_final=1.6e-6, max_steps=30000),
            },
            "features_dc": {"optimizer": _adam(0.0025), "scheduler": None},
            "features_rest": {"optimizer": _adam(0.0025 / 20), "scheduler": None},
            "opacities": {"optimizer": _adam(0.05), "scheduler": None},
            "scales": {"optimizer": _adam(0.005), "scheduler": None},
            "quats": {"optimizer": _adam(0.001), "scheduler": None},
            "camera_opt": {
                "optimizer": _adam(1e-4),
                "scheduler": ExponentialDecaySchedulerConfig(
                    lr_final=5e-7, max_steps=30000, warmup_steps=1000, lr_pre_warmup=0
                ),
            },
            "bilateral_grid": {
                "optimizer": _adam(5e-3 if big else 2e-3),
                "scheduler": ExponentialDecaySchedulerConfig(
                    lr_final=1e-4, max_steps=30000, warmup_steps=1000, lr_pre_warmup=0
                ),
            },
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


splatfacto_dist = MethodSpecification(
    config=splatfacto_dist_config(),
    description="Splatfacto on many GPUs/processes: same quality, one image budget, N times faster.",
)

splatfacto_dist_big = MethodSpecification(
    config=splatfacto_dist_config(big=True),
    description="splatfacto-big's settings (more Gaussians, finer densification) on many GPUs/processes.",
)
