"""A synthetic scene of any size: a field of coloured spheres and boxes on a checkered floor under
a sky dome, seen by many cameras, written as a COLMAP model (`ns-train ... colmap --data DIR`).

The capacity benchmark needs scenes of up to tens of millions of Gaussians without downloads.
splatfacto starts from one Gaussian per point of `points3D`, so the point count is the model
size: points are dense samples of the true surfaces, coloured as the images show them, generated
and written in fixed-size chunks (memory stays flat; the output depends only on the seed and
the sizes). The images come from an exact analytic ray cast of the same surfaces (Lambertian, no
shadows), which costs the same whatever the point count; rendering millions of Gaussians with the
reference rasterizer would not.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Literal, Tuple

import numpy as np
from PIL import Image

from splatfacto_dist.scenes.colmap_writer import PointsFormat, PointsWriter, write_images, write_pinhole_camera

CHUNK = 1 << 20  # points generated per chunk; part of the output's definition (one random stream each)
SPACING = 3.0  # metres between neighbouring objects
SUN = np.array([0.4, 0.3, 0.85]) / np.linalg.norm([0.4, 0.3, 0.85])
FRACTIONS = (0.65, 0.32)  # of the points on objects, on the floor; the rest on the sky dome
MANIFEST = "synthetic.json"
PARALLEL_PIXELS = 1 << 24
"""Pixels of all views above which they are rendered by a pool of processes, one per core (a
3840x2160 scene of 16 views: 133 M pixels, 4 ray-cast samples each); below, starting the pool
costs more than it saves."""


@dataclass(frozen=True)
class SceneSpec:
    """Everything the output depends on; stored beside the scene so a cache can tell it is complete."""

    gaussians: int = 1_000_000
    views: int = 200
    width: int = 320
    height: int = 240
    objects: int = 64
    seed: int = 0
    points_format: PointsFormat = "bin"
    views_from: Literal["around", "above"] = "around"
    """"around": cameras overlook the field from its sides, each seeing much of the model (the
    capacity benchmark's hard case); "above": they look down from a few metres, each seeing a patch
    (with many objects, a small share of the model, as in a large captured scene)."""


class Layout:
    """The objects of a scene (drawn from the seed) and the colour of every surface point."""

    def __init__(self, n_objects: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 0xF1E1D])
        side = math.ceil(math.sqrt(n_objects))
        cells = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="ij"), -1).reshape(-1, 2)[:n_objects]
        self.half_field = side * SPACING / 2
        self.floor_half = self.half_field + 2 * SPACING
        self.sky_radius = 3 * self.floor_half
        xy = (cells + 0.5) * SPACING - self.half_field + rng.uniform(-0.4, 0.4, (n_objects, 2))
        self.is_box = rng.random(n_objects) < 0.5
        self.half = np.where(self.is_box[:, None], rng.uniform(0.4, 1.0, (n_objects, 3)), 0.0)
        self.radius = np.where(self.is_box, 0.0, rng.uniform(0.5, 1.1, n_objects))
        z = np.where(self.is_box, self.half[:, 2], self.radius)
        self.centre = np.concatenate([xy, z[:, None]], -1)
        self.yaw = np.where(self.is_box, rng.uniform(0, math.pi, n_objects), 0.0)
        self.albedo = _hue(rng.random(n_objects)) * rng.uniform(0.6, 1.0, (n_objects, 1))
        h = self.half
        faces = np.stack([4 * h[:, 1] * h[:, 2]] * 2 + [4 * h[:, 0] * h[:, 2]] * 2 + [4 * h[:, 0] * h[:, 1]], -1)
        self.face_area = faces  # +x, -x, +y, -y, +z (the bottom touches the floor: never seen)
        self.area = np.where(self.is_box, faces.sum(-1), 4 * math.pi * self.radius**2)
        self.bound = np.where(self.is_box, np.linalg.norm(h, axis=-1), self.radius)

    def object_colour(self, index: np.ndarray, point: np.ndarray, normal: np.ndarray) -> np.ndarray:
        """Shaded colour of points on objects `index`: spheres are striped by longitude."""
        local = point - self.centre[index]
        stripe = np.floor((np.arctan2(local[:, 1], local[:, 0]) / (2 * math.pi) + 0.5) * 8) % 2
        albedo = self.albedo[index] * np.where(self.is_box[index], 1.0, 0.55 + 0.45 * stripe)[:, None]
        return albedo * _shade(normal)

    @staticmethod
    def floor_colour(point: np.ndarray) -> np.ndarray:
        checker = ((np.floor(point[:, 0]) + np.floor(point[:, 1])) % 2)[:, None]
        return (0.3 + 0.45 * checker) * np.array([1.0, 0.95, 0.8]) * _shade(np.array([[0.0, 0.0, 1.0]]))

    def sky_colour(self, point: np.ndarray) -> np.ndarray:
        elevation = np.clip(point[:, 2] / self.sky_radius, 0, 1)[:, None]
        return np.array([0.55, 0.7, 0.95]) * (0.6 + 0.4 * elevation) + 0.05


def _hue(h: np.ndarray) -> np.ndarray:
    """Saturated colours around the hue circle, h in [0, 1)."""
    k = (h[:, None] * 6 + np.array([0.0, 4.0, 2.0])) % 6
    return 1 - 0.85 * np.clip(np.minimum(k, 4 - k), 0, 1)


def _shade(normal: np.ndarray) -> np.ndarray:
    return (0.35 + 0.65 * np.clip(normal @ SUN, 0, None))[:, None]


def _yaw_matrices(yaw: np.ndarray) -> np.ndarray:
    """[n, 3, 3] rotations about +z (box frame to world)."""
    c, s = np.cos(yaw), np.sin(yaw)
    m = np.zeros((len(yaw), 3, 3))
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1], m[:, 2, 2] = c, -s, s, c, 1
    return m


def cameras(layout: Layout, n_views: int, seed: int, views_from: str = "around") -> np.ndarray:
    """[n, 4, 4] world-to-camera matrices (OpenCV axes): each looks down at a different spot of the
    field, from every side, so that every object is seen by several cameras from several angles;
    from 5-11 m away and 2.5-6.5 m up ("around"), or from 0.5-2 m aside and 4-8 m up ("above")."""
    rng = np.random.default_rng([seed, 0xCA3])
    i = np.arange(n_views)
    target = np.stack([(i * 0.7548776662 + 0.5) % 1, (i * 0.5698402910 + 0.5) % 1], -1)  # R2 sequence
    target = np.concatenate([(target * 2 - 1) * layout.half_field, np.zeros((n_views, 1))], -1)
    azimuth = 2 * math.pi * ((i * 0.6180339887) % 1)
    near, far, low, high = (5.0, 11.0, 2.5, 6.5) if views_from == "around" else (0.5, 2.0, 4.0, 8.0)
    distance = rng.uniform(near, far, n_views)
    eye = target + np.stack(
        [distance * np.cos(azimuth), distance * np.sin(azimuth), rng.uniform(low, high, n_views)], -1
    )
    viewmats = np.zeros((n_views, 4, 4))
    for k in range(n_views):
        forward = (target[k] - eye[k]) / np.linalg.norm(target[k] - eye[k])
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        R = np.stack([right, down, forward])
        viewmats[k, :3, :3], viewmats[k, :3, 3], viewmats[k, 3, 3] = R, -R @ eye[k], 1
    return viewmats


def focal_length(width: int) -> float:
    """60 degrees of horizontal field of view."""
    return width / 2 / math.tan(math.radians(30))


ROWS_PER_CHUNK = 32
"""Image rows ray cast at once: a chunk's rays and hits stay a few tens of MB at any resolution (a
3840x2160 view cast whole needed ~4 GB)."""


def render(layout: Layout, viewmat: np.ndarray, width: int, height: int, supersample: int = 2) -> np.ndarray:
    """[height, width, 3] uint8 image by ray casting, `ROWS_PER_CHUNK` rows at a time; each object is
    tested only on the pixels of its bounding sphere's screen rectangle, so the cost grows with what
    a camera sees, not the field."""
    return np.concatenate(
        [
            _render_rows(layout, viewmat, width, height, supersample, top, min(top + ROWS_PER_CHUNK, height))
            for top in range(0, height, ROWS_PER_CHUNK)
        ]
    )


def _render_rows(
    layout: Layout, viewmat: np.ndarray, width: int, height: int, supersample: int, top: int, bottom: int
) -> np.ndarray:
    """Image rows [top, bottom) of `render`: every pixel's colour depends on its own rays only."""
    W, H, f = width * supersample, height * supersample, focal_length(width) * supersample
    R, eye = viewmat[:3, :3], -viewmat[:3, :3].T @ viewmat[:3, 3]
    first, last = top * supersample, bottom * supersample
    v, u = np.mgrid[first:last, 0:W]
    rays = np.stack([(u + 0.5 - W / 2) / f, (v + 0.5 - H / 2) / f, np.ones(v.shape)], -1) @ R
    rays = (rays / np.linalg.norm(rays, axis=-1, keepdims=True)).reshape(-1, 3)

    b = rays @ eye  # the sky dome (centred at the origin; the eye is inside)
    t_dome = -b + np.sqrt(b * b - (eye @ eye - layout.sky_radius**2))
    with np.errstate(divide="ignore"):
        t_floor = np.where(rays[:, 2] < 0, -eye[2] / rays[:, 2], np.inf)
    floor = t_floor < t_dome
    depth = np.where(floor, t_floor, t_dome)
    hit = eye + depth[:, None] * rays
    colour = np.where(floor[:, None], layout.floor_colour(hit), layout.sky_colour(hit))

    centres = (layout.centre - eye) @ R.T
    for k in np.flatnonzero(centres[:, 2] > -layout.bound):
        pixels = _screen_rectangle(centres[k], layout.bound[k], f, W, H)
        if pixels is None:
            continue
        (u0, u1), (v0, v1) = pixels
        v0, v1 = max(v0, first), min(v1, last)
        if v0 >= v1:
            continue
        index = (np.arange(v0 - first, v1 - first)[:, None] * W + np.arange(u0, u1)).ravel()
        t, normal = _intersect(layout, k, eye, rays[index])
        closer = t < depth[index]
        index, t, normal = index[closer], t[closer], normal[closer]
        depth[index] = t
        colour[index] = layout.object_colour(np.full(len(index), k), eye + t[:, None] * rays[index], normal)
    image = colour.reshape(bottom - top, supersample, width, supersample, 3).mean(axis=(1, 3))
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def _screen_rectangle(centre: np.ndarray, radius: float, f: float, W: int, H: int):
    """((u0, u1), (v0, v1)) pixel ranges covering a sphere in camera space, or None when off screen."""
    ranges = []
    for axis, size in ((0, W), (1, H)):
        a, z = centre[axis], centre[2]
        reach = math.hypot(a, z)
        if reach <= radius * 1.001:
            ranges.append((0, size))
            continue
        mid, half = math.atan2(a, z), math.asin(radius / reach)
        lo = math.floor(math.tan(mid - half) * f + size / 2) if mid - half > -math.pi / 2 else 0
        hi = math.ceil(math.tan(mid + half) * f + size / 2) + 1 if mid + half < math.pi / 2 else size
        lo, hi = max(0, lo), min(size, hi)
        if lo >= hi:
            return None
        ranges.append((lo, hi))
    return ranges


def _intersect(layout: Layout, k: int, eye: np.ndarray, rays: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Distance (inf on a miss) and world normal where `rays` from `eye` first meet object k."""
    oc = eye - layout.centre[k]
    if not layout.is_box[k]:
        b = rays @ oc
        disc = b * b - (oc @ oc - layout.radius[k] ** 2)
        t = np.where(disc > 0, -b - np.sqrt(np.maximum(disc, 0)), np.inf)
        t = np.where(t > 1e-6, t, np.inf)
        return t, (oc + t[:, None] * rays) / layout.radius[k]
    rot = _yaw_matrices(layout.yaw[k : k + 1])[0]
    origin, direction = rot.T @ oc, rays @ rot  # box frame
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-layout.half[k] - origin) / direction
        t2 = (layout.half[k] - origin) / direction
    near = np.minimum(t1, t2)
    t_in, t_out = near.max(-1), np.maximum(t1, t2).min(-1)
    t = np.where((t_out >= t_in) & (t_in > 1e-6), t_in, np.inf)
    axis = near.argmax(-1)
    normal = np.zeros_like(rays)
    normal[np.arange(len(rays)), axis] = -np.sign(direction[np.arange(len(rays)), axis])
    return t, normal @ rot.T


def _sample_objects(layout: Layout, index: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Uniform points (and normals) on the visible surfaces of objects `index`."""
    n = len(index)
    normal = rng.normal(size=(n, 3))
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    point = layout.centre[index] + layout.radius[index, None] * normal
    box = layout.is_box[index]
    if box.any():
        k = index[box]
        area = layout.face_area[k]
        face = (rng.random(len(k))[:, None] * area.sum(-1, keepdims=True) > np.cumsum(area, -1)).sum(-1)
        axis = np.array([0, 0, 1, 1, 2])[face]
        sign = np.array([1.0, -1.0, 1.0, -1.0, 1.0])[face]
        local = rng.uniform(-1, 1, (len(k), 3)) * layout.half[k]
        rows = np.arange(len(k))
        local[rows, axis] = sign * layout.half[k][rows, axis]
        local_normal = np.zeros((len(k), 3))
        local_normal[rows, axis] = sign
        rot = _yaw_matrices(layout.yaw[k])
        point[box] = layout.centre[k] + np.einsum("nij,nj->ni", rot, local)
        normal[box] = np.einsum("nij,nj->ni", rot, local_normal)
    return point, normal


def _points(layout: Layout, spec: SceneSpec, start: int, stop: int) -> Tuple[np.ndarray, np.ndarray]:
    """Points [start, stop) of the scene: objects first (contiguous per object, by surface area),
    then the floor, then the sky dome; drawn from the random stream of their chunk."""
    rng = np.random.default_rng([spec.seed, start // CHUNK])
    n_objects = round(spec.gaussians * FRACTIONS[0])
    n_floor = round(spec.gaussians * FRACTIONS[1])
    i = np.arange(start, stop)
    xyz, rgb = np.zeros((len(i), 3)), np.zeros((len(i), 3))

    on_object = i < n_objects
    if on_object.any():
        share = np.cumsum(layout.area) / layout.area.sum()
        index = np.minimum(np.searchsorted(share, (i[on_object] + 0.5) / n_objects), len(share) - 1)
        point, normal = _sample_objects(layout, index, rng)
        xyz[on_object], rgb[on_object] = point, layout.object_colour(index, point, normal)

    on_floor = (i >= n_objects) & (i < n_objects + n_floor)
    if on_floor.any():
        point = np.concatenate(
            [rng.uniform(-layout.floor_half, layout.floor_half, (on_floor.sum(), 2)), np.zeros((on_floor.sum(), 1))], -1
        )
        xyz[on_floor], rgb[on_floor] = point, layout.floor_colour(point)

    on_sky = i >= n_objects + n_floor
    if on_sky.any():
        direction = rng.normal(size=(on_sky.sum(), 3))
        direction[:, 2] = np.abs(direction[:, 2])
        point = layout.sky_radius * direction / np.linalg.norm(direction, axis=-1, keepdims=True)
        xyz[on_sky], rgb[on_sky] = point, layout.sky_colour(point)
    return xyz, (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def generate(out_dir: Path, spec: SceneSpec) -> Dict[str, float]:
    """Write the scene of `spec` into `out_dir` (images/ + colmap/sparse/0/); returns its sizes and
    the seconds each part took. The manifest (synthetic.json) is written last: its presence, equal
    to `spec`, means the scene is complete."""
    out_dir = Path(out_dir)
    images_dir, sparse_dir = out_dir / "images", out_dir / "colmap" / "sparse" / "0"
    images_dir.mkdir(parents=True, exist_ok=True)
    sparse_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for stale in sparse_dir.glob("points3D.*"):
        stale.unlink()
    layout = Layout(spec.objects, spec.seed)
    viewmats = cameras(layout, spec.views, spec.seed, spec.views_from)
    names = [f"view_{i:05d}.png" for i in range(spec.views)]

    t0 = time.perf_counter()
    workers = min(os.cpu_count() or 1, spec.views)
    jobs = [(spec, viewmat, images_dir / name) for viewmat, name in zip(viewmats, names)]
    if workers > 1 and spec.width * spec.height * spec.views > PARALLEL_PIXELS:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_write_view, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        for job in jobs:
            _write_view(job)
    write_pinhole_camera(sparse_dir, spec.width, spec.height, focal_length(spec.width))
    write_images(sparse_dir, viewmats, names)
    t1 = time.perf_counter()
    with PointsWriter(sparse_dir, spec.gaussians, spec.points_format) as writer:
        for start in range(0, spec.gaussians, CHUNK):
            writer.write(*_points(layout, spec, start, min(start + CHUNK, spec.gaussians)))
    t2 = time.perf_counter()
    points_file = sparse_dir / f"points3D.{spec.points_format}"
    stats = {
        "gaussians": spec.gaussians,
        "views": spec.views,
        "objects": spec.objects,
        "points_mb": points_file.stat().st_size / 2**20,
        "images_s": t1 - t0,
        "points_s": t2 - t1,
    }
    (out_dir / MANIFEST).write_text(json.dumps({"spec": asdict(spec), "stats": stats}, indent=1))
    return stats


def _write_view(job: Tuple[SceneSpec, np.ndarray, Path]) -> None:
    """Render one view of a scene and write it (one task of the pool: the layout is rebuilt from the
    seed, the same everywhere, rather than sent)."""
    spec, viewmat, path = job
    Image.fromarray(render(_layout(spec.objects, spec.seed), viewmat, spec.width, spec.height)).save(path)


@functools.lru_cache(maxsize=1)
def _layout(objects: int, seed: int) -> Layout:
    return Layout(objects, seed)


def is_complete(out_dir: Path, spec: SceneSpec) -> bool:
    """Whether `out_dir` already holds the finished scene of `spec` (a cache hit)."""
    manifest = Path(out_dir) / MANIFEST
    return manifest.exists() and json.loads(manifest.read_text())["spec"] == asdict(spec)


def parse_count(text: str) -> int:
    """A count such as 2000000, 2e6 or 2_000_000."""
    value = float(text.replace("_", ""))
    if value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return int(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--gaussians", type=parse_count, default=SceneSpec.gaussians, help="points in points3D")
    parser.add_argument("--views", type=int, default=SceneSpec.views)
    parser.add_argument("--width", type=int, default=SceneSpec.width)
    parser.add_argument("--height", type=int, default=SceneSpec.height)
    parser.add_argument("--objects", type=int, default=SceneSpec.objects)
    parser.add_argument("--seed", type=int, default=SceneSpec.seed)
    parser.add_argument(
        "--points-format",
        choices=["bin", "txt"],
        default=SceneSpec.points_format,
        help="points3D.bin (fast at any size) or points3D.txt",
    )
    parser.add_argument("--views-from", choices=["around", "above"], default=SceneSpec.views_from)
    args = parser.parse_args()
    spec = SceneSpec(
        args.gaussians,
        args.views,
        args.width,
        args.height,
        args.objects,
        args.seed,
        args.points_format,
        args.views_from,
    )
    stats = generate(args.out_dir, spec)
    print(
        f"{args.out_dir}: {spec.gaussians:,} points ({stats['points_mb']:.0f} MB, {stats['points_s']:.1f} s), "
        f"{spec.views} views of {spec.width}x{spec.height} ({stats['images_s']:.1f} s), {spec.objects} objects"
    )


if __name__ == "__main__":
    main()
