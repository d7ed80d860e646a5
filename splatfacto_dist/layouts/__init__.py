"""Where the Gaussians live. `contract.GaussianLayout` is the few calls a training step makes;
`replicated` (every rank holds all) and `sharded` (each rank owns 1/N) implement it side by side."""
