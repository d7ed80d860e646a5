"""Rendering: gsplat's rasterization on CUDA and its PyTorch reference on the CPU (one tile rule for
both), and the SSIM loss (a fused kernel on CUDA)."""
