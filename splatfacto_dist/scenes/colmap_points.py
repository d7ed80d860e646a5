"""COLMAP's points3D.bin read in bulk, and nerfstudio's COLMAP parser using it.

nerfstudio's reader builds one Python object per point with its whole track (~8 us per point):
for the tens of millions of points of a large scene that is minutes on every rank before the
first step. Splatfacto needs only positions, colours, errors and track lengths, which sit at fixed
places in each record; only the records' starts depend on the track lengths before them.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Dict

import numpy as np
import torch
from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParser

_HEAD = struct.Struct("<QdddBBBdQ")  # id, xyz, rgb, error, track length; then 8 bytes per track element
_CHUNK = 1 << 20  # records decoded at once: bounds the temporary [chunk, 51] byte array


def _record_starts(data: memoryview, count: int) -> np.ndarray:
    """Byte offset of each record: the one sequential dependency of the format."""
    starts = []
    append, track_length = starts.append, struct.Struct("<Q").unpack_from
    offset, head, length_at = 8, _HEAD.size, _HEAD.size - 8
    for _ in range(count):
        append(offset)
        offset += head + 8 * track_length(data, offset + length_at)[0]
    if offset > len(data):
        raise struct.error("the last track runs past the end")
    return np.array(starts, dtype=np.int64)


def read_points3d_binary(path: Path) -> Dict[str, np.ndarray]:
    """xyz [N, 3] float64, rgb [N, 3] uint8, error [N] float64 and track_length [N] int64 of every
    point, in file order (the order of nerfstudio's `read_points3D_binary` dict)."""
    raw = np.fromfile(path, dtype=np.uint8)
    if len(raw) < 8:
        raise ValueError(f"{path}: not a COLMAP points3D.bin (only {len(raw)} bytes)")
    count = int(raw[:8].view("<u8")[0])
    try:
        starts = _record_starts(memoryview(raw), count)
    except struct.error:
        raise ValueError(f"{path}: ends inside a point (truncated?); its header says {count} points") from None
    head = np.dtype(
        {
            "names": ["xyz", "rgb", "error", "track_length"],
            "formats": [("<f8", 3), ("u1", 3), "<f8", "<u8"],
            "offsets": [8, 32, 35, 43],
            "itemsize": _HEAD.size,
        }
    )
    out = {
        "xyz": np.empty((count, 3), np.float64),
        "rgb": np.empty((count, 3), np.uint8),
        "error": np.empty(count, np.float64),
        "track_length": np.empty(count, np.int64),
    }
    columns = np.arange(_HEAD.size)
    for begin in range(0, count, _CHUNK):
        rows = starts[begin : begin + _CHUNK]
        records = raw[rows[:, None] + columns].view(head)[:, 0]
        for name, array in out.items():
            array[begin : begin + len(rows)] = records[name]
    return out


class BulkPointsColmapDataParser(ColmapDataParser):
    """nerfstudio's COLMAP parser with points3D.bin read in bulk. The outputs are stock's, value for
    value; the per-point 2D matches (`max_2D_matches_per_3D_point` != 0) and points3D.txt still go
    through stock's reader."""

    def _load_3D_points(self, colmap_path: Path, transform_matrix: torch.Tensor, scale_factor: float):
        path = colmap_path / "points3D.bin"
        if self.config.max_2D_matches_per_3D_point != 0 or not path.exists():
            return super()._load_3D_points(colmap_path, transform_matrix, scale_factor)
        points = read_points3d_binary(path)
        xyz = torch.from_numpy(points["xyz"].astype(np.float32))
        xyz = torch.cat((xyz, torch.ones_like(xyz[..., :1])), -1) @ transform_matrix.T
        xyz *= scale_factor
        return {
            "points3D_xyz": xyz,
            "points3D_rgb": torch.from_numpy(points["rgb"]),
            "points3D_error": torch.from_numpy(points["error"].astype(np.float32)),
            "points3D_num_points2D": torch.from_numpy(points["track_length"]),
        }
