"""Training data per rank: the rank-sharded datamanager (a rank loads only its shards' images), the
per-step camera schedule, and the measured camera costs that deal cameras to ranks."""
