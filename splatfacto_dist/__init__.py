"""splatfacto-dist: nerfstudio's splatfacto trained on many GPUs, processes and machines."""

__version__ = "0.1.0"
