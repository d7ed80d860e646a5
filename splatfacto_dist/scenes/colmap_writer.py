"""Writing a COLMAP model (cameras, images, points3D) that nerfstudio's stock `colmap` dataparser reads.

Shared by the generated scenes (`scene`, `synthetic`) so they agree on one format. Points are
streamed in chunks: a synthetic scene may have tens of millions of them, more than should ever be
held as text in memory. Every point carries error 0.5 and a one-element track (image 1, keypoint
0): the dataparser reads neither unless asked for 2D matches, but COLMAP's own tools expect a track.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import TracebackType
from typing import List, Literal, Optional, Type

import numpy as np

PointsFormat = Literal["txt", "bin"]

# points3D.bin's record: id, xyz, rgb, error, track length, then (image id, keypoint index) pairs.
_POINT_RECORD = np.dtype(
    [("id", "<u8"), ("xyz", "<f8", 3), ("rgb", "u1", 3), ("error", "<f8"), ("track_length", "<u8"), ("track", "<i4", 2)]
)


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """COLMAP's scalar-first quaternion of a rotation matrix."""
    w = math.sqrt(max(0.0, 1 + R[0, 0] + R[1, 1] + R[2, 2])) / 2
    x = math.copysign(math.sqrt(max(0.0, 1 + R[0, 0] - R[1, 1] - R[2, 2])) / 2, R[2, 1] - R[1, 2])
    y = math.copysign(math.sqrt(max(0.0, 1 - R[0, 0] + R[1, 1] - R[2, 2])) / 2, R[0, 2] - R[2, 0])
    z = math.copysign(math.sqrt(max(0.0, 1 - R[0, 0] - R[1, 1] + R[2, 2])) / 2, R[1, 0] - R[0, 1])
    return np.array([w, x, y, z])


def write_pinhole_camera(sparse_dir: Path, width: int, height: int, focal: float) -> None:
    """cameras.txt with one pinhole camera (id 1) centred on the image, shared by every image."""
    (sparse_dir / "cameras.txt").write_text(f"1 PINHOLE {width} {height} {focal} {focal} {width / 2} {height / 2}\n")


def write_images(sparse_dir: Path, viewmats: np.ndarray, names: List[str]) -> None:
    """images.txt from world-to-camera matrices (OpenCV axes); no keypoints (an empty second line)."""
    lines = []
    for i, (viewmat, name) in enumerate(zip(viewmats, names)):
        q, t = rotmat_to_qvec(viewmat[:3, :3]), viewmat[:3, 3]
        lines.append(f"{i + 1} {' '.join(f'{x:.9f}' for x in (*q, *t))} 1 {name}\n\n")
    (sparse_dir / "images.txt").write_text("".join(lines))


class PointsWriter:
    """points3D.txt or points3D.bin written chunk by chunk; ids count from 1 across chunks.

    The binary file states its point count up front, so `total` must be known when it is opened;
    writing a different number of points is an error (the file would not parse).
    """

    def __init__(self, sparse_dir: Path, total: int, fmt: PointsFormat = "txt") -> None:
        self.path = sparse_dir / f"points3D.{fmt}"
        self.total, self.fmt, self.written = total, fmt, 0
        self._file = open(self.path, "wb")
        if fmt == "bin":
            self._file.write(np.uint64(total).tobytes())

    def write(self, xyz: np.ndarray, rgb: np.ndarray) -> None:
        """Append [n, 3] positions (float) and [n, 3] colours (uint8)."""
        n = len(xyz)
        if self.written + n > self.total:
            raise ValueError(f"{self.path}: more than the {self.total} points announced")
        first = self.written + 1
        if self.fmt == "bin":
            records = np.zeros(n, dtype=_POINT_RECORD)
            records["id"] = np.arange(first, first + n)
            records["xyz"] = xyz
            records["rgb"] = rgb
            records["error"] = 0.5
            records["track_length"] = 1
            records["track"] = (1, 0)
            self._file.write(records.tobytes())
        else:
            text = "".join(
                f"{j} {x:.6f} {y:.6f} {z:.6f} {r} {g} {b} 0.5 1 0\n"
                for j, (x, y, z), (r, g, b) in zip(range(first, first + n), xyz.tolist(), rgb.tolist())
            )
            self._file.write(text.encode())
        self.written += n

    def close(self) -> None:
        self._file.close()
        if self.written != self.total:
            raise ValueError(f"{self.path}: {self.written} points written, {self.total} announced")

    def __enter__(self) -> "PointsWriter":
        return self

    def __exit__(
        self, kind: Optional[Type[BaseException]], error: Optional[BaseException], trace: Optional[TracebackType]
    ) -> None:
        if kind is None:
            self.close()
        else:
            self._file.close()
