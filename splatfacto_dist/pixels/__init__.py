"""Pixel ranges: which rank renders which rows of an image (`plan`). A plan is pure arithmetic on
numbers every rank holds alike, so every rank derives the same one without a collective of its own."""
