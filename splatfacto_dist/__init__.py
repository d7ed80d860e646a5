"""splatfacto-dist: nerfstudio's splatfacto trained on many GPUs, processes and machines."""

from splatfacto_dist import legacy_paths

legacy_paths.install()

__version__ = "0.1.0"
