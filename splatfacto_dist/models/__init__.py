"""The splatfacto subclass: render (through the Gaussian layout) and loss, initial Gaussians drawn
alike on every rank, camera maths, metrics."""
