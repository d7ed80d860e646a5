"""The training run: nerfstudio's trainer loop and pipeline made correct on N ranks (one step's path
in `trainer`), the optimizer step, batch scaling of Adam and schedules, checkpoints, rank control."""
