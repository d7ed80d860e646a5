"""Densification that decides alike wherever a Gaussian is stored: gsplat's strategy with statistics
that meet through the layout, and id-keyed ops (pure functions on parameters and Adam state)."""
