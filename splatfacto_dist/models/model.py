"""SplatfactoDistModel: splatfacto that runs on any device, renders camera batches, and keeps
every random draw that changes the model identical on all ranks.

It stays a `SplatfactoModel` so ns-export, ns-eval and the viewer keep their special cases.
What changes and why:
- initial Gaussians come from a seeded generator, are created contiguous and device-agnostic
  (stock calls `.cuda()` and leaves `features_dc`/`features_rest` as strided views);
- rendering goes through the layout (raster.py: gsplat on CUDA, the PyTorch reference on CPU) and
  accepts C same-sized cameras at once; losses are means over those C images;
- the random background of each rendered image is drawn from a per-step seed for the global
  batch, so rank r's images get the colours a single process would give the same images;
- densification uses `SynchronizedDefaultStrategy`; LPIPS is built lazily (see metrics.py).
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Type, Union

import numpy as np
import torch
import torch.nn.functional as F
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.configs.base_config import MachineConfig
from nerfstudio.model_components.lib_bilagrid import BilateralGrid, color_correct, total_variation_loss
from nerfstudio.models.splatfacto import RGB2SH, SplatfactoModel, SplatfactoModelConfig, num_sh_bases
from nerfstudio.utils.colors import get_color
from pytorch_msssim import SSIM
from torchmetrics.image import PeakSignalNoiseRatio

from splatfacto_dist import comm
from splatfacto_dist.data.datamanager import ConfigError
from splatfacto_dist.densify.strategy import SynchronizedDefaultStrategy
from splatfacto_dist.engine.viewer_renders import ViewerRenders
from splatfacto_dist.launching import memcap
from splatfacto_dist.layouts.contract import GAUSSIAN_NAMES, GaussianLayout
from splatfacto_dist.layouts.replicated import ReplicatedLayout
from splatfacto_dist.layouts.sharded import ShardedLayout
from splatfacto_dist.layouts.sharded.ranges import held_rows
from splatfacto_dist.models import loss_by_range
from splatfacto_dist.models.metrics import LazyLPIPS
from splatfacto_dist.offload.budget import fit_refusal, host_refusal
from splatfacto_dist.offload.working_set import HOST_GROUPS
from splatfacto_dist.render.ssim import LossSSIM


@dataclass
class SplatfactoDistModelConfig(SplatfactoModelConfig):
    """Splatfacto for several GPUs or processes; every splatfacto option keeps its meaning."""

    _target: Type = field(default_factory=lambda: SplatfactoDistModel)
    seed: Optional[int] = None
    """Seed of every random draw that changes the model (initial Gaussians, training backgrounds,
    split samples), the same on all ranks (nerfstudio seeds its global generators with seed + rank).
    Default: --machine.seed."""
    gaussian_layout: Literal["replicated", "sharded"] = "replicated"
    """Where the Gaussians live: 'replicated' (every rank holds all) or 'sharded' (each rank owns 1/N
    with its optimizer state, so the scene can be N times larger)."""
    pixel_ranges: Optional[bool] = None
    """The sharded layout on several ranks: every image is rendered by all ranks, one image after
    another, each rank a range of its 16x16 tiles cut where the Gaussians touching them balance, so
    a rank holds ~1/N of one image's Gaussians at a time. False: each image is rendered whole by its own
    rank (one exchange per step; more memory where an image sees much of the model). Default: on
    when sharded; the replicated layout renders whole images (each rank holds the whole model)."""
    images_per_step: int = 1
    """Images rendered per step across all ranks. The job's config sets it (engine/job_config.py) when
    the schedule counts images; it sizes the pause after an opacity reset (one pass over the cameras)."""
    offload: bool = False
    """Keep each Gaussian's colour (its 48 SH coefficients), their gradient and Adam state in host
    memory; the GPU keeps the 11 floats culling and projection need (position, scale, rotation,
    opacity) with theirs, ~200 B per Gaussian instead of ~950 B. Each render finds its cameras'
    visible Gaussians on the GPU and brings only their colours over, and their gradients back; the
    colours' Adam runs on the host over every Gaussian (the same training as without offload).
    Either layout; replicated only on one rank (sharded divides what each rank offloads)."""
    offload_adam: Literal["dense", "sparse"] = "dense"
    """With --pipeline.model.offload: 'dense' steps every Gaussian's colour every step (the training
    of an on-GPU run, with a pass over every host row per step); 'sparse' only the colours a camera
    of the step saw (torch's SparseAdam: unseen rows keep their moments), a different optimizer
    that costs host work only for the visible rows."""
    fused_ssim: bool = True
    """The SSIM loss by a fused Triton kernel on CUDA (stock's pytorch_msssim value and gradient to
    float tolerance, several times faster); the CPU, or a machine where it does not compile, uses
    pytorch_msssim. Evaluation SSIM is stock's either way."""


def psnr(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """torchmetrics' PeakSignalNoiseRatio(data_range=1.0) of one call, with nothing copied to the GPU."""
    return -10 * torch.log10(torch.mean((pred - gt) ** 2))


def intrinsics(camera: Cameras, scale: int) -> torch.Tensor:
    """[C, 3, 3] intrinsics of `camera` rendered `scale` times smaller: stock's
    `rescale_output_resolution` and `get_intrinsics_matrices`, which build K on the CPU from the
    cameras' tensors (one wait for the GPU per entry), made where the cameras are."""
    fx, fy, cx, cy = (value[..., 0] * (1 / scale) for value in (camera.fx, camera.fy, camera.cx, camera.cy))
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    return torch.stack([fx, zero, cx, zero, fy, cy, zero, zero, one], dim=-1).reshape(*fx.shape, 3, 3)


def _random_quats(n: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform random unit quaternions (Shoemake), from `generator`."""
    u, v, w = torch.rand(3, n, generator=generator)
    return torch.stack(
        [
            torch.sqrt(1 - u) * torch.sin(2 * math.pi * v),
            torch.sqrt(1 - u) * torch.cos(2 * math.pi * v),
            torch.sqrt(u) * torch.sin(2 * math.pi * w),
            torch.sqrt(u) * torch.cos(2 * math.pi * w),
        ],
        dim=-1,
    )


def nearest_distances(points: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    """[len(queries), k] distances from each query (itself one of `points`) to its k nearest other
    points: stock's `k_nearest_sklearn` distances, from a parallel k-d tree (sklearn's search is
    single-threaded, ~3 us per point: a minute at 20 M points)."""
    from scipy.spatial import cKDTree

    if len(points) <= k:
        raise ValueError(
            f"{len(points)} initial points: splatfacto sizes each from its {k} nearest, so it needs {k + 1}"
        )
    tree = cKDTree(points.numpy())
    distances, _ = tree.query(queries.numpy(), k=k + 1, workers=torch.get_num_threads())
    return torch.from_numpy(distances[:, 1:].astype(np.float32))


class SplatfactoDistModel(SplatfactoModel):
    """Splatfacto whose replicas stay identical across ranks (see module docstring)."""

    config: SplatfactoDistModelConfig

    def populate_modules(self) -> None:
        self.layout: GaussianLayout
        if self.config.gaussian_layout == "sharded":
            self.layout = ShardedLayout(pixel_ranges=self.config.pixel_ranges is not False, offload=self._offload)
        else:
            self.layout = ReplicatedLayout(offload=self._offload)
        self.viewer_renders = ViewerRenders()  # where the viewer's renders wait when every rank must serve them
        self._training_thread = threading.current_thread()  # the model is built on it
        gaussians, ids = self._initial_gaussians()
        self.refuse_unless_it_fits(gaussians)
        self.gauss_params = torch.nn.ParameterDict(
            {name: torch.nn.Parameter(value.contiguous()) for name, value in gaussians.items()}
        )
        self.camera_optimizer = self.config.camera_optimizer.setup(num_cameras=self.num_train_data, device="cpu")
        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = SSIM(data_range=1.0, size_average=True, channel=3)
        self.ssim_loss = LossSSIM(self.ssim, fused=self.config.fused_ssim)
        self.lpips = LazyLPIPS()
        self.step = 0
        self.crop_box = None
        if self.config.background_color == "random":
            self.background_color = torch.tensor([0.1490, 0.1647, 0.2157])  # viser's background
        else:
            self.background_color = get_color(self.config.background_color)
        if self.config.use_bilateral_grid:
            self.bil_grids = BilateralGrid(
                num=self.num_train_data,
                grid_X=self.config.grid_shape[0],
                grid_Y=self.config.grid_shape[1],
                grid_W=self.config.grid_shape[2],
            )
        self._background_generator: Optional[torch.Generator] = None
        self._step_infos: List[Dict] = []  # every training render of the current step
        self._infos_step = -1
        self.strategy = SynchronizedDefaultStrategy(
            prune_opa=self.config.cull_alpha_thresh,
            grow_grad2d=self.config.densify_grad_thresh,
            grow_scale3d=self.config.densify_size_thresh,
            grow_scale2d=self.config.split_screen_size,
            prune_scale3d=self.config.cull_scale_thresh,
            prune_scale2d=self.config.cull_screen_size,
            refine_scale2d_stop_iter=self.config.stop_screen_size_at,
            refine_start_iter=self.config.warmup_length,
            refine_stop_iter=self.config.stop_split_at,
            reset_every=self.config.reset_alpha_every * self.config.refine_every,
            refine_every=self.config.refine_every,
            pause_refine_after_reset=-(-self.num_train_data // self.config.images_per_step) + self.config.refine_every,
            absgrad=self.config.use_absgrad,
            revised_opacity=False,
            report_refines=comm.is_main(),
            seed=self.seed,
        )
        self.strategy_state = self.strategy.initialize_state(scene_scale=1.0)
        self.strategy_state["ids"] = ids

    def refuse_unless_it_fits(self, gaussians: Dict[str, torch.Tensor]) -> None:
        """Stop in one line, before any of them reaches the GPU, when the training state of this
        rank's `gaussians` (name -> rows: the initial draw, or a checkpoint's rows it resumes from)
        alone exceeds its GPU memory, or, offloaded, its colours' exceeds its share of host memory
        (offload/budget.py)."""
        owned = len(gaussians["means"])
        floats = sum(value[0].numel() for value in gaussians.values()) if owned else 0
        budget = memcap.gpu_budget(self.kwargs.get("device", "cpu"))
        error = None if budget is None else fit_refusal(owned, budget[0], floats, self.config.offload, budget[1])
        host = memcap.host_budget() if self.config.offload and error is None else None
        error = error or (None if host is None else host_refusal(owned, host[0], floats, host[1]))
        if error:
            raise ConfigError(error)

    @contextlib.contextmanager
    def _host_groups_apart(self) -> Iterator[Dict[str, torch.nn.Parameter]]:
        """Offloaded, the host groups (`offload.HOST_GROUPS`) taken out of `gauss_params` for the
        block, then put back in splatfacto's order: a `.to(device)` or a load's resize, which
        treat every parameter alike, would otherwise put them on the GPU, if only for a moment."""
        held = {name: self.gauss_params.pop(name) for name in HOST_GROUPS} if self.config.offload else {}
        try:
            yield held
        finally:
            if held:
                params = {**dict(self.gauss_params.items()), **held}
                self.gauss_params = torch.nn.ParameterDict({name: params[name] for name in GAUSSIAN_NAMES})

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        """Every parameter and buffer converted by `fn` (`.to(device)`), but the offloaded colours."""
        if "gauss_params" not in self._modules:  # during construction
            return super()._apply(fn, recurse)
        with self._host_groups_apart():
            return super()._apply(fn, recurse)

    def load_state_dict(self, state_dict, **kwargs):  # type: ignore[override]
        """Stock's load (it resizes the Gaussians to the checkpoint's); alone (ns-eval, ns-export, a
        1-process run) the loaded Gaussians are the whole model, whose count the layout keeps.
        Offloaded, the colours are loaded straight into host memory."""
        state_dict = dict(state_dict)
        if "means" in state_dict:  # stock's older key names, which its load maps
            state_dict.update({f"gauss_params.{name}": state_dict.pop(name) for name in GAUSSIAN_NAMES})
        with self._host_groups_apart() as held:
            for name in held:  # copies: a row range of a loaded whole model would keep all of it alive
                held[name] = torch.nn.Parameter(state_dict.pop(f"gauss_params.{name}").detach().cpu().clone())
            result = super().load_state_dict(state_dict, **kwargs)
        if not comm.is_distributed():
            self.layout.hold(self.num_points)
        return result

    def load_strategy_state(self, ids: torch.Tensor, statistics: Dict[str, torch.Tensor]) -> None:
        """A loaded checkpoint's Gaussian ids (this rank's rows), which key their random draws, and its
        densification statistics since the last refine (none in older or stock checkpoints)."""
        self.strategy_state["ids"] = ids.to(self.device)
        for key, value in statistics.items():
            self.strategy_state[key] = value.to(self.device)

    @property
    def _offload(self) -> Optional[str]:
        """The host Adam of the offloaded colours ("dense" or "sparse"), None without offload."""
        return self.config.offload_adam if self.config.offload else None

    @property
    def seed(self) -> int:
        """The model's seed. The job's config sets it from --machine.seed; a model built without one
        (ns-eval, ns-export) takes nerfstudio's default seed, and a checkpoint then replaces all it drew."""
        return MachineConfig().seed if self.config.seed is None else self.config.seed

    def _initial_gaussians(self) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """This rank's rows of the initial Gaussians, and their ids. Every draw is made for the whole
        model, so a row's values do not depend on the rank count; only the neighbour search, the
        costly part, is limited to this rank's rows."""
        generator = torch.Generator().manual_seed(self.seed)
        use_points = self.seed_points is not None and not self.config.random_init
        if use_points:
            means = self.seed_points[0].float()  # type: ignore[index]
        else:
            means = (torch.rand((self.config.num_random, 3), generator=generator) - 0.5) * self.config.random_scale
        n = means.shape[0]
        rows = self.layout.hold(n)
        distances = nearest_distances(means, means[rows], 3)
        scales = torch.log(distances.mean(dim=-1, keepdim=True).repeat(1, 3))
        dim_sh = num_sh_bases(self.config.sh_degree)
        if use_points and self.seed_points[1].shape[0] > 0:  # type: ignore[index]
            rgb = self.seed_points[1].float() / 255  # type: ignore[index]
            features_dc = RGB2SH(rgb) if self.config.sh_degree > 0 else torch.logit(rgb, eps=1e-10)
        else:
            features_dc = torch.rand((n, 3), generator=generator)
        gaussians = {
            "means": means[rows],
            "scales": scales,
            "quats": _random_quats(n, generator)[rows],
            "features_dc": features_dc[rows],
            "features_rest": torch.zeros((len(scales), dim_sh - 1, 3)),
            "opacities": torch.logit(0.1 * torch.ones(len(scales), 1)),
        }
        return gaussians, torch.arange(n, dtype=torch.int64)[rows]

    def _camera_to_worlds(self, camera: Cameras) -> torch.Tensor:
        """Camera poses with the learned pose corrections of training cameras applied."""
        if not self.training or self.camera_optimizer.config.mode == "off":
            return camera.camera_to_worlds
        idx = (camera.metadata or {}).get("cam_idx")
        if not isinstance(idx, list):
            return self.camera_optimizer.apply_to_camera(camera)
        poses = []
        for i, cam_idx in enumerate(idx):
            single = camera[i : i + 1]
            single.metadata = {"cam_idx": cam_idx}
            poses.append(self.camera_optimizer.apply_to_camera(single))
        return torch.cat(poses)

    def _training_backgrounds(
        self, n: int, positions: Optional[Sequence[int]] = None, batch_size: Optional[int] = None
    ) -> torch.Tensor:
        """[n, 3] backgrounds for this rank's images: their rows of one draw for the global batch.

        A batch of mixed image sizes is rendered in groups; `positions` are the group's places in
        this rank's batch of `batch_size` images, so each image keeps its own row of the step's one
        draw instead of every group re-drawing the same first rows.
        """
        if self.config.background_color != "random":
            return self._get_background_color().expand(n, 3)
        batch_size = batch_size or n
        mine = self._background_draw(batch_size)[comm.rank() * batch_size : (comm.rank() + 1) * batch_size]
        if positions is None:
            return mine
        return torch.cat([mine[p : p + 1] for p in positions])  # slices: an index list would be a host copy

    def _every_background(self, counts: List[int]) -> torch.Tensor:
        """[sum(counts), 3]: the training backgrounds of every rank's images in rank order, each rank's
        as it draws them (`_training_backgrounds` of its `counts[r]` images)."""
        if self.config.background_color != "random":
            return self._get_background_color().expand(sum(counts), 3)
        draws = {n: self._background_draw(n) for n in set(counts)}
        return torch.cat([draws[n][r * n : (r + 1) * n] for r, n in enumerate(counts)])

    def _background_draw(self, batch_size: int) -> torch.Tensor:
        """[world size * batch_size, 3]: the step's one draw of backgrounds, the same on every rank."""
        if self._background_generator is None or self._background_generator.device != self.device:
            self._background_generator = torch.Generator(device=self.device)
        self._background_generator.manual_seed(self.seed * 1_000_003 + self.step)
        return torch.rand((comm.world_size() * batch_size, 3), generator=self._background_generator, device=self.device)

    @property
    def _loss_by_range(self) -> bool:
        """Whether a training render in pixel ranges keeps its pixels in bands where they were rendered
        and each rank takes its bands' share of the loss (`loss_by_range`). Not with a bilateral grid
        or colour-corrected metrics, which read a whole image: their loss is taken on the camera's
        rank, as before loss by range."""
        return not (self.config.use_bilateral_grid or self.config.color_corrected_metrics)

    def _band_outputs(self, render: torch.Tensor, alpha: torch.Tensor, job) -> Dict[str, torch.Tensor]:
        """Training outputs of a render whose pixels stay in bands (`loss_by_range`): this rank's rows
        of every camera of the step, flat, composited over each one's background."""
        background = loss_by_range.background_rows(job, self._every_background(job.counts))
        rgb = torch.clamp(render[..., :3] + (1 - alpha) * background, 0.0, 1.0)
        return {"rgb": rgb, "accumulation": alpha, "background": background, "bands": job}  # type: ignore[dict-item]

    def ground_truth_for(
        self, outputs: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]
    ) -> Dict[str, torch.Tensor]:
        """The batch the loss of `outputs` reads: for bands (`loss_by_range`), the rows of every camera's
        image and mask this rank's bands hold, sent by the cameras' ranks at the training resolution
        (as cached, uint8 or float, when no downscale applies: a quarter of the bytes), then made
        float here; otherwise `batch` itself."""
        if "bands" not in outputs:
            return batch
        job = outputs["bands"]
        image = batch["image"].to(self.device)
        if self._get_downscale_factor() > 1:
            image = self.get_gt_img(image)
        rows = torch.cat(held_rows(job, image.reshape(-1, *self.last_size, image.shape[-1])))
        held = {"image": rows.float() / 255.0 if rows.dtype == torch.uint8 else rows}
        if "mask" in batch:
            mask = self._downscale_if_required(batch["mask"]).to(self.device).float()
            held["mask"] = torch.cat(held_rows(job, mask.reshape(-1, *self.last_size, mask.shape[-1])))
        return held

    @staticmethod
    def _render_size(camera: Cameras, scale: int) -> Tuple[int, int]:
        """(W, H) of the (rescaled) cameras. Training batches carry their size from the datamanager,
        because reading it off device tensors would stall the host on every step."""
        size = (camera.metadata or {}).get("image_size")
        if size is not None:
            return size[0] // scale, size[1] // scale
        W, H = int(camera.width[0].item()), int(camera.height[0].item())
        assert bool((camera.width == W).all() and (camera.height == H).all()), "a rendered batch must share one size"
        return W, H

    @staticmethod
    def _viewmats(camera_to_worlds: torch.Tensor) -> torch.Tensor:
        """World-to-camera matrices in gsplat's (OpenCV) axes from nerfstudio's (OpenGL) poses.

        -R^T T is summed by hand, not by `torch.bmm`: a CUDA matmul makes cuBLAS take its workspace
        (32 MiB on Hopper) from the caching allocator for the life of the process, bytes that do not
        divide with the ranks (`raster.camera_centres` says the same)."""
        R = torch.cat([camera_to_worlds[:, :3, :1], -camera_to_worlds[:, :3, 1:3]], dim=2)  # y and z flipped
        T = camera_to_worlds[:, :3, 3]
        R_inv = R.transpose(1, 2)
        viewmats = torch.zeros(R.shape[0], 4, 4, device=R.device, dtype=R.dtype)
        viewmats[:, 3, 3] = 1.0
        viewmats[:, :3, :3] = R_inv
        viewmats[:, :3, 3] = -(R_inv * T[:, None, :]).sum(-1)
        return viewmats

    def _gaussian_rows(self) -> Tuple[Dict[str, torch.Tensor], Optional[int]]:
        """The parameters the rasterizer's inputs are made of (SH cut to the active degree), and that
        degree. The layout activates them (`raster.activate`) where it needs them: a sharded owner once per
        camera, each recomputed in backward rather than kept."""
        params = self.gauss_params
        rows = {name: params[name] for name in ("means", "quats", "scales", "opacities", "features_dc")}
        sh_degree: Optional[int] = None
        if self.config.sh_degree > 0:
            sh_degree = min(self.step // self.config.sh_degree_interval, self.config.sh_degree)
            rest = params["features_rest"]
            # The whole parameter once every degree is active: a slice's backward would allocate a
            # zeroed copy of its gradient (45 floats per Gaussian) at every step. Offloaded, always the
            # whole parameter (its rows are fetched whole; a sparse gradient cannot reach it through a
            # view): the rasterizer reads the first coefficients of `sh_degree` and leaves the others
            # a zero gradient.
            active = (sh_degree + 1) ** 2 - 1
            whole = active == rest.shape[1] or self.config.offload
            rows["features_rest"] = rest if whole else rest[:, :active]
        return rows, sh_degree

    def get_outputs(self, camera: Cameras) -> Dict[str, Union[torch.Tensor, List]]:
        """Render C same-sized cameras; outputs are [C, H, W, .] (stock shapes when C == 1).

        Called from the viewer's thread, the render is handed to the training thread, where (in
        sharded mode) every rank takes part in it."""
        if not isinstance(camera, Cameras):
            return {}
        if threading.current_thread() is self._training_thread:
            return self._render(camera)
        if self.layout.sharded and comm.is_distributed():
            return self.viewer_renders.submit(lambda: self._render_for_viewer(camera))
        return self._render_for_viewer(camera)

    def _render_for_viewer(self, camera: Cameras) -> Dict[str, Union[torch.Tensor, List]]:
        was_training = self.training
        self.train(False)
        try:
            with torch.no_grad():
                return self._render(camera)
        finally:
            self.train(was_training)

    def serve_render(self) -> None:
        """Take part in a render another rank asked for (sharded mode: its eval or viewer camera), with
        no camera of this rank's; the rows are made as the asker's render makes them."""
        with torch.no_grad():
            rows, sh_degree = self._gaussian_rows()
            no_cameras = {"viewmats": torch.zeros((0, 4, 4)), "Ks": torch.zeros((0, 3, 3)), "width": 0, "height": 0}
            self.layout.render(rows, sh_degree=sh_degree, **no_cameras)

    def _render(self, camera: Cameras) -> Dict[str, Union[torch.Tensor, List]]:
        n_views = camera.shape[0]
        camera_to_worlds = self._camera_to_worlds(camera).to(self.device)
        scale = self._get_downscale_factor()
        Ks = intrinsics(camera, scale).to(self.device)
        W, H = self._render_size(camera, scale)
        self.last_size = (H, W)

        rows, sh_degree = self._gaussian_rows()
        render_mode = "RGB+ED" if self.config.output_depth_during_training or not self.training else "RGB"
        densifying = self.training and self.step < self.strategy.refine_stop_iter  # densification reads its statistics
        statistics = self.strategy.statistics_buffers(self.gauss_params, self.strategy_state) if densifying else None
        render, alpha, self.info = self.layout.render(  # type: ignore[misc]
            rows,
            crop=None if self.training else self.crop_box,
            viewmats=self._viewmats(camera_to_worlds),
            Ks=Ks,
            width=W,
            height=H,
            sh_degree=sh_degree,
            render_mode=render_mode,
            rasterize_mode=self.config.rasterize_mode,
            absgrad=self.strategy.absgrad,
            statistics=statistics,
            loss_by_range=self.training and self._loss_by_range,
        )
        if self.training:
            self.strategy.step_pre_backward(
                self.gauss_params, self.optimizers, self.strategy_state, self.step, self.info
            )
            if self._infos_step != self.step:
                self._step_infos, self._infos_step = [], self.step
            self._step_infos.append(self.info)
        job = self.info.get("ranges_job")
        if job is not None and job.by_range:
            return self._band_outputs(render, alpha, job)

        if self.training:
            meta = camera.metadata or {}
            background = self._training_backgrounds(n_views, meta.get("batch_positions"), meta.get("batch_size"))
        else:
            background = self._get_background_color().expand(n_views, 3)
        rgb = torch.clamp(render[..., :3] + (1 - alpha) * background[:, None, None, :], 0.0, 1.0)
        if self.config.use_bilateral_grid and self.training and "cam_idx" in (camera.metadata or {}):
            cam_idx = camera.metadata["cam_idx"]  # type: ignore[index]
            cam_idx = cam_idx if isinstance(cam_idx, list) else [cam_idx]
            rgb = torch.cat([self._apply_bilateral_grid(rgb[i : i + 1], c, H, W) for i, c in enumerate(cam_idx)])

        depth = None
        if render_mode == "RGB+ED":
            depth = render[..., 3:4]
            depth = torch.where(alpha > 0, depth, depth.detach().max())
        if n_views > 1:
            return {"rgb": rgb, "depth": depth, "accumulation": alpha, "background": background}  # type: ignore
        background = background[0] if self.training else background[0].expand(H, W, 3)
        return {
            "rgb": rgb[0],
            "depth": depth[0] if depth is not None else None,
            "accumulation": alpha[0],
            "background": background,
        }  # type: ignore

    def step_post_backward(self, step: int) -> None:
        """Densification statistics from every render of this step (one, or one per image size)."""
        assert step == self.step
        self.strategy.step_post_backward(
            params=self.gauss_params,
            optimizers=self.optimizers,
            state=self.strategy_state,
            step=self.step,
            info=self._step_infos,
            layout=self.layout,
        )

    def get_metrics_dict(self, outputs, batch) -> Dict[str, torch.Tensor]:
        """Stock's metrics, with PSNR as a plain tensor expression: stock's torchmetrics module,
        called at every step, copies its states and the pixel count to the GPU, each copy a wait
        for the GPU. The Gaussian count is the whole model's, however it is sharded. Of bands
        (`loss_by_range`): the PSNR of the step's mean squared error, every rank's share summed."""
        if "bands" in outputs:
            gt = self.composite_with_background(batch["image"], outputs["background"])
            with torch.no_grad():
                _, _, squared = loss_by_range.shares_of_step(outputs["bands"], outputs["rgb"], gt, None)
            metrics_dict = {
                "psnr": -10 * torch.log10(loss_by_range.step_mean(squared)),
                "gaussian_count": self.layout.total,
            }
            self.camera_optimizer.get_metrics_dict(metrics_dict)
            return metrics_dict
        gt = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
        pred = outputs["rgb"]
        metrics_dict = {"psnr": psnr(pred, gt)}
        if self.config.color_corrected_metrics:
            metrics_dict["cc_psnr"] = psnr(color_correct(pred, gt), gt)
        metrics_dict["gaussian_count"] = self.layout.total
        self.camera_optimizer.get_metrics_dict(metrics_dict)
        return metrics_dict

    def _downscale_if_required(self, image: torch.Tensor) -> torch.Tensor:
        """Area-downscale [..., H, W, C] images (one or a batch) to the current training resolution."""
        d = self._get_downscale_factor()
        if d == 1:
            return image
        batch = image.float().reshape(-1, *image.shape[-3:]).permute(0, 3, 1, 2)
        small = F.avg_pool2d(batch, d).permute(0, 2, 3, 1)
        return small.reshape(*image.shape[:-3], *small.shape[1:])

    def composite_with_background(self, image: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
        """Composite RGBA ground truth over the background the prediction was rendered with."""
        if image.shape[-1] != 4:
            return image
        if image.dim() == 4 and background.dim() == 2:
            background = background[:, None, None, :]
        alpha = image[..., 3:]
        return alpha * image[..., :3] + (1 - alpha) * background

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        """Splatfacto's loss, averaged over the rendered batch; of bands (`loss_by_range`), this rank's
        share of the step's, whose value reads as the step's mean (the value the whole-image loss
        of every rank, averaged, has)."""
        if "bands" in outputs:
            return self._band_loss_dict(outputs, batch)
        gt = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
        pred = outputs["rgb"]
        if "mask" in batch:
            mask = self._downscale_if_required(batch["mask"]).to(self.device)
            assert mask.shape[:-1] == gt.shape[:-1] == pred.shape[:-1]
            gt, pred = gt * mask, pred * mask
        # Contiguous NCHW copies: cuDNN runs the SSIM's depthwise convolutions (forward and backward)
        # far faster on them than on channels-last views of the HWC images (benchmarks/ssim_layout.py).
        gt_nchw = gt.reshape(-1, *gt.shape[-3:]).permute(0, 3, 1, 2).contiguous()
        pred_nchw = pred.reshape(-1, *pred.shape[-3:]).permute(0, 3, 1, 2).contiguous()
        l1 = torch.abs(gt - pred).mean()
        ssim_loss = 1 - self.ssim_loss(gt_nchw, pred_nchw)
        return self._with_regularisers((1 - self.config.ssim_lambda) * l1 + self.config.ssim_lambda * ssim_loss)

    def _band_loss_dict(self, outputs, batch) -> Dict[str, torch.Tensor]:
        gt, pred = self.composite_with_background(batch["image"], outputs["background"]), outputs["rgb"]
        if "mask" in batch:
            gt, pred = gt * batch["mask"], pred * batch["mask"]
        l1, dssim, _ = loss_by_range.shares_of_step(outputs["bands"], pred, gt, self.ssim_loss)
        share = (1 - self.config.ssim_lambda) * l1 + self.config.ssim_lambda * dssim
        return self._with_regularisers(share + (loss_by_range.step_mean(share) - share).detach())

    def _with_regularisers(self, main_loss: torch.Tensor) -> Dict[str, torch.Tensor]:
        """splatfacto's loss dict around its image loss `main_loss`."""
        if self.config.use_scale_regularization and self.step % 10 == 0:
            scale_exp = torch.exp(self.scales)
            ratio = scale_exp.amax(dim=-1) / scale_exp.amin(dim=-1)
            excess = torch.clamp_min(ratio, self.config.max_gauss_ratio) - self.config.max_gauss_ratio
            scale_reg = 0.1 * excess.sum() / max(self.layout.total, 1)  # a mean over every shard's Gaussians
        else:
            scale_reg = torch.zeros((), device=self.device)
        loss_dict = {
            "main_loss": main_loss,
            "scale_reg": scale_reg,
        }
        if self.training:
            self.camera_optimizer.get_loss_dict(loss_dict)
            if self.config.use_bilateral_grid:
                loss_dict["tv_loss"] = 10 * total_variation_loss(self.bil_grids.grids)
        return loss_dict

    def get_image_metrics_and_images(
        self, outputs: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, torch.Tensor]]:
        """Stock splatfacto's metrics, without the LPIPS ones where its weights cannot be loaded."""
        metrics, images = super().get_image_metrics_and_images(outputs, batch)
        return {k: v for k, v in metrics.items() if not math.isnan(v)}, images
