"""Start-up of large scenes: points3D.bin read in bulk and the initial scales' neighbour search
give exactly what stock nerfstudio gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig
from nerfstudio.data.utils import colmap_parsing_utils as stock
from nerfstudio.models.splatfacto import SplatfactoModel

from splatfacto_dist.data.datamanager import ShardedFullImageDatamanagerConfig
from splatfacto_dist.models.model import nearest_distances
from splatfacto_dist.scenes.colmap_points import BulkPointsColmapDataParser, read_points3d_binary
from splatfacto_dist.scenes.synthetic import SceneSpec, generate


def _write_points(path, count: int, seed: int = 0) -> None:
    """A points3D.bin whose tracks have 0 to 5 elements (sparse ids, as COLMAP writes them)."""
    rng = np.random.default_rng(seed)
    points = {}
    for i in range(count):
        length = int(rng.integers(0, 6))
        point_id = 3 * i + 7
        points[point_id] = stock.Point3D(
            id=point_id,
            xyz=rng.normal(size=3),
            rgb=rng.integers(0, 256, size=3),
            error=rng.random(),
            image_ids=rng.integers(1, 50, size=length),
            point2D_idxs=rng.integers(0, 1000, size=length),
        )
    stock.write_points3D_binary(points, path)


def test_bulk_reader_equals_stock_reader(tmp_path):
    path = tmp_path / "points3D.bin"
    _write_points(path, 3000)
    points = stock.read_points3D_binary(path).values()
    bulk = read_points3d_binary(path)
    assert np.array_equal(bulk["xyz"], np.array([p.xyz for p in points]))
    assert np.array_equal(bulk["rgb"], np.array([p.rgb for p in points], dtype=np.uint8))
    assert np.array_equal(bulk["error"], np.array([p.error for p in points]))
    assert np.array_equal(bulk["track_length"], np.array([len(p.image_ids) for p in points]))
    assert bulk["track_length"].min() == 0 and bulk["track_length"].max() == 5


def test_truncated_points_file_is_one_clear_error(tmp_path):
    path = tmp_path / "points3D.bin"
    _write_points(path, 10)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="ends inside a point"):
        read_points3d_binary(path)


def test_colmap_parser_outputs_equal_stock_and_the_datamanager_uses_it(tmp_path):
    scene = tmp_path / "scene"
    generate(scene, SceneSpec(gaussians=4000, views=6, width=32, height=24, objects=4))
    ours = BulkPointsColmapDataParser(ColmapDataParserConfig(data=scene)).get_dataparser_outputs("train")
    theirs = ColmapDataParserConfig(data=scene).setup().get_dataparser_outputs("train")
    for key in ("points3D_xyz", "points3D_rgb", "points3D_error", "points3D_num_points2D"):
        assert ours.metadata[key].dtype == theirs.metadata[key].dtype, key
        assert torch.equal(ours.metadata[key], theirs.metadata[key]), key
    manager = ShardedFullImageDatamanagerConfig(dataparser=ColmapDataParserConfig(data=scene)).setup(device="cpu")
    assert type(manager.dataparser) is BulkPointsColmapDataParser


def test_neighbour_distances_equal_stock_for_all_points_and_for_one_shard():
    generator = torch.Generator().manual_seed(0)
    points = torch.rand((5000, 3), generator=generator)
    points[10] = points[11]  # a duplicate: distance 0 to its twin
    expected, _ = SplatfactoModel.k_nearest_sklearn(None, points, 3)  # type: ignore[arg-type]
    assert torch.equal(nearest_distances(points, points, 3), torch.from_numpy(expected))
    shard = slice(1700, 3400)
    assert torch.equal(nearest_distances(points, points[shard], 3), torch.from_numpy(expected[shard]))
    with pytest.raises(ValueError, match="3 initial points"):
        nearest_distances(points[:3], points[:3], 3)
