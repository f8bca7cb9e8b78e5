"""The viewer attached to a training in progress (`npva train --view`).

The training calls the LiveView after every step; every `every` steps it copies the weights aside (a
copy of the state, no render), and the viewer's thread loads them into its own avatar before its next
picture (it renders only for connected browsers). Rendering thus never waits in the training loop; it
shares the machine's cores with it (docs/viewer.md has what that costs).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from npva.config import ExperimentConfig
from npva.data.prepared import PreparedSubject
from npva.eval.loading import EvalContext
from npva.model.avatar import Avatar
from npva.model.fast.graphs import without_graphs
from npva.view.scene import open_subject
from npva.view.server import Viewer, viser_module


class LiveView:
    """Call with (step, avatar) after each training step; the viewer opens at the first call."""

    def __init__(
        self,
        subject: Path,
        gendir: Path,
        run_dir: Path,
        config: ExperimentConfig,
        every: int,
        host: str = "127.0.0.1",
        port: int = 8080,
    ):
        if every < 1:
            raise ValueError(f"the viewer's weights are refreshed every N >= 1 steps, got {every}")
        viser_module()  # fail before training when viser is missing
        self.subject, self.gendir, self.run_dir = Path(subject), Path(gendir), Path(run_dir)
        self.config = config
        self.every, self.host, self.port = every, host, port
        self.viewer: Viewer | None = None
        self._staged: tuple[int, dict[str, torch.Tensor]] | None = None

    def __call__(self, step: int, avatar: Avatar) -> None:
        if self.viewer is None:
            self._open(step, avatar)
        elif step % self.every == 0:
            state = {
                k: v.detach().clone() if torch.is_tensor(v) else v for k, v in avatar.state_dict().items()
            }
            self._staged = (step, state)
            self.viewer.changed(weights=True)

    def _open(self, step: int, avatar: Avatar) -> None:
        own = without_graphs(copy.deepcopy(avatar)).eval().requires_grad_(False)
        device = next(own.parameters()).device
        prepared = PreparedSubject(self.subject, self.gendir)
        ctx = EvalContext(own, self.config, self.run_dir, step, prepared, device)
        self.viewer = Viewer(
            open_subject(ctx), self.run_dir / "view", self.host, self.port, before_render=self._load
        )
        self.viewer.status.content = f"weights of training step {step}"
        self.viewer.start()
        print(f"npva train: viewer at {self.viewer.url}", flush=True)

    def _load(self) -> None:
        """In the viewer's thread: take the newest staged weights, if any."""
        staged, self._staged = self._staged, None
        if staged is not None:
            step, state = staged
            self.viewer.subject.ctx.avatar.load_state_dict(state)
            self.viewer.subject.ctx.step = step
            self.viewer.status.content = f"weights of training step {step}"

    def close(self) -> None:
        if self.viewer is not None:
            self.viewer.close()
