"""What an owned Gaussian's training state costs on the GPU, with and without offload, and the refusal
of a model whose state alone cannot fit there.

The state is what lives from step to step, whatever a render needs on top: each float of a
parameter comes with its gradient and two Adam moments (16 B), and each Gaussian with its
densification statistics (grad2d, count, radii: 12 B) and its id (8 B). A rank whose owned state
exceeds its GPU memory cannot train, so it is refused while the model is built, before any of it
reaches the GPU, in one line that says what would fit (the render's working set, images and
buffers come on top: a model that passes may still run out of memory)."""

from __future__ import annotations

from typing import Optional

SHAPE_FLOATS = 3 + 3 + 4 + 1
"""A Gaussian's floats that stay on the GPU when offloaded: position, log-scale, rotation, opacity."""
BYTES_PER_FLOAT = 4 * 4  # the value, its gradient and two Adam moments
PER_GAUSSIAN_EXTRA = 3 * 4 + 8  # densification statistics and the id


def state_bytes(floats: int, offload: bool) -> int:
    """GPU bytes of the training state of one owned Gaussian of `floats` parameter floats (59 at SH
    degree 3)."""
    return (SHAPE_FLOATS if offload else floats) * BYTES_PER_FLOAT + PER_GAUSSIAN_EXTRA


def fit_refusal(owned: int, gpu_bytes: int, floats: int, offload: bool, where: str) -> Optional[str]:
    """The one-line refusal of `owned` Gaussians whose state exceeds `gpu_bytes`, or None."""
    need = owned * state_bytes(floats, offload)
    if need <= gpu_bytes:
        return None
    fits = {o: gpu_bytes // state_bytes(floats, o) for o in (False, True)}
    hint = "" if offload else "; add --pipeline.model.offload True"
    return (
        f"{owned:,} Gaussians on this rank need {need / 2**30:.1f} GiB of GPU memory for their training state "
        f"alone, more than {where} ({gpu_bytes / 2**30:.1f} GiB): it holds at most {fits[False]:,} per rank, "
        f"{fits[True]:,} with --pipeline.model.offload True{hint}, or use more ranks of the sharded layout"
    )


def host_state_bytes(floats: int) -> int:
    """Host bytes of the offloaded training state of one owned Gaussian of `floats` parameter floats:
    its colours with their gradient and two Adam moments (768 B at SH degree 3)."""
    return (floats - SHAPE_FLOATS) * BYTES_PER_FLOAT


def host_refusal(owned: int, host_bytes: int, floats: int, where: str) -> Optional[str]:
    """The one-line refusal of offloading `owned` Gaussians whose colours' state exceeds `host_bytes`
    of host memory, or None."""
    need = owned * host_state_bytes(floats)
    if need <= host_bytes:
        return None
    return (
        f"{owned:,} offloaded Gaussians on this rank need {need / 2**30:.1f} GiB of host memory for their colours' "
        f"training state, more than {where} ({host_bytes / 2**30:.1f} GiB): it holds at most "
        f"{host_bytes // host_state_bytes(floats):,} per rank; use more ranks of the sharded layout or machines"
    )
