"""splatfacto's training loss and PSNR of a render whose pixels stay, in bands of whole rows, on the
ranks that rendered them (`layouts.sharded.range_loss` says why, and how a band's share of an
image's loss is taken). Each rank holds its band of every camera of the step, flat and in camera
order (`RangesJob.held`); what it computes here is its share of the step's loss, weighted as the
camera's rank weighs its images (their mean), so the ranks' shares add up to the whole-image losses.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch

from splatfacto_dist import comm
from splatfacto_dist.layouts.sharded.range_loss import shares
from splatfacto_dist.layouts.sharded.ranges import RangesJob


def per_camera(job: RangesJob, flat: torch.Tensor) -> List[torch.Tensor]:
    """This rank's band of each camera, [rows, W, k], from its flat rows."""
    me = comm.rank()
    widths = [job.size(c)[0] for c in range(job.cameras)]
    sizes = [(job.held(c, me)[1] - job.held(c, me)[0]) * widths[c] for c in range(job.cameras)]
    return [part.reshape(-1, width, flat.shape[-1]) for part, width in zip(flat.split(sizes), widths)]


def background_rows(job: RangesJob, backgrounds: torch.Tensor) -> torch.Tensor:
    """[rows, 3]: each flat row's camera's background, from every camera's `backgrounds` [C, 3]."""
    me = comm.rank()
    pixels = [(job.held(c, me)[1] - job.held(c, me)[0]) * job.size(c)[0] for c in range(job.cameras)]
    # Expanded slices: repeat counts as a tensor would be a host-to-device copy, a wait every step.
    return torch.cat([backgrounds[c : c + 1].expand(n, 3) for c, n in enumerate(pixels)])


def _weight(job: RangesJob, camera: int) -> float:
    return 1.0 / job.counts[job.camera_rank(camera)]


def shares_of_step(
    job: RangesJob,
    pred: torch.Tensor,
    gt: torch.Tensor,
    ssim: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L1, 1 - SSIM, squared error): this rank's weighted shares of the step's, from the flat band
    rows of its prediction and ground truth; summed over ranks, each is the sum over ranks of the
    mean over each rank's images. `ssim` None: no SSIM (zero)."""
    me = comm.rank()
    l1 = dssim = squared = pred.new_zeros(())
    for camera, (p, g) in enumerate(zip(per_camera(job, pred), per_camera(job, gt))):
        band = job.bands[camera][me]
        part = shares(p, g, band, job.size(camera)[1], ssim)
        weight = _weight(job, camera)
        l1, dssim, squared = l1 + weight * part[0], dssim + weight * part[1], squared + weight * part[2]
    return l1, dssim, squared


def step_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean over the step's images of a quantity each rank holds a share of (`shares_of_step`):
    what a rank of the whole-image loss reports, averaged over ranks."""
    return comm.all_reduce_sum(value.detach()) / comm.world_size()
