"""Rank-sharded full-image datamanager: each rank trains on, and loads, only its own cameras.

Stock `FullImageDatamanager` shuffles with the same seed on every rank (all GPUs render the same
image each step) and caches every image on every rank. Here the training cameras are split once
into static shards; a rank loads and undistorts only the images of the shards it owns, so cache
memory and start-up work per rank fall as 1/N (balanced, the shards are dealt again by measured
cost once: `camera_costs`). Every epoch each shard is reshuffled with (seed, epoch, shard), or
ranked by cost, and every step each shard contributes the next cameras of its order, so over an
epoch every training camera is rendered once across all ranks (see `CameraSchedule`).
"""

from __future__ import annotations

import contextlib
import copy
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Type

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datamanagers.full_images_datamanager import (
    FullImageDatamanager,
    FullImageDatamanagerConfig,
    _undistort_image,
)
from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.utils.rich_utils import CONSOLE
from PIL import Image
from rich.progress import track

from splatfacto_dist import comm
from splatfacto_dist.data import image_cache
from splatfacto_dist.data.camera_costs import CameraCosts, cost_ranked, deal_by_cost, dealt_by, step_order
from splatfacto_dist.launching import memcap
from splatfacto_dist.reporting.profiling import DeviceTimer
from splatfacto_dist.scenes.colmap_points import BulkPointsColmapDataParser


class ConfigError(ValueError):
    """A setting that cannot work; raised before any image is loaded or GPU work starts."""


class CameraSchedule:
    """Which training cameras each rank renders at each step; a pure function of the step (and,
    balanced, of the costs its epoch is dealt by: `camera_costs`).

    Cameras are dealt (seeded shuffle, or by `deal`'s costs) into `num_shards` static shards whose
    sizes differ by at most one; rank r owns shards r, r + W, r + 2W, ... and takes `cameras_per_rank / shards
    owned` cameras from each per step. Every epoch lasts ceil(largest shard / per-shard take)
    steps on every rank. When the cameras do not divide evenly, a shard that runs out before the
    epoch ends wraps around to the start of its own order for this epoch, so a few cameras are
    rendered twice in that epoch, every camera at least once, and all ranks take the same
    number of steps. Because the schedule depends only on the step (and the checkpointed costs),
    it resumes exactly.
    """

    def __init__(
        self,
        num_cameras: int,
        num_shards: int,
        rank: int,
        world_size: int,
        cameras_per_rank: int,
        seed: int,
        deal: Optional[Sequence[int]] = None,
    ) -> None:
        if cameras_per_rank < 1:
            raise ConfigError(f"cameras_per_rank must be >= 1 (got {cameras_per_rank})")
        if num_shards < world_size or num_shards % world_size:
            raise ConfigError(f"data_shards={num_shards} must be a multiple of the world size {world_size}")
        if num_shards > num_cameras:
            raise ConfigError(f"{num_cameras} training cameras cannot fill {num_shards} shards (one per rank at least)")
        owned = list(range(rank, num_shards, world_size))
        if cameras_per_rank % len(owned):
            raise ConfigError(
                f"cameras_per_rank={cameras_per_rank} must be a multiple of the {len(owned)} shards per rank"
            )
        self.deal = deal  # every camera's cost, to deal the shards by again (None: the seeded shuffle alone)
        dealt = list(range(num_cameras))
        random.Random(seed).shuffle(dealt)
        self.shards = [dealt[s::num_shards] for s in range(num_shards)]
        if deal is not None:
            self.shards = deal_by_cost(deal, self.shards)
        self.owned_shards = owned
        self.per_shard = cameras_per_rank // len(owned)
        self.seed = seed
        self.steps_per_epoch = -(-max(len(s) for s in self.shards) // self.per_shard)
        self._epoch_orders: Tuple[int, Optional[Sequence[int]], Dict[int, List[int]]] = (-1, None, {})

    def owned_cameras(self) -> List[int]:
        return sorted(c for s in self.owned_shards for c in self.shards[s])

    def _order(self, epoch: int, shard: int, costs: Optional[Sequence[int]]) -> List[int]:
        if self._epoch_orders[0] != epoch or self._epoch_orders[1] is not costs:
            self._epoch_orders = (epoch, costs, {})
        orders = self._epoch_orders[2]
        if shard not in orders:
            rng = random.Random(f"{self.seed}/{epoch}/{shard}")
            need = self.steps_per_epoch * self.per_shard
            if costs is None:
                order = list(self.shards[shard])
                rng.shuffle(order)
                orders[shard] = (order * -(-need // len(order)))[:need]
            else:
                ranked = cost_ranked(self.shards[shard], costs, need, self.per_shard, rng)
                slots = step_order(self.steps_per_epoch, self.seed, epoch)
                orders[shard] = [
                    c for slot in slots for c in ranked[slot * self.per_shard : (slot + 1) * self.per_shard]
                ]
        return orders[shard]

    def cameras_for_step(self, step: int, costs: Optional[Sequence[int]] = None) -> List[int]:
        """This rank's cameras at `step`; `costs` (every camera's, the same on every rank, fixed for
        the epoch) deal the epoch by cost (`camera_costs`), None by the seeded shuffle."""
        epoch, i = divmod(step, self.steps_per_epoch)
        take = slice(i * self.per_shard, (i + 1) * self.per_shard)
        return [c for s in self.owned_shards for c in self._order(epoch, s, costs)[take]]


@dataclass
class ShardedFullImageDatamanagerConfig(FullImageDatamanagerConfig):
    """Full-image datamanager whose training cameras are split across ranks."""

    _target: Type = field(default_factory=lambda: ShardedFullImageDatamanager)
    cameras_per_rank: int = 1
    """Training images each rank renders per step; the effective batch is world size x this."""
    data_shards: Optional[int] = None
    """Static camera shards (default: the world size); a rank owns data_shards / world size of them
    and loads only their images. Fixing it keeps the camera order independent of the GPU count."""
    balance_cameras: Optional[bool] = None
    """Replicated layout on several ranks: deal the cameras to ranks and steps by their measured
    render and backward time, so that the ranks of a step finish together (`camera_costs`); False
    keeps the seeded order, the same in every run. None: on when replicated. A sharded layout's
    ranks meet in every render's exchange (pixel ranges: every rank renders part of every image),
    so a camera's time there is the step's, and True is refused."""


def one_line(err: BaseException) -> str:
    """An exception as one line: its type, and its message's words."""
    words = " ".join(str(err).split())
    return f"{type(err).__name__}: {words}" if words else type(err).__name__


def image_problem(path: Path, width: int, height: int, listed_in: str = "the camera model") -> Optional[str]:
    """What is wrong with one image `listed_in` a camera model, in one line naming the file, or None: missing,
    empty, unreadable, of another size than its camera (`width` x `height`), truncated or damaged.

    Cheaper than decoding: the header gives the size; a PNG's every chunk is read and its checksum
    compared (nothing is inflated), a JPEG's whole entropy-coded data is decoded at 1/8 scale (no
    full-size inverse DCT); other formats are decoded."""
    try:
        if path.stat().st_size == 0:
            return f"image {path} is empty (0 bytes)"
    except FileNotFoundError:
        return f"image {path} does not exist (listed in the {listed_in})"
    except OSError as err:
        return f"image {path} cannot be read: {one_line(err)}"
    try:
        with Image.open(path) as image:
            if image.size != (width, height):
                return f"image {path} is {image.width}x{image.height} but its camera says {width}x{height}"
            if image.format == "PNG":
                image.verify()
            else:
                if image.format == "JPEG":
                    image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
                image.load()
    except Exception as err:  # noqa: BLE001 - whatever PIL raises, the file is what the user must fix
        return f"image {path} cannot be decoded (truncated or damaged?): {one_line(err)}"
    return None


def _load_and_undistort(dataset: InputDataset, idx: int, image_type: Literal["uint8", "float32"]) -> Dict:
    """One image, undistorted like stock splatfacto (updating the dataset's intrinsics). An image
    that does not load is a `ConfigError` naming the file (the launcher checks them all first,
    `preflight.data_refusal`; ns-train's launcher and a damage since then land here)."""
    filename = dataset.image_filenames[idx]
    try:
        data = dataset.get_data(idx, image_type=image_type)
    except (OSError, SyntaxError, ValueError, AssertionError) as err:
        raise ConfigError(f"image {filename} cannot be loaded: {one_line(err)}") from None
    camera = dataset.cameras[idx].reshape(())
    width, height = int(camera.width.item()), int(camera.height.item())
    if data["image"].shape[1] != width or data["image"].shape[0] != height:
        raise ConfigError(
            f"image {filename} is {data['image'].shape[1]}x{data['image'].shape[0]} (after"
            f" --pipeline.datamanager.camera-res-scale-factor), its camera says {width}x{height}"
        )
    if camera.distortion_params is None or torch.all(camera.distortion_params == 0):
        return data
    K = camera.get_intrinsics_matrices().numpy()
    K, image, mask = _undistort_image(camera, camera.distortion_params.numpy(), data, data["image"].numpy(), K)
    data["image"] = torch.from_numpy(image)
    if mask is not None:
        data["mask"] = mask
    dataset.cameras.fx[idx] = float(K[0, 0])
    dataset.cameras.fy[idx] = float(K[1, 1])
    dataset.cameras.cx[idx] = float(K[0, 2])
    dataset.cameras.cy[idx] = float(K[1, 2])
    dataset.cameras.width[idx] = image.shape[1]
    dataset.cameras.height[idx] = image.shape[0]
    return data


class ShardedFullImageDatamanager(FullImageDatamanager):
    """See the module docstring. Evaluation images are split round-robin across ranks too."""

    config: ShardedFullImageDatamanagerConfig

    def __init__(self, config: ShardedFullImageDatamanagerConfig, *args, **kwargs) -> None:
        if type(config.dataparser) is ColmapDataParserConfig:  # large scenes: minutes of parsing otherwise
            config.dataparser._target = BulkPointsColmapDataParser
        super().__init__(config, *args, **kwargs)
        self.schedule = self._schedule(deal=None)
        balanced = bool(config.balance_cameras) and comm.world_size() > 1
        self.costs = CameraCosts(len(self.train_dataset)) if balanced else None
        self.epoch_costs: Optional[Sequence[int]] = None  # what this epoch was dealt by (None: the seeded order)
        self._costs_epoch = -1  # the epoch whose start shared the costs
        self.step_cameras: List[int] = []
        self._timed_once = False  # a process's first step (lazy kernels, autotuning) is not a camera's cost
        self.eval_indices = list(range(comm.rank(), len(self.eval_dataset), comm.world_size()))
        CONSOLE.log(
            f"rank {comm.rank()}: trains on {len(self.schedule.owned_cameras())} of {len(self.train_dataset)} cameras, "
            f"{self.schedule.steps_per_epoch} steps per epoch"
        )

    def _schedule(self, deal: Optional[Sequence[int]]) -> CameraSchedule:
        config = self.config
        return CameraSchedule(
            num_cameras=len(self.train_dataset),
            num_shards=config.data_shards or comm.world_size(),
            rank=comm.rank(),
            world_size=comm.world_size(),
            cameras_per_rank=config.cameras_per_rank,
            seed=config.train_cameras_sampling_seed,
            deal=deal,
        )

    def _deal_by_cost(self, costs: Sequence[int]) -> None:
        """Deal the shards again by every camera's cost (`camera_costs`): load the images of the
        cameras this rank gains, drop those it gives away."""
        self.schedule = self._schedule(deal=costs)
        owned = self.schedule.owned_cameras()
        self.costs.load(costs, owned)
        if "cached_train" not in self.__dict__:  # not loaded yet (a resume): loads the new shards
            return
        cache = self.cached_train
        for camera in set(cache) - set(owned):
            del cache[camera]
        gained = [camera for camera in owned if camera not in cache]
        cache.update(self._load_subset("train", gained))
        self.train_cameras = self.train_dataset.cameras.to(self.device if self.config.cache_images == "gpu" else "cpu")
        self.train_views = {i: self.train_cameras[i : i + 1].to(self.device) for i in owned}  # undistorted anew
        CONSOLE.log(
            f"rank {comm.rank()}: shards dealt by measured cost, trains on {len(owned)} cameras ({len(gained)} new)"
        )

    def _refuse_unless_the_images_fit(self, indices: List[int]) -> None:
        """Stop in one line before loading, when this rank's images cannot fit where they are
        cached (`image_cache`); say where they go and what they take."""
        cameras = self.train_dataset.cameras
        sizes = [(int(cameras.width[i]), int(cameras.height[i])) for i in indices]
        need = image_cache.cache_bytes(sizes, self.config.cache_images_type)
        on_gpu = self.config.cache_images == "gpu" and torch.device(self.device).type == "cuda"
        budget = memcap.gpu_budget(self.device) if on_gpu else memcap.host_budget()
        error = image_cache.cache_refusal(len(indices), need, self.config.cache_images_type, on_gpu, budget)
        if error:
            raise ConfigError(error)
        CONSOLE.log(
            f"rank {comm.rank()}: caches {len(indices)} training images {'on the GPU' if on_gpu else 'in host memory'}, "
            f"{self.config.cache_images_type}: {need / 2**20:,.0f} MiB"
        )

    @cached_property
    def cached_train(self) -> Dict[int, Dict[str, torch.Tensor]]:  # type: ignore[override]
        """This rank's training images (and only those), loaded on first use."""
        owned = self.schedule.owned_cameras()
        self._refuse_unless_the_images_fit(owned)
        cache = self._load_subset("train", owned)
        self.train_cameras = self.train_dataset.cameras.to(self.device if self.config.cache_images == "gpu" else "cpu")
        # Each owned camera alone, on the device: a step copies its camera (fields shared) instead of
        # indexing and moving the cameras, which builds two `Cameras` and, from the CPU, waits for the GPU.
        self.train_views = {i: self.train_cameras[i : i + 1].to(self.device) for i in owned}
        return cache

    @cached_property
    def cached_eval(self) -> Dict[int, Dict[str, torch.Tensor]]:  # type: ignore[override]
        """This rank's share of the evaluation images."""
        return self._load_subset("eval", self.eval_indices)

    def _load_subset(self, split: Literal["train", "eval"], indices: List[int]) -> Dict[int, Dict[str, torch.Tensor]]:
        dataset = self.train_dataset if split == "train" else self.eval_dataset
        with ThreadPoolExecutor(max_workers=self.config.max_thread_workers) as pool:
            loaded = list(
                track(
                    pool.map(lambda i: _load_and_undistort(dataset, i, self.config.cache_images_type), indices),
                    description=f"Caching / undistorting {len(indices)} {split} images (rank {comm.rank()})",
                    transient=True,
                    total=len(indices),
                )
            )
        on_gpu = self.config.cache_images == "gpu"
        for data in loaded:
            for key in ("image", "mask", "depth"):
                if key in data:
                    data[key] = data[key].to(self.device) if on_gpu else _pinned(data[key])
        return dict(zip(indices, loaded))

    def next_train(self, step: int) -> Tuple[Cameras, Dict]:
        """This rank's cameras for `step` as one batched `Cameras`, with their images stacked when they
        share one size, else as lists (the pipeline then renders each size separately)."""
        self._start_epoch(step)
        indices = self.step_cameras = self.schedule.cameras_for_step(step, self.epoch_costs)
        images = [self.cached_train[i] for i in indices]
        same_size = len({tuple(d["image"].shape) for d in images}) == 1
        batch = {
            key: stack_images([d[key] for d in images]).to(self.device)
            if same_size
            else [d[key].to(self.device) for d in images]
            for key in ("image", "mask")
            if key in images[0]
        }
        if len(indices) == 1:
            camera = copy.copy(self.train_views[indices[0]])  # its own metadata; the tensors are never written
        else:
            camera = self.train_cameras[torch.tensor(indices)].to(self.device)
        height, width = images[0]["image"].shape[:2]
        camera.metadata = {"cam_idx": indices[0] if len(indices) == 1 else indices}
        if same_size:
            camera.metadata["image_size"] = (width, height)
        return camera, batch

    def _start_epoch(self, step: int) -> None:
        """At an epoch's first step (once, whichever call comes first): every rank's costs summed
        into one table (a collective), the shards dealt by it once every camera is measured."""
        epoch, i = divmod(step, self.schedule.steps_per_epoch)
        if self.costs is None or i != 0 or epoch == self._costs_epoch:
            return
        self._costs_epoch = epoch
        self.epoch_costs = dealt_by(self.costs.share())
        if self.epoch_costs is not None and self.schedule.deal is None:
            self._deal_by_cost(self.epoch_costs)

    @contextlib.contextmanager
    def timing(self, step: int, device: torch.device) -> Iterator[None]:
        """Time the block (this step's render and backward) as the cost of the step's cameras,
        which `next_train` chooses inside it; an epoch's start (a collective, perhaps images to
        load) happens before the clock starts."""
        self._start_epoch(step)
        if self.costs is None or not self._timed_once:
            self._timed_once = True
            yield
            return
        timer = DeviceTimer(device)
        yield
        timer.stop()
        self.costs.add(self.step_cameras, timer)

    def cost_state(self) -> Optional[Dict[str, Optional[Sequence[int]]]]:
        """What a checkpoint keeps of the balance: every camera's cost, and what this epoch was dealt
        by. A collective: every rank calls it."""
        if self.costs is None:
            return None
        return {"table": self.costs.share(), "epoch": self.epoch_costs, "deal": self.schedule.deal}

    def load_cost_state(self, state: Optional[Dict[str, Optional[Sequence[int]]]]) -> None:
        """Resume the balance of a checkpoint of this data (another camera count's is ignored)."""
        if self.costs is None or not state or len(state["table"] or []) != len(self.train_dataset):
            return
        if state.get("deal") is not None:
            self._deal_by_cost(state["deal"])
        self.costs.load(state["table"], self.schedule.owned_cameras())
        self.epoch_costs = dealt_by(state["epoch"])
        self._costs_epoch = -1  # resumed at an epoch's start, that start shares the costs again

    def get_train_rays_per_batch(self) -> int:
        first = self.cached_train[self.schedule.owned_cameras()[0]]["image"]
        return first.shape[0] * first.shape[1] * self.config.cameras_per_rank

    @property
    def fixed_indices_eval_dataloader(self) -> List[Tuple[Cameras, Dict]]:
        """(camera, data) for this rank's share of the evaluation images."""
        cache = self.cached_eval  # loading undistorts, which updates the intrinsics read below
        cameras = self.eval_dataset.cameras.to(self.device)
        out = []
        for i in self.eval_indices:
            data = dict(cache[i])
            data["image"] = data["image"].to(self.device)
            data["image_idx"] = i
            out.append((cameras[i : i + 1], data))
        return out

    def next_eval_image(self, step: int) -> Tuple[Cameras, Dict]:
        """A random evaluation image from this rank's share."""
        if not self.eval_indices:
            raise RuntimeError(f"rank {comm.rank()} holds no evaluation images")
        i = random.choice(self.eval_indices)
        data = dict(self.cached_eval[i])
        data["image"] = data["image"].to(self.device)
        return self.eval_dataset.cameras[i : i + 1].to(self.device), data


def stack_images(tensors: List[torch.Tensor]) -> torch.Tensor:
    """One image as it is (stock shapes), several as a batch."""
    return tensors[0] if len(tensors) == 1 else torch.stack(tensors)


def _pinned(t: torch.Tensor) -> torch.Tensor:
    """Page-locked host copy where CUDA exists (fast, async uploads), the tensor itself elsewhere."""
    return t.pin_memory() if torch.cuda.is_available() else t
