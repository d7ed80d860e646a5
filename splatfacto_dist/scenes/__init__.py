"""Scenes the project generates: the embedded demo and test scene (`scene`), the capacity
benchmark's synthetic scenes of any size (`synthetic`), and the COLMAP files both are written as
and read from (`colmap_writer`, `colmap_points`)."""
