"""Where a rank keeps its training images, what they cost, and the refusal of a cache that cannot fit.

Each rank caches only the images of the cameras it owns (`datamanager`): ~1/N of the capture, as
uint8 (splatfacto-dist's `cache_images_type`; float32 is 4x) on the GPU (`cache_images gpu`,
nerfstudio's default) or in pinned host memory (`cpu`). A 300-view 3840x2160 capture is 7.5 GB of
uint8 pixels: 1.9 GB per rank on 4 ranks. A cache larger than the memory it goes to would fail
mid-load minutes in (GPU) or push the machine into swap (host): it is refused before any image is
read, in one line that says what it needs and where else it fits. The count is a lower bound (3
channels; an alpha channel or a mask adds more), so a refusal is never wrong.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

CHANNELS = 3
BYTES = {"uint8": 1, "float32": 4}


def cache_bytes(sizes: Sequence[Tuple[int, int]], image_type: str) -> int:
    """Bytes of the images of (width, height) `sizes` cached as `image_type`, RGB."""
    return sum(w * h for w, h in sizes) * CHANNELS * BYTES[image_type]


def cache_refusal(
    images: int, need: int, image_type: str, on_gpu: bool, budget: Optional[Tuple[int, str]]
) -> Optional[str]:
    """The one-line refusal of caching `images` images of `need` bytes where `budget` says (bytes,
    what they are) is available, or None when it fits or nothing is known."""
    if budget is None or need <= budget[0]:
        return None
    where = "on the GPU" if on_gpu else "in host memory"
    hint = []
    if image_type != "uint8":
        hint.append("--pipeline.datamanager.cache-images-type uint8 (4x smaller)")
    if on_gpu:
        hint.append("--pipeline.datamanager.cache-images cpu")
    hint.append("more ranks (each caches its own cameras' images)")
    return (
        f"the {images} training images this rank caches {where} take {need / 2**30:.2f} GiB ({image_type}), "
        f"more than {budget[1]} ({budget[0] / 2**30:.2f} GiB): use " + ", or ".join(hint)
    )
