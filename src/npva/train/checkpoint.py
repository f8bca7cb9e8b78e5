"""Training checkpoints: RUN_DIR/checkpoints/step_<8 digits>.pt, each written atomically.

A checkpoint is a dict that torch.load(weights_only=True) reads:
  format "npva-checkpoint", version, npva_version
  step (steps done), total_steps, epoch (step / steps_per_epoch), phase (GEP phase at that epoch)
  config: the ExperimentConfig as a plain dict
  model: the Avatar's state_dict (networks, radiance decoder, background colours with their camera
      names, and the UV template buffers, so the avatar renders without the preprocessing directory)
  cameras: the cameras of the learned background, in order
  subject, gendir: absolute paths of the subject and its preprocessing output at training time
      (where evaluation looks by default)
  optimizer, scheduler: their state_dicts
  gep: the GEP sampler's error maps
  rng: per process, the python, numpy, torch and CUDA generator states
  data: keys [(seq, frame, cam), ...] of the training samples, seed, position (the next step's place in
      the data order) and world_size
  perceptual: the name of the perceptual loss used ("lpips-vgg", "st-lpips-vgg", ...) or None
  rank_digests: per process, SHA-256 digests of its parameters and of its GEP error maps when saved
      (the processes must agree)
  sha256: SHA-256 of everything else (state_digest), checked on load so that a file damaged on disk is
      never used (files written before it existed load unchecked)

Checkpoints newer than the newest good one are damaged files a resumed run skipped; when it saves, they
are renamed to step_<n>.pt.damaged (kept, no longer counted) before the oldest checkpoints are pruned.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from npva.config import ExperimentConfig, merge_settings
from npva.errors import FormatError, MissingFileError, NpvaError
from npva.fileio import atomic_open, inside
from npva.model.avatar import Avatar
from npva.model.render import UVTemplate

log = logging.getLogger(__name__)

FORMAT = "npva-checkpoint"
VERSION = 1
REQUIRED_KEYS = (
    "format",
    "version",
    "npva_version",
    "step",
    "total_steps",
    "epoch",
    "phase",
    "config",
    "model",
    "cameras",
    "optimizer",
    "scheduler",
    "gep",
    "rng",
    "data",
    "perceptual",
    "rank_digests",
)
_NAME = re.compile(r"^step_(\d{8,})\.pt$")
DAMAGED_SUFFIX = ".damaged"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return inside(run_dir, checkpoint_dir(run_dir) / f"step_{step:08d}.pt")


def checkpoint_step(path: Path) -> int:
    """The step in a checkpoint file's name (step_<n>.pt)."""
    match = _NAME.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not named step_<n>.pt")
    return int(match[1])


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint files, oldest step first (temporary files of unfinished writes excluded)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _NAME.match(p.name)), key=checkpoint_step)


def _feed(digest: Any, value: Any) -> None:
    """Add a value of a checkpoint state to a hashlib digest: its type, structure and exact contents."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)}:".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)}:".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, list | tuple):
        digest.update(f"{type(value).__name__} {len(value)}:".encode())
        for item in value:
            _feed(digest, item)
    else:
        digest.update(f"{type(value).__name__} {value!r};".encode())


def state_digest(state: dict[str, Any]) -> str:
    """SHA-256 over every entry of a checkpoint state but "sha256" (keys, values, tensor bytes, in order)."""
    digest = hashlib.sha256()
    _feed(digest, {key: value for key, value in state.items() if key != "sha256"})
    return digest.hexdigest()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` with its SHA-256 to `path` atomically: a crash leaves the previous file or the
    complete new one."""
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {', '.join(missing)}")
    with atomic_open(path, "wb") as f:
        torch.save({**state, "sha256": state_digest(state)}, f)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The state of a checkpoint file; FormatError naming the file when it is not a complete one."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch reports damaged files with many exception types
        raise FormatError(path, f"not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FormatError(path, f"not an npva checkpoint (expected format {FORMAT!r})")
    if state.get("version") != VERSION:
        raise FormatError(path, f"checkpoint version {state.get('version')}, this npva reads {VERSION}")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise FormatError(path, f"incomplete checkpoint: no {', '.join(missing)}")
    if "sha256" in state and state["sha256"] != state_digest(state):
        raise FormatError(path, "damaged checkpoint: its contents do not match the SHA-256 stored in it")
    try:
        checkpoint_config(state)
    except (ValueError, TypeError, AttributeError) as exc:
        raise FormatError(path, f"checkpoint settings this npva cannot use: {exc}") from None
    return state


@contextlib.contextmanager
def model_fits(path: Path) -> Iterator[None]:
    """Report a model state that does not fit its settings (another architecture, wrong tensor shapes)
    as a FormatError naming the checkpoint, whatever the layer that finds out."""
    try:
        yield
    except (NpvaError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        lines = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in lines[:2])
        raise FormatError(path, f"its model does not fit its settings ({detail})") from None


def latest_checkpoint(run_dir: Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict] | None:
    """The newest readable checkpoint of a run and its state; None when the run has none. A damaged
    file (possible only through the disk itself, writes being atomic) is reported and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path, map_location)
        except FormatError as exc:
            log.warning("skipping damaged checkpoint: %s", exc)
    return None


def prune_checkpoints(run_dir: Path, newest: Path, keep: int) -> None:
    """After `newest` (a checkpoint just written, so good) is saved: set aside the checkpoints of later
    steps (damaged files a resume skipped: renamed to *.damaged, no longer counted), then delete all
    but the `keep` newest of the rest (at least `newest` is kept)."""
    step = checkpoint_step(newest)
    older = []
    for path in list_checkpoints(run_dir):
        if checkpoint_step(path) > step:
            aside = path.with_name(path.name + DAMAGED_SUFFIX)
            log.warning(
                "%s is newer than the last good checkpoint %s: renamed to %s", path, newest, aside.name
            )
            os.replace(path, aside)
        else:
            older.append(path)
    for path in older[: -max(1, keep)]:
        path.unlink(missing_ok=True)


def tensor_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over names and exact bytes of tensors, in the order given."""
    digest = hashlib.sha256()
    for name, tensor in named:
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def parameter_digest(module: nn.Module) -> str:
    """SHA-256 of a module's parameters (names and exact values, in registration order)."""
    return tensor_digest(module.named_parameters())


def checkpoint_config(state: dict[str, Any]) -> ExperimentConfig:
    """The settings a checkpoint was trained with."""
    return merge_settings(ExperimentConfig(), state["config"])


def load_avatar(path: Path, device: str | torch.device = "cpu") -> tuple[Avatar, ExperimentConfig]:
    """(Avatar in evaluation mode on `device`, ExperimentConfig) from a checkpoint file."""
    state = load_checkpoint(path)
    config = checkpoint_config(state)
    model_state = state["model"]
    with model_fits(path):
        template = UVTemplate(
            mean_map=model_state["mean_map"],
            std=float(model_state["pos_std"]),
            coverage=model_state["coverage"],
            grid_faces=model_state["grid_faces"],
        )
        avatar = Avatar(
            config.model,
            config.render,
            template,
            model_state["mouth"],
            background=config.train.background,
            camera_names=state["cameras"],
            camera_colour=config.train.camera_colour,
            loss=config.loss,
        )
        avatar.load_state_dict(model_state)
    return avatar.to(device).eval(), config


def generator_states(device: torch.device) -> dict[str, Any]:
    """This process's global generator states (python, numpy, torch, and CUDA on a CUDA device)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the legacy global state is what others draw from)
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_generator_states(state: dict[str, Any], device: torch.device) -> None:
    """Set the global generators to states from generator_states()."""
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def seed_global_generators(seed: int) -> None:
    """Seed the python, numpy and torch global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)
