"""Gaussian-sharded layout: each rank owns a disjoint part of the Gaussians and their Adam state.

One render, data's path: every rank learns every camera of the render (a small all-gather) ->
each owner projects its shard into each camera, keeps the Gaussians visible there and colours
them for it (SH evaluated where the coefficients live), and sends each camera's rank the
projected pairs (means2d, conic, opacity, colour, depth, radius: 12 floats; one uneven
all-to-all) -> the camera's rank only rasterizes what it received, holding per received Gaussian
what rasterizing needs and not a re-projection's worth -> in backward the pairs' gradients take
the reverse all-to-all to the owners, through their projections, summed over cameras and
divided by the world size (the average a replicated run takes). After backward, per-pair
densification statistics return to the owners the same way, so an owner's statistics cover
every camera of the step and its refine decisions equal a replicated run's. Shards drift as they
densify; after a refine they are rebalanced. Checkpoints gather every shard
to rank 0's CPU in splatfacto's layout, in bounded chunks. After training, if the viewer stays
open, every rank keeps serving its renders (the model never has to fit on one GPU).

With pixel ranges (the default on several ranks) the camera's rank does not render its image
alone: every image of the render is rendered by all ranks in turn, each rank the tiles it was
cut; a training render leaves each rank a band of rows of every image for its share of the loss
(`range_loss`), other renders assemble the pixels on the camera's rank (`ranges`).

Modules, one concern each: `exchange` (a render's cameras and projected pairs between ranks, with
their gradients), `ranges` (a render in pixel ranges) with `range_plan` (where each range is cut),
`range_balance` (the tile price learnt from the ranges' times) and `range_loss` (each rank's band
of an image and its share of the loss), `rows` (a whole Gaussian as
one row), `rebalance` (evening out shards after a refine), `saving` (the whole model gathered in
chunks), `layout` (`ShardedLayout`, the `GaussianLayout` contract's calls, which use them).
"""

from splatfacto_dist.layouts.sharded.layout import ShardedLayout

__all__ = ["ShardedLayout"]
