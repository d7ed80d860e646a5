"""What a run tells about itself: per-phase step times and memory, start-up stages, rank records."""
