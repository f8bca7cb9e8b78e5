"""What every evaluation command starts from: a trained avatar, its subject, and the samples to show.

A checkpoint records the subject and preprocessing directories it was trained on; `--subject` and
`--gendir` override them (a run moved to another machine). Samples are rendered at the training size
(the preprocessing output holds masks and depth at that size only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from npva.config import ExperimentConfig
from npva.data.prepared import PreparedSubject
from npva.data.samples import AvatarDataset
from npva.errors import MissingFileError, NpvaError
from npva.io.splits import SIDES, split_cameras
from npva.io.subject import SubjectLayout
from npva.model.avatar import PRECISIONS, Avatar
from npva.model.fast.graphs import capture_inference_graphs
from npva.train.checkpoint import latest_checkpoint, load_avatar, load_checkpoint


@dataclass
class EvalContext:
    """A trained avatar (evaluation mode, on `device`) with its settings and where its data lives."""

    avatar: Avatar
    config: ExperimentConfig
    checkpoint: Path
    step: int
    prepared: PreparedSubject
    device: torch.device

    @property
    def subject(self) -> Path:
        return self.prepared.root

    @property
    def gendir(self) -> Path:
        return self.prepared.gendir.root

    @property
    def layout(self) -> SubjectLayout:
        return self.prepared.layout


def run_directory(checkpoint: Path) -> Path:
    """The run directory of a checkpoint file: RUN/checkpoints/step_N.pt -> RUN (else its folder)."""
    folder = Path(checkpoint).resolve().parent
    return folder.parent if folder.name == "checkpoints" else folder


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file, or a run directory's newest checkpoint."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise MissingFileError(path / "checkpoints", "checkpoint (the run has not saved one yet)")
        return found[0]
    if not path.exists():
        raise MissingFileError(path, "checkpoint file or run directory")
    return path


def open_checkpoint(
    path: Path,
    subject: Path | None = None,
    gendir: Path | None = None,
    device: str | torch.device = "cpu",
    cuda_graphs: bool = True,
) -> EvalContext:
    """Load the avatar of a checkpoint file or run directory for inference: evaluation mode, BatchNorm
    folded into its convolutions; on CUDA the networks in the precision they were trained in
    (train.precision, bfloat16 by default) and replayed from CUDA graphs unless `cuda_graphs` is off.
    subject and gendir default to the ones the checkpoint was trained on (gendir: SUBJECT/gendir when
    only the subject is given)."""
    path = resolve_checkpoint(path)
    state = load_checkpoint(path)
    if subject is None:
        if "subject" not in state:
            raise NpvaError(f"{path} does not record its subject: give --subject")
        subject = Path(state["subject"])
        if gendir is None:
            gendir = Path(state.get("gendir", subject / "gendir"))
    subject = Path(subject)
    gendir = Path(gendir) if gendir is not None else subject / "gendir"
    if not subject.is_dir():
        raise MissingFileError(subject, "subject directory (give --subject)")
    device = torch.device(device)
    avatar, config = load_avatar(path, device)
    avatar.network.fold_batchnorm()  # evaluation only: one launch less per BatchNorm layer
    if device.type == "cuda":
        avatar.autocast_dtype = PRECISIONS[config.train.precision]
        if cuda_graphs:
            capture_inference_graphs(avatar.network)
    return EvalContext(avatar, config, path, int(state["step"]), PreparedSubject(subject, gendir), device)


def parse_cameras(ctx: EvalContext, cameras: Sequence[str]) -> tuple[str, ...]:
    """Camera names from the command line: names, or "test" / "train" for that side of the subject's
    split (see npva.io.splits); empty means every camera."""
    chosen: list[str] = []
    for name in cameras:
        chosen.extend(split_cameras(ctx.subject, name) if name in SIDES else [name])
    return tuple(dict.fromkeys(chosen))


def read_img_list(ctx: EvalContext, img_list: str | Path) -> list[tuple[str, str]]:
    """The (seq, frame) pairs `img_list` names: a "<seq> <frame>" list file, "all" (the subject's
    frame_list.txt) or a split name ("test", "train": the subject's split, see npva.io.splits)."""
    return ctx.prepared.frames(str(img_list))


def evaluation_dataset(ctx: EvalContext, img_list: str | Path, cameras: Sequence[str] = ()) -> AvatarDataset:
    """Samples of the (seq, frame) pairs of `img_list` (see read_img_list) seen from `cameras`
    (names, "test"/"train", or every camera), at the training size, without caching."""
    data = dataclasses.replace(ctx.config.data, image_cache="none")
    names = ctx.prepared.camera_names(parse_cameras(ctx, cameras))
    frames = read_img_list(ctx, img_list)
    return AvatarDataset(ctx.prepared, frames, names, data, ctx.avatar.inputs.for_rendering())
