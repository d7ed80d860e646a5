"""splatfacto-dist-demo: a complete training of the embedded scene, then its held-out views and metrics."""
