"""Training: samples and ray sampling, losses, the training loop, checkpoints and distributed runs."""
