"""The embedded default scene: rendered from known Gaussians and written as a real COLMAP model.

Real captures cannot ship with the project (their licences forbid it), and tests and the demo
need a scene on any machine. This one is a banded sphere on a checkerboard floor inside a sky
dome, seen by a ring of cameras; nerfstudio's stock `colmap` dataparser reads it unchanged,
including a sparse `points3D.txt` (noisy samples of the true surface) for splatfacto's init.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Dict

import numpy as np
import torch
from PIL import Image

from splatfacto_dist.render.raster import reference_rasterization
from splatfacto_dist.scenes.colmap_writer import PointsWriter, write_images, write_pinhole_camera

SH_C0 = 0.28209479177387814


def _hue(h: torch.Tensor) -> torch.Tensor:
    """Saturated colours around the hue circle, h in [0, 1)."""
    k = (h[:, None] * 6 + torch.tensor([0.0, 4.0, 2.0])) % 6
    return 1 - 0.85 * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def ground_truth_gaussians(seed: int = 0) -> Dict[str, torch.Tensor]:
    """Means, log-scales, quats, logit-opacities and RGB of the scene's Gaussians."""
    g = torch.Generator().manual_seed(seed)
    n_sphere, n_floor, n_sky = 1500, 900, 700
    u = torch.rand(n_sphere, generator=g)
    v = torch.rand(n_sphere, generator=g)
    theta, phi = 2 * math.pi * u, torch.acos(2 * v - 1)
    sphere = torch.stack([torch.sin(phi) * torch.cos(theta), torch.sin(phi) * torch.sin(theta), torch.cos(phi)], -1)
    sphere_rgb = _hue((torch.floor(theta / (2 * math.pi) * 8) / 8 + 0.3 * (phi > math.pi / 2)) % 1.0)

    xy = (torch.rand(n_floor, 2, generator=g) - 0.5) * 6
    floor = torch.cat([xy, torch.full((n_floor, 1), -1.05)], -1)
    checker = ((torch.floor(xy[:, 0] / 0.75) + torch.floor(xy[:, 1] / 0.75)) % 2)[:, None]
    floor_rgb = 0.15 + 0.7 * checker * torch.tensor([1.0, 0.9, 0.7]) + 0.1 * (1 - checker)

    u = torch.rand(n_sky, generator=g)
    v = torch.rand(n_sky, generator=g) * 0.9 + 0.1
    theta, phi = 2 * math.pi * u, torch.acos(v * 1.1 - 0.1)
    sky = 9.0 * torch.stack([torch.sin(phi) * torch.cos(theta), torch.sin(phi) * torch.sin(theta), torch.cos(phi)], -1)
    sky_rgb = torch.tensor([0.55, 0.7, 0.95]) * (0.6 + 0.4 * torch.cos(phi)[:, None]) + 0.05

    means = torch.cat([sphere, floor, sky])
    scales = torch.cat(
        [
            torch.full((n_sphere, 3), 0.06),
            torch.tensor([0.12, 0.12, 0.01]).repeat(n_floor, 1),
            torch.full((n_sky, 3), 0.9),
        ]
    )
    quats = torch.zeros(len(means), 4)
    quats[:, 0] = 1
    return {
        "means": means,
        "scales": torch.log(scales),
        "quats": quats,
        "opacities": torch.full((len(means),), 0.95),
        "rgb": torch.cat([sphere_rgb, floor_rgb, sky_rgb]).clamp(0, 1),
    }


def ring_cameras(n_views: int, radius: float = 4.0) -> torch.Tensor:
    """World-to-camera matrices (OpenCV axes, as COLMAP stores them) looking at the origin."""
    viewmats = []
    for i in range(n_views):
        a = 2 * math.pi * i / n_views
        eye = torch.tensor([radius * math.cos(a), radius * math.sin(a), 0.6 + 0.9 * (i % 3) / 2])
        forward = -eye / eye.norm()
        right = torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0]))
        right = right / right.norm()
        down = torch.linalg.cross(forward, right)
        R = torch.stack([right, down, forward])
        viewmat = torch.eye(4)
        viewmat[:3, :3] = R
        viewmat[:3, 3] = -R @ eye
        viewmats.append(viewmat)
    return torch.stack(viewmats)


def picture_dir(scale: int) -> str:
    """The folder, beside images/, of the views rendered at `scale` times their size (`generate_scene`)."""
    return f"images_x{scale}"


def generate_scene(
    out_dir: Path,
    n_views: int = 32,
    width: int = 80,
    height: int = 60,
    seed: int = 0,
    picture_scale: int = 0,
    picture_every: int = 1,
) -> Path:
    """Render the scene into `out_dir` (images/ + colmap/sparse/0/*.txt); returns `out_dir`.

    With `picture_scale`, every `picture_every`-th view (from the first: nerfstudio's held-out views
    at that eval interval) is also rendered from the same Gaussians at that many times its size, into
    `picture_dir(picture_scale)` under the same name: the ground truth a picture shows beside a
    trained model's render of the camera at that size (its intrinsics scaled). Nothing trains or is
    measured on them. At 4x, 32 views would cost about 40 s on 2 CPU cores; the demo's 4 about 5 s.
    """
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    sparse_dir = out_dir / "colmap" / "sparse" / "0"
    images_dir.mkdir(parents=True, exist_ok=True)
    sparse_dir.mkdir(parents=True, exist_ok=True)

    gt = ground_truth_gaussians(seed)
    viewmats = ring_cameras(n_views)
    focal = 0.9 * width
    sizes = [(1, images_dir, range(n_views))]
    if picture_scale:
        sizes.append((picture_scale, out_dir / picture_dir(picture_scale), range(0, n_views, picture_every)))
    for scale, folder, views in sizes:
        folder.mkdir(parents=True, exist_ok=True)
        w, h, f = width * scale, height * scale, focal * scale
        K = torch.tensor([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])
        for i in views:
            with torch.no_grad():
                rgb, _, _ = reference_rasterization(
                    means=gt["means"],
                    quats=gt["quats"],
                    scales=torch.exp(gt["scales"]),
                    opacities=gt["opacities"],
                    colors=gt["rgb"],
                    viewmats=viewmats[i : i + 1],
                    Ks=K[None],
                    width=w,
                    height=h,
                    sh_degree=None,
                )
            pixels = (rgb[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"frame_{i:04d}.png")

    write_pinhole_camera(sparse_dir, width, height, focal)
    write_images(sparse_dir, viewmats.numpy(), [f"frame_{i:04d}.png" for i in range(n_views)])

    g = torch.Generator().manual_seed(seed + 1)
    surface = torch.arange(2400)  # sphere and floor, not the sky dome
    pick = surface[torch.randperm(len(surface), generator=g)[:800]]
    xyz = gt["means"][pick] + 0.03 * torch.randn(len(pick), 3, generator=g)
    rgb = (gt["rgb"][pick] * 255).round().to(torch.uint8)
    with PointsWriter(sparse_dir, len(pick)) as points:
        points.write(xyz.numpy(), rgb.numpy())
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description="Write splatfacto-dist's embedded scene as a COLMAP dataset.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--views", type=int, default=32)
    parser.add_argument("--width", type=int, default=80)
    parser.add_argument("--height", type=int, default=60)
    parser.add_argument("--picture-scale", type=int, default=0, help="also write views this many times larger")
    parser.add_argument("--picture-every", type=int, default=1, help="... every this many views, from the first")
    args = parser.parse_args()
    sizes = dict(width=args.width, height=args.height, picture_scale=args.picture_scale)
    print(generate_scene(args.out_dir, args.views, picture_every=args.picture_every, **sizes))


if __name__ == "__main__":
    main()
