"""The trainable avatar: networks, radiance decoder, background, and what it keeps of preprocessing.

`Avatar` holds the encoder and decoders (AvatarNetwork), the radiance decoder, an optional background
model, and, as buffers, the subject's UV template: the per-texel mean position map, the scalar std of
the position maps, the UV coverage, the UV grid mesh and the mouth texels. A checkpoint of its
state_dict therefore renders without the preprocessing directory.

Background (method.md section 8). A ray's colour is composited over a background colour:
colour + (1 - opacity) * background, so rays that reach no neural point show the background alone.
- "learned" (default): one RGB colour per training camera, learned with the rest. Multiface photos show
  a grey studio wall and the body behind the head; a per-camera constant absorbs what the points do
  not cover instead of pushing the points to paint it. A camera the avatar was not trained on gets the
  mean of the learned colours.
- "black": missed rays are black and the photo is compared unmasked (the authors' behaviour).
- "mask": missed rays are black and the loss only sees pixels inside the mask (the engine zeroes the
  colour error outside it).

Mixed precision: on CUDA the networks (encoder, map decoders, radiance MLP) may run under bfloat16
autocast, but geometry never does: positions are hundreds of millimetres, which bfloat16 (8 bits of
mantissa) would round by a millimetre or more. Decoded maps and radiance leave the autocast region as
float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from npva.config import ModelConfig, RenderConfig
from npva.errors import NpvaError
from npva.model.decoding import make_radiance_decoder
from npva.model.networks import AvatarNetwork, DecodedMaps
from npva.model.render import RenderOutput, UVTemplate, all_pixels, build_scene, render_rays
from npva.preprocess.gendir import GenDir, read_manifest, read_stats, read_uv_layout
from npva.timing import stage
from npva.train.data import TrainSample

BACKGROUNDS = ("learned", "black", "mask")
PRECISIONS = {"bf16": torch.bfloat16, "fp32": None}  # train.precision -> autocast dtype of the networks


class PerCamera(nn.Module):
    """Parameters learned per training camera: one row per name in `camera_names`, looked up by name.
    A checkpoint records the names, and loading it into a module of other cameras fails."""

    learned = "parameters"  # what is learned per camera, for the error message

    def __init__(self, camera_names: Sequence[str]):
        super().__init__()
        if not camera_names:
            raise ValueError(f"{self.learned} per camera need at least one camera")
        self.camera_names = [str(name) for name in camera_names]
        self._row = {name: i for i, name in enumerate(self.camera_names)}

    def row(self, camera_name: str) -> int | None:
        """The row of `camera_name`, None for a camera not trained on."""
        return self._row.get(str(camera_name))

    def get_extra_state(self) -> dict[str, Any]:
        return {"camera_names": list(self.camera_names)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if list(state["camera_names"]) != self.camera_names:
            raise ValueError(
                f"{self.learned} were learned for cameras {state['camera_names']}, "
                f"this avatar has {self.camera_names}"
            )


class CameraBackground(PerCamera):
    """A learned RGB colour per camera name: colours (N, 3), one row per name in `camera_names`."""

    learned = "background colours"

    def __init__(self, camera_names: Sequence[str], initial: torch.Tensor | None = None):
        super().__init__(camera_names)
        if initial is None:
            initial = torch.full((len(self.camera_names), 3), 0.5)
        if initial.shape != (len(self.camera_names), 3):
            raise ValueError(
                f"expected initial colours ({len(self.camera_names)}, 3), got {tuple(initial.shape)}"
            )
        self.colours = nn.Parameter(initial.detach().float().clone())

    def forward(self, camera_name: str) -> torch.Tensor:
        """(3,) colour of `camera_name`; the mean colour for a camera not trained on."""
        row = self.row(camera_name)
        return self.colours.mean(0) if row is None else self.colours[row]


class CameraColour(PerCamera):
    """A learned colour calibration per camera: the avatar's colour as camera c sees it is
    gain_c * colour + bias_c (per RGB channel), as the colour calibration of Multiface's own models.

    Real rigs differ slightly in colour response from camera to camera; without this the decoder's view
    dependence learns each training camera's response, which then does not carry over to other views.
    The calibrations are normalized to the cameras' average (gain_c = exp(a_c - mean a), bias_c = b_c -
    mean b), so that the average camera sees the avatar itself and a camera not trained on gets that
    neutral calibration (gain 1, bias 0). The parameters start there.
    """

    learned = "colour calibrations"

    def __init__(self, camera_names: Sequence[str]):
        super().__init__(camera_names)
        self.log_gains = nn.Parameter(torch.zeros(len(self.camera_names), 3))
        self.biases = nn.Parameter(torch.zeros(len(self.camera_names), 3))

    def forward(self, camera_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(gain (3,), bias (3,)) of `camera_name`; (1, 0) for a camera not trained on."""
        row = self.row(camera_name)
        if row is None:
            return torch.ones_like(self.biases[0]), torch.zeros_like(self.biases[0])
        gain = torch.exp(self.log_gains[row] - self.log_gains.mean(0))
        return gain, self.biases[row] - self.biases.mean(0)


def calibrated(
    colour: torch.Tensor,
    opacity: torch.Tensor,
    background: torch.Tensor | None,
    gain: torch.Tensor,
    bias: torch.Tensor,
) -> torch.Tensor:
    """Ray colours (R, 3) = foreground + (1 - opacity) background with the foreground, what the avatar
    itself contributes, seen through a camera's calibration: gain * foreground + opacity * bias. The
    background (3,) or None (black) is the camera's own learned colour and is left as it is."""
    behind = 0.0 if background is None else (1.0 - opacity)[:, None] * background
    return gain * (colour - behind) + opacity[:, None] * bias + behind


class Avatar(nn.Module):
    """AvatarNetwork + radiance decoder + background model + the subject's UV template.

    template: the mean position map (3, S, S), std, coverage (S, S) and UV grid mesh; mouth: (S, S)
    bool texels excluded from the mesh loss. background: one of BACKGROUNDS; camera_names: the
    training cameras, which get a learned background colour ("learned" only; initial colours (N, 3)
    optional) and, with camera_colour, a learned colour calibration (CameraColour).
    """

    def __init__(
        self,
        model: ModelConfig,
        render: RenderConfig,
        template: UVTemplate,
        mouth: torch.Tensor,
        background: str = "learned",
        camera_names: Sequence[str] = (),
        initial_background: torch.Tensor | None = None,
        camera_colour: bool = False,
    ):
        super().__init__()
        if background not in BACKGROUNDS:
            raise NpvaError(f"train.background must be one of {', '.join(BACKGROUNDS)}, got {background!r}")
        size = model.posmap_size
        if tuple(template.mean_map.shape) != (3, size, size):
            raise NpvaError(
                f"the position-map statistics are {tuple(template.mean_map.shape[-2:])} texels but "
                f"model.posmap_size is {size}: preprocess with --uv-size {size} or change the model"
            )
        if render.decoder.feature_dim != model.point_feature_channels:
            raise NpvaError(
                f"render.decoder.feature_dim ({render.decoder.feature_dim}) must equal the last entry of "
                f"model.feature_channels ({model.feature_channels[-1]})"
                + (", plus 3 for model.texture_features" if model.texture_features else "")
            )
        if render.decoder.colour_residual and not model.texture_features:
            raise NpvaError(
                "render.decoder.colour_residual corrects the texture colour of the point features: "
                "it needs model.texture_features"
            )
        if render.texture_lookup and not model.texture_features:
            raise NpvaError(
                "render.texture_lookup looks up the colour of the point features' RGB channels: "
                "it needs model.texture_features"
            )
        self.render_config = render
        self.background_mode = background
        self.network = AvatarNetwork(model)
        self.decoder = make_radiance_decoder(render.decoder)
        self.background = (
            CameraBackground(camera_names, initial_background) if background == "learned" else None
        )
        self.camera_colour = CameraColour(camera_names) if camera_colour else None
        self.register_buffer("mean_map", template.mean_map.detach().float().clone())
        self.register_buffer("pos_std", torch.tensor(float(template.std), dtype=torch.float64))
        self.register_buffer("coverage", template.coverage.detach().bool().clone())
        self.register_buffer("grid_faces", template.grid_faces.detach().long().clone())
        self.register_buffer("mouth", torch.as_tensor(mouth).detach().bool().clone())
        self.autocast_dtype: torch.dtype | None = None  # set by the engine for CUDA mixed precision

    @classmethod
    def from_gendir(
        cls,
        gendir: Path,
        model: ModelConfig,
        render: RenderConfig,
        background: str = "learned",
        camera_names: Sequence[str] = (),
        initial_background: torch.Tensor | None = None,
        camera_colour: bool = False,
    ) -> Avatar:
        """An untrained avatar with the UV template and statistics of a preprocessed subject."""
        template, mouth = read_template(gendir)
        return cls(
            model, render, template, mouth, background, camera_names, initial_background, camera_colour
        )

    @property
    def template(self) -> UVTemplate:
        return UVTemplate(self.mean_map, float(self.pos_std), self.coverage, self.grid_faces)

    def normalized_posmap(self, posmap: torch.Tensor) -> torch.Tensor:
        """Encoder input (P - mean) / std: posmap (3, S, S) or (B, 3, S, S) -> (B, 3, S, S)."""
        posmap = posmap[None] if posmap.dim() == 3 else posmap
        return (posmap - self.mean_map) / self.pos_std.float()

    def background_colour(self, camera_name: str) -> torch.Tensor | None:
        """(3,) colour behind the avatar in `camera_name`, None for black."""
        return None if self.background is None else self.background(camera_name)

    def _network_precision(self) -> contextlib.AbstractContextManager:
        """Autocast to autocast_dtype on this module's device, or nothing (float32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.mean_map.device.type, dtype=self.autocast_dtype)

    def forward(
        self,
        sample: TrainSample,
        pixels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> RenderOutput:
        """Render `sample` (its camera, head pose and encoder inputs, on this module's device) at
        pixels (R, 2) long (x, y), default every pixel. In training mode the latent code is sampled
        and the sampling bins jittered, both from `generator` (on the same device); in evaluation mode
        z = mu and no jitter."""
        with stage("networks"):
            with self._network_precision():
                mu, logstd = self.network.encode(sample.texture[None], self.normalized_posmap(sample.posmap))
            mu, logstd = mu.float(), logstd.float()
            z = self.network.latent(mu, logstd, generator)
            with self._network_precision():
                maps = self.network.decode(z, sample.texture[None])
            maps = DecodedMaps(*(m.float() for m in maps))
        cfg = self.render_config
        scene = build_scene(
            maps,
            self.template,
            sample.R,
            sample.t,
            sample.camera,
            cfg,
            self.network.cfg.mask_points_outside_uv,
            sample.full_texture,
        )
        if pixels is None:
            pixels = all_pixels(sample.camera.height, sample.camera.width, self.mean_map.device)
        background = self.background_colour(sample.cam)
        rays = render_rays(
            scene, self.decoder, pixels, cfg, self.training, generator, background, self._network_precision
        )
        if self.camera_colour is not None:
            rays.colour = calibrated(rays.colour, rays.opacity, background, *self.camera_colour(sample.cam))
        return RenderOutput(pixels=pixels, rays=rays, scene=scene, maps=maps, mu=mu, logstd=logstd)

    @torch.no_grad()
    def render_image(self, sample: TrainSample) -> tuple[torch.Tensor, RenderOutput]:
        """Every pixel of `sample`'s camera in evaluation mode: image (H, W, 3) and the render output.
        The module's mode is restored afterwards."""
        was_training = self.training
        self.eval()
        try:
            out = self(sample)
        finally:
            self.train(was_training)
        return out.to_image(out.rays.colour), out


def read_template(gendir: Path) -> tuple[UVTemplate, torch.Tensor]:
    """The UV template (mean map, std, coverage, grid mesh) and the mouth texels (S, S) bool of a
    preprocessed subject."""
    root = GenDir(Path(gendir))
    if read_manifest(root) is None:
        raise NpvaError(
            f"{root.root} is not a preprocessing output (no {root.manifest.name}): run npva preprocess first"
        )
    mean, std = read_stats(root)  # (S, S, 3), scalar
    coverage, grid_faces, mouth = read_uv_layout(root)
    mean_map = torch.from_numpy(np.ascontiguousarray(mean.transpose(2, 0, 1)))
    template = UVTemplate(
        mean_map=mean_map,
        std=std,
        coverage=torch.from_numpy(coverage.astype(bool)),
        grid_faces=torch.from_numpy(grid_faces),
    )
    return template, torch.from_numpy(mouth.astype(bool))
