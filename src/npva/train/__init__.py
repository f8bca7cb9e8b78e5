"""Training: samples and ray sampling, losses, the training loop, checkpoints and distributed runs."""

from npva.model.avatar import Avatar, CameraBackground, read_template
from npva.train.checkpoint import latest_checkpoint, list_checkpoints, load_avatar, load_checkpoint
from npva.train.engine import TrainResult, Validation, evaluate, saved_run_config, train
from npva.train.presets import PRESETS, build_config, preprocessed_preset, preset_config

__all__ = [
    "PRESETS",
    "Avatar",
    "CameraBackground",
    "TrainResult",
    "Validation",
    "build_config",
    "evaluate",
    "latest_checkpoint",
    "list_checkpoints",
    "load_avatar",
    "load_checkpoint",
    "preprocessed_preset",
    "preset_config",
    "read_template",
    "saved_run_config",
    "train",
]
