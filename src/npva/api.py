"""npva from Python: load a trained avatar and render any camera at any frame.

    from npva.api import load_avatar_run

    run = load_avatar_run("RUN_DIR")                       # or a checkpoint file; device="cuda"
    view = run.render("E057_Cheeks_Puffed", "000220", "400029")
    view.image                                             # (H, W, 3) float in [0, 1], on run.device
    view.depth                                             # (H, W) camera z in mm, 0 where none
    run.render(seq, frame, run.camera("400029").resized(512, 334))   # any npva.geometry.Camera

The subject and preprocessing output default to the ones the run was trained on. Rendering is in
evaluation mode (the encoder's mean, no jitter) through `Avatar.render`, the avatar's one forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from npva.data.frames import FrameDrive
from npva.data.prepared import PreparedSubject
from npva.eval.loading import EvalContext, open_checkpoint
from npva.eval.render import RenderedView, render_view
from npva.geometry.camera import Camera
from npva.model.avatar import Avatar


@dataclass
class AvatarRun:
    """A trained avatar with the subject it renders frames of."""

    context: EvalContext

    @property
    def avatar(self) -> Avatar:
        return self.context.avatar

    @property
    def subject(self) -> PreparedSubject:
        return self.context.prepared

    @property
    def device(self) -> torch.device:
        return self.context.device

    def camera(self, name: str) -> Camera:
        """Capture camera `name` at the training size."""
        return self.subject.camera(name)

    def drive(self, seq: str, frame: str) -> FrameDrive:
        """The driving inputs of (seq, frame), on the avatar's device."""
        return self.subject.drive(seq, frame, self.avatar.inputs).to(self.device)

    def render(self, seq: str, frame: str, camera: str | Camera, full: bool = False) -> RenderedView:
        """(seq, frame) seen from `camera` (a capture camera's name, or any camera with an image size):
        the pixels the coarse mesh covers, or every pixel with `full` (see npva.eval.render)."""
        if isinstance(camera, str):
            camera = self.camera(camera)
        return render_view(self.avatar, self.drive(seq, frame), camera, full)


def load_avatar_run(
    path: str | Path,
    subject: str | Path | None = None,
    gendir: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> AvatarRun:
    """The avatar of a checkpoint file or run directory (its newest checkpoint), ready to render on
    `device`; subject and gendir default to the ones it was trained on."""
    return AvatarRun(
        open_checkpoint(
            Path(path),
            None if subject is None else Path(subject),
            None if gendir is None else Path(gendir),
            device,
        )
    )
