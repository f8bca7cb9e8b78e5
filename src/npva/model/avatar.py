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

from npva.config import LossConfig, ModelConfig, RenderConfig
from npva.data.frames import FrameDrive, FrameInputs, TrackedMesh, ViewTargets
from npva.data.gendir import GenDir, read_manifest, read_stats, read_uv_layout
from npva.errors import ConfigError, NpvaError
from npva.geometry.camera import Camera
from npva.model.decoding import make_radiance_decoder
from npva.model.losses import compute_losses
from npva.model.networks import AvatarNetwork, DecodedMaps
from npva.model.points import point_texel_mask, point_texels, upsample_coarse_map
from npva.model.render import RenderOutput, UVTemplate, all_pixels, build_scene, render_rays
from npva.timing import stage

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


def _refresh_pos_std(avatar: Avatar, _incompatible_keys: object) -> None:
    """Load-state hook: the number form of the position-map std follows the loaded buffer."""
    avatar._pos_std = float(avatar.pos_std)


class Avatar(nn.Module):
    """AvatarNetwork + radiance decoder + background model + the subject's UV template.

    template: the mean position map (3, S, S), std, coverage (S, S) and UV grid mesh; mouth: (S, S)
    bool texels excluded from the mesh loss; loss: the loss weights (what loss_terms computes and
    which targets the avatar asks for). background: one of BACKGROUNDS; camera_names: the
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
        loss: LossConfig | None = None,
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
        if not render.decoder.mouth_correction and not model.texture_at_ray:
            raise ConfigError(
                "render.decoder.mouth_correction false finds the open mouth's rays on the tracked mesh: "
                f"it needs model.texture ray, got {model.texture!r}"
            )
        self.render_config = render
        self.loss_config = loss or LossConfig()
        self.background_mode = background
        self.network = AvatarNetwork(model)
        self.decoder = make_radiance_decoder(
            render.decoder, model.point_feature_channels, model.colour_residual
        )
        self.background = (
            CameraBackground(camera_names, initial_background) if background == "learned" else None
        )
        self.camera_colour = CameraColour(camera_names) if camera_colour else None
        self.register_buffer("mean_map", template.mean_map.detach().float().clone())
        self.register_buffer("pos_std", torch.tensor(float(template.std), dtype=torch.float64))
        # Also kept as a number, refreshed when a state is loaded: reading the buffer on a GPU every
        # frame would make the host wait for the work queued before it.
        self._pos_std = float(template.std)
        self.register_load_state_dict_post_hook(_refresh_pos_std)
        self.register_buffer("coverage", template.coverage.detach().bool().clone())
        # The neural points' texels, found once: finding them on a GPU makes the host wait.
        texels = point_texels(self.coverage, model.point_map_size)
        self.register_buffer("point_texels", texels, persistent=False)
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
        loss: LossConfig | None = None,
    ) -> Avatar:
        """An untrained avatar with the UV template and statistics of a preprocessed subject."""
        template, mouth = read_template(gendir)
        return cls(
            model, render, template, mouth, background, camera_names, initial_background, camera_colour, loss
        )

    @property
    def template(self) -> UVTemplate:
        texels = {self.network.cfg.point_map_size: self.point_texels}
        return UVTemplate(self.mean_map, self._pos_std, self.coverage, self.grid_faces, texels)

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

    @property
    def inputs(self) -> FrameInputs:
        """What this avatar reads of each frame (see frame_inputs)."""
        return frame_inputs(self.network.cfg, self.loss_config)

    def render(
        self,
        drive: FrameDrive,
        camera: Camera,
        pixels: torch.Tensor | str | None = None,
        generator: torch.Generator | None = None,
    ) -> RenderOutput:
        """Render the frame that `drive` describes (on this module's device) from `camera`.

        pixels: (R, 2) long (x, y); None or "all": every pixel; "covered": the pixels the decoded
        coarse mesh covers (its rasterized guide depth > 0), the others left to the background. In
        training mode the latent code is sampled and the sampling bins jittered, both from `generator`
        (on the same device); in evaluation mode z = mu and no jitter. This is the avatar's one forward.
        """
        with stage("networks"):
            with self._network_precision():
                mu, logstd = self.network.encode(drive.texture[None], self.normalized_posmap(drive.posmap))
            mu, logstd = mu.float(), logstd.float()
            z = self.network.latent(mu, logstd, generator)
            with self._network_precision():
                maps = self.network.decode(z, drive.texture[None])
            maps = DecodedMaps(*(m.float() for m in maps))
        cfg = self.render_config if self.training else self.render_config.for_inference()
        scene = build_scene(
            maps,
            self.template,
            drive.R,
            drive.t,
            camera,
            cfg,
            self.network.cfg.mask_points_outside_uv,
            self._lookup_texture(drive),
            self._tracked_mesh(drive),
            self.mouth,
        )
        if pixels is None or isinstance(pixels, str):
            pixels = self._named_pixels(pixels or "all", scene.guide_depth)
        background = self.background_colour(camera.name)
        rays = render_rays(
            scene, self.decoder, pixels, cfg, self.training, generator, background, self._network_precision
        )
        if self.camera_colour is not None:
            rays.colour = calibrated(rays.colour, rays.opacity, background, *self.camera_colour(camera.name))
        return RenderOutput(pixels=pixels, rays=rays, scene=scene, maps=maps, mu=mu, logstd=logstd)

    forward = render  # calling the module (as DistributedDataParallel does) renders

    def _lookup_texture(self, drive: FrameDrive) -> torch.Tensor | None:
        """The full-size texture (3, T', T') the shading points look their colour up in, or None."""
        if not self.network.cfg.texture_lookup:
            return None
        if drive.full_texture is None:
            mode = self.network.cfg.texture
            raise ValueError(f"model.texture is {mode!r}: rendering needs the frame's full-size texture")
        return drive.full_texture

    def _tracked_mesh(self, drive: FrameDrive) -> TrackedMesh | None:
        """The tracked mesh that gives each ray its texture UV, or None."""
        if not self.network.cfg.texture_at_ray:
            return None
        if drive.tracked_mesh is None:
            raise ValueError("model.texture is 'ray': rendering needs the frame's tracked mesh")
        return drive.tracked_mesh

    @staticmethod
    def _named_pixels(name: str, guide_depth: torch.Tensor) -> torch.Tensor:
        """(R, 2) long (x, y), row by row, of "all" pixels or those "covered" by guide_depth (H, W)."""
        if name == "all":
            return all_pixels(*guide_depth.shape, guide_depth.device)
        if name == "covered":
            ys, xs = (guide_depth > 0).nonzero(as_tuple=True)
            return torch.stack((xs, ys), 1)
        raise ValueError(f'pixels must be a tensor, "all" or "covered", got {name!r}')

    @torch.no_grad()
    def render_image(self, drive: FrameDrive, camera: Camera) -> tuple[torch.Tensor, RenderOutput]:
        """Every pixel of `camera` in evaluation mode: image (H, W, 3) and the render output.
        The module's mode is restored afterwards."""
        was_training = self.training
        self.eval()
        try:
            out = self.render(drive, camera)
        finally:
            self.train(was_training)
        return out.to_image(out.rays.colour), out

    def compared_colours(self, out: RenderOutput, targets: ViewTargets) -> tuple[torch.Tensor, torch.Tensor]:
        """(rendered, photo) colours (R, 3) at the rendered pixels as the loss compares them: with the
        "mask" background both are zero outside the mask, so only pixels inside it count."""
        xs, ys = out.pixels[:, 0], out.pixels[:, 1]
        colour, target = out.rays.colour, targets.image[:, ys, xs].T
        if self.background_mode == "mask":
            inside = targets.mask[ys, xs, None].to(colour.dtype)
            return colour * inside, target * inside
        return colour, target

    def loss_terms(
        self,
        out: RenderOutput,
        targets: ViewTargets,
        patch_shape: tuple[int, int] | None = None,
        perceptual: nn.Module | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """The weighted total loss (LossConfig weights), the detached terms by name and the compared
        (rendered, photo) colours (R, 3) (see compared_colours) of a render `out` against the view's
        `targets`. patch_shape (h, w): the rays form a patch, row by row (the perceptual and SSIM
        terms); perceptual: the network of the perceptual term (a PerceptualLoss)."""
        xs, ys = out.pixels[:, 0], out.pixels[:, 1]
        colour, target = self.compared_colours(out, targets)
        total, terms = compute_losses(
            self.loss_config,
            colour=colour,
            target=target,
            depth=out.rays.depth,
            mvs_depth=targets.depth[ys, xs],
            guide_depth=out.rays.guide_depth,
            coarse=out.scene.coarse_map,
            posmap=targets.posmap,
            coverage=self.coverage,
            mouth=self.mouth,
            **self._mouth_points(out, targets),
            displacement=out.maps.displacement[0],
            mu=out.mu,
            logstd=out.logstd,
            patch_shape=patch_shape,
            perceptual=perceptual,
        )
        return total, terms, (colour, target)

    def _mouth_points(self, out: RenderOutput, targets: ViewTargets) -> dict[str, torch.Tensor]:
        """The inputs of the mouth-points term (none when it is off): the points before posing
        (3, P, P), the tracked surface at their texels (3, P, P) and the mouth texels (P, P)."""
        if not self.loss_config.mouth_points_weight:
            return {}
        displacement = out.maps.displacement[0]
        size = displacement.shape[-1]
        return {
            "point_map": upsample_coarse_map(out.scene.coarse_map, size) + displacement,
            "point_posmap": targets.point_posmap,
            "point_mouth": point_texel_mask(self.coverage & self.mouth, size),
        }


def frame_inputs(model: ModelConfig, loss: LossConfig) -> FrameInputs:
    """What an avatar of these settings reads of each frame: the average texture at the encoder's
    size, the position maps at theirs, the texture at its own size when the shading points look their
    colour up in it, the tracked mesh at the point map's size when the mouth-points loss is on, and the
    tracked mesh itself when each ray looks the texture up where it meets it."""
    return FrameInputs(
        texture_size=model.texture_size,
        posmap_size=model.posmap_size,
        full_texture=model.texture_lookup,
        point_map_size=model.point_map_size if loss.mouth_points_weight else 0,
        tracked_mesh=model.texture_at_ray,
    )


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
