"""Host offload (`--pipeline.model.offload`): a Gaussian's colour lives in host memory, its shape on
the GPU.

What stays and why. Culling and projection need 11 floats of a Gaussian (position 3, log-scale 3,
rotation 4, opacity 1); colour needs its 48 SH coefficients. Keeping the 11 on the GPU with their
gradient and both Adam moments (176 B, plus the densification statistics and the id: ~200 B)
lets every camera find its visible Gaussians where it renders, and every refine decide (all its
criteria read those 11 and the statistics). The 48 colour floats, their gradient and both Adam
moments (768 B) stay in host memory, as CLM (nyu-systems/CLM-GS) keeps them: they are 80% of
a Gaussian's bytes and a camera sees a small share of a large scene.

What moves (`working_set`). A render first projects the GPU-side rows into its cameras (no
graph, in chunks) to find the rows any of them sees; only those rows' colours cross to the GPU,
and only their gradients come back, added into the host gradient of the whole colour parameter.
The render itself, by either layout, is then a render of that working set: the same image (a
Gaussian outside every view draws nothing), the same per-row gradients, the same densification
statistics (mapped back to the owned rows by the layout).

The update. The host colour groups are stepped by torch's Adam on the host, every row every step
(dense: rows no camera saw decay their moments as on the GPU), so an offloaded run is the run it
replaces: bitwise on the CPU, where both use the same kernels.

`--pipeline.model.offload-adam sparse` is the other update: the gradients come back as sparse rows
and torch's SparseAdam steps only the colours a camera of the step saw (unseen rows keep their
moments), host work in proportion to what is visible; a different optimizer, so off by default.

Not yet here: pinned staging buffers with the copies on a second CUDA stream (the copies are
synchronous), and ordering the step's cameras for reuse.
"""
