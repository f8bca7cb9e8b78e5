"""Radiance decoding at shading points from their neural-point neighbours (method.md section 7).

Both decoders take the K nearest neural points of N shading points:
    features (N,K,C), offsets_world (N,K,3) = p_k - x in world, offsets_camera (N,K,3) = p_k - x in the
    camera frame, valid (N,K) bool (empty neighbour slots are False), ray_dirs (N,3) unit world directions
and return sigma (N,) >= 0 and rgb (N,3). Neighbours are blended with inverse-distance weights computed
from offsets_world, restricted to valid slots and normalized to sum 1. Invalid slots may hold anything
(even NaN): they never reach the output or receive gradient. Rows without a valid neighbour give
sigma 0 and rgb 0.

- RadianceDecoder (lightweight, the method's choice): aggregate first, decode once per shading point.
- PointNeRFDecoder (ablation): an MLP per neighbour, its outputs blended, then the same kind of heads;
  about 8x the multiply-adds (docs/model.md has the counts).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from npva.config import DecoderConfig
from npva.errors import ConfigError
from npva.model.encoding import encoded_width, positional_encoding, positional_encoding_into
from npva.model.init import leaky_gain, xavier_init

OFFSET_CHANNELS = 6  # [p_k - x in world ; p_k - x in camera frame]
DIRECTION_CHANNELS = 3
RGB_CHANNELS = 3


def inverse_distance_weights(
    offsets_world: torch.Tensor, valid: torch.Tensor, min_distance: float
) -> torch.Tensor:
    """w_k = 1 / max(|p_k - x|, min_distance) over the valid slots, normalized to sum 1 per row.

    offsets_world: (N,K,3); valid: (N,K) bool. Returns (N,K); zero on invalid slots and on rows without
    any valid slot. Differentiable w.r.t. offsets_world (zero gradient where the distance is clamped).
    """
    offsets = torch.where(valid.unsqueeze(-1), offsets_world, 0.0)  # keeps NaN out of the gradient
    squared = offsets.pow(2).sum(-1)
    distance = torch.sqrt(squared.clamp_min(min_distance**2))  # = max(|p - x|, min_distance)
    inverse = torch.where(valid, 1.0 / distance, 0.0)
    total = inverse.sum(-1, keepdim=True)
    return inverse / torch.where(total > 0, total, 1.0)


def leaky_mlp(widths: Sequence[int], leaky_slope: float, activate_last: bool) -> nn.Sequential:
    """Linear layers widths[0] -> widths[1] -> ... with LeakyReLU between them (and after the last
    one with `activate_last`). Xavier-uniform weights with the LeakyReLU gain for layers followed by an
    activation, gain 1 otherwise; zero biases."""
    activation_gain = leaky_gain(leaky_slope)
    layers: list[nn.Module] = []
    num_layers = len(widths) - 1
    for i in range(num_layers):
        activated = activate_last or i < num_layers - 1
        gain = activation_gain if activated else 1.0
        layers.append(xavier_init(nn.Linear(widths[i], widths[i + 1]), gain))
        if activated:
            layers.append(nn.LeakyReLU(leaky_slope))
    return nn.Sequential(*layers)


def _check_decoder_config(cfg: DecoderConfig, feature_dim: int, colour_residual: bool) -> None:
    if feature_dim <= 0:
        raise ConfigError(f"a radiance decoder needs point features, got {feature_dim} channels")
    for name in ("hidden", "pointnerf_hidden"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"DecoderConfig.{name} must be positive, got {getattr(cfg, name)}")
    for name in ("feature_frequencies", "offset_frequencies", "direction_frequencies"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"DecoderConfig.{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.min_distance_mm <= 0:
        raise ConfigError(f"DecoderConfig.min_distance_mm must be positive, got {cfg.min_distance_mm}")
    if colour_residual and feature_dim < RGB_CHANNELS:
        raise ConfigError(f"a colour residual needs an RGB colour among the features, got {feature_dim}")


class _NeighbourDecoder(nn.Module):
    """What both decoders share: input checks, the shading code h and the output activations.

    feature_dim: channels of a neural point's feature (ModelConfig.point_feature_channels; 32 published).
    colour_residual: the last 3 feature channels are an RGB colour (the texture's) and the colour MLP
    corrects it: c = (1 + 2 margin) sigmoid(raw + logit of the blended colour) - margin, with the MLP's
    last layer starting at zero, so that the avatar starts as the textured surface
    (ModelConfig.colour_residual; off in the published configuration).
    """

    def __init__(self, cfg: DecoderConfig, feature_dim: int = 32, colour_residual: bool = False):
        super().__init__()
        _check_decoder_config(cfg, feature_dim, colour_residual)
        self.cfg = cfg
        self.feature_dim = feature_dim
        self.colour_residual = colour_residual
        self.offset_channels = OFFSET_CHANNELS if cfg.camera_offsets else OFFSET_CHANNELS // 2
        # h = [f, PE(f), PE(offset)]: 32 + 192 + 60 = 284 at the published sizes
        self.code_width = (
            feature_dim
            + encoded_width(feature_dim, cfg.feature_frequencies, include_input=False)
            + encoded_width(self.offset_channels, cfg.offset_frequencies, include_input=False)
        )
        self.direction_width = encoded_width(
            DIRECTION_CHANNELS, cfg.direction_frequencies, include_input=False
        )

    def _check_inputs(
        self,
        features: torch.Tensor,
        offsets_world: torch.Tensor,
        offsets_camera: torch.Tensor,
        valid: torch.Tensor,
        ray_dirs: torch.Tensor,
    ) -> None:
        if features.dim() != 3:
            raise ValueError(f"features must have shape (N,K,C), got {tuple(features.shape)}")
        n, k, c = features.shape
        if c != self.feature_dim:
            raise ConfigError(f"features have {c} channels but the decoder takes {self.feature_dim}")
        expected = {
            "offsets_world": (offsets_world, (n, k, 3)),
            "offsets_camera": (offsets_camera, (n, k, 3)),
            "valid": (valid, (n, k)),
            "ray_dirs": (ray_dirs, (n, DIRECTION_CHANNELS)),
        }
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
        if valid.dtype != torch.bool:
            raise ValueError(f"valid must be a bool tensor, got {valid.dtype}")

    def _masked_neighbours(
        self,
        features: torch.Tensor,
        offsets_world: torch.Tensor,
        offsets_camera: torch.Tensor,
        valid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (N,K,C) and offsets (N,K,6), zero in invalid slots (so they cannot carry NaN)."""
        mask = valid.unsqueeze(-1)
        offsets = torch.cat([offsets_world, offsets_camera], dim=-1)
        return torch.where(mask, features, 0.0), torch.where(mask, offsets, 0.0)

    def _shading_code(self, features: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """h = [f, PE(f), PE(offsets)]: (...,C), (...,6) -> (..., code_width); without
        cfg.camera_offsets the offsets' camera-frame half is left out."""
        cfg = self.cfg
        offsets = offsets[..., : self.offset_channels]
        return torch.cat(
            [
                features,
                positional_encoding(features, cfg.feature_frequencies, include_input=False),
                positional_encoding(offsets, cfg.offset_frequencies, include_input=False),
            ],
            dim=-1,
        )

    def _radiance(
        self,
        density_mlp: nn.Module,
        colour_mlp: nn.Module,
        code: torch.Tensor,
        ray_dirs: torch.Tensor,
        has_valid: torch.Tensor,
        base: torch.Tensor | None = None,
        colour_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """sigma = softplus(raw - shift), rgb = (1 + 2m) sigmoid(raw) - m; zero on empty rows. With a
        base colour (N,3) (colour_residual), its logit is added to raw first.

        code: (N,D); ray_dirs: (N,3); has_valid: (N,) bool; colour_input: the colour MLP's input
        [code, PE(d)] (N, D + direction_width) when already built (RadianceDecoder._encoded_inputs), else
        None.
        Returns sigma (N,), rgb (N,3).
        """
        cfg = self.cfg
        margin = cfg.colour_margin
        sigma = F.softplus(density_mlp(code).squeeze(-1) - cfg.density_shift)
        if colour_input is None:
            directions = positional_encoding(ray_dirs, cfg.direction_frequencies, include_input=False)
            colour_input = torch.cat([code, directions], dim=-1)
        raw_rgb = colour_mlp(colour_input)
        if base is not None:
            base_logit = torch.logit((base.float().clamp(0, 1) + margin) / (1 + 2 * margin))
            raw_rgb = raw_rgb + base_logit.to(raw_rgb.dtype)
        rgb = (1 + 2 * margin) * torch.sigmoid(raw_rgb) - margin
        return torch.where(has_valid, sigma, 0.0), torch.where(has_valid.unsqueeze(-1), rgb, 0.0)

    def _colour_base(self, weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor | None:
        """With colour_residual the blended RGB of the last feature channels (N,3), else None.
        weights (N,K), features (N,K,C) masked."""
        if not self.colour_residual:
            return None
        return torch.einsum("nk,nkc->nc", weights, features[..., -RGB_CHANNELS:])

    def _start_at_base(self) -> None:
        """With colour_residual, zero the colour MLP's last weights: the colour starts as the base."""
        if self.colour_residual:
            nn.init.zeros_(self.colour_mlp[-1].weight)


class RadianceDecoder(_NeighbourDecoder):
    """Lightweight decoding: aggregate the neighbours, then decode once per shading point.

    f̄ = sum_k w_k f_k, delta = sum_k w_k [p_k - x world ; camera], h = [f̄, PE_3(f̄), PE_5(delta)];
    density MLP h -> hidden -> 1; colour MLP [h, PE_4(d)] -> hidden -> hidden -> hidden -> 3.
    """

    def __init__(self, cfg: DecoderConfig, feature_dim: int = 32, colour_residual: bool = False):
        super().__init__(cfg, feature_dim, colour_residual)
        self.density_mlp = leaky_mlp([self.code_width, cfg.hidden, 1], cfg.leaky_slope, False)
        self.colour_mlp = leaky_mlp(
            [self.code_width + self.direction_width, cfg.hidden, cfg.hidden, cfg.hidden, RGB_CHANNELS],
            cfg.leaky_slope,
            False,
        )
        self._start_at_base()

    def forward(
        self,
        features: torch.Tensor,
        offsets_world: torch.Tensor,
        offsets_camera: torch.Tensor,
        valid: torch.Tensor,
        ray_dirs: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_inputs(features, offsets_world, offsets_camera, valid, ray_dirs)
        weights = inverse_distance_weights(offsets_world, valid, self.cfg.min_distance_mm)
        features, offsets = self._masked_neighbours(features, offsets_world, offsets_camera, valid)
        mean_feature = torch.einsum("nk,nkc->nc", weights, features)
        mean_offset = torch.einsum("nk,nkc->nc", weights, offsets)
        return self.decode_blended(mean_feature, mean_offset, valid.any(-1), ray_dirs)

    def decode_blended(
        self,
        mean_feature: torch.Tensor,
        mean_offset: torch.Tensor,
        has_valid: torch.Tensor,
        ray_dirs: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """sigma (N,), rgb (N, 3) from neighbours already blended with the inverse-distance weights:
        mean_feature f̄ (N, C), mean_offset delta (N, 6) [world; camera], has_valid (N,) bool (rows
        without a neighbour give zeros), ray_dirs (N, 3). `forward` blends and then calls this.
        Without gradient (rendering) the networks' inputs are built in one buffer (_encoded_inputs)."""
        base = mean_feature[:, -RGB_CHANNELS:] if self.colour_residual else None
        if torch.is_grad_enabled():
            code = self._shading_code(mean_feature, mean_offset)
            return self._radiance(self.density_mlp, self.colour_mlp, code, ray_dirs, has_valid, base)
        inputs = self._encoded_inputs(mean_feature, mean_offset, ray_dirs)
        code = inputs[:, : self.code_width]
        return self._radiance(self.density_mlp, self.colour_mlp, code, ray_dirs, has_valid, base, inputs)

    def _encoded_inputs(
        self, features: torch.Tensor, offsets: torch.Tensor, ray_dirs: torch.Tensor
    ) -> torch.Tensor:
        """The colour MLP's input [h, PE(d)] (N, code_width + direction_width), h its first code_width
        columns, written piece by piece into one buffer in the dtype the networks run in (bfloat16
        under autocast). Without gradient only: the inference form of _shading_code and the
        concatenation in _radiance, whose copies and casts took about 24 ms of GPU time a frame
        (3.1 M shading points; benchmarks/README.md, 2026-12-05).

        features: (N,C); offsets: (N,6); ray_dirs: (N,3).
        """
        cfg = self.cfg
        device = features.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else features.dtype
        out = features.new_empty((features.shape[0], self.code_width + self.direction_width), dtype=dtype)
        out[:, : features.shape[1]] = features
        start = features.shape[1]
        for x, frequencies in (
            (features, cfg.feature_frequencies),
            (offsets[:, : self.offset_channels], cfg.offset_frequencies),
            (ray_dirs, cfg.direction_frequencies),
        ):
            width = encoded_width(x.shape[1], frequencies, include_input=False)
            positional_encoding_into(x, frequencies, out[:, start : start + width])
            start += width
        return out


class PointNeRFDecoder(_NeighbourDecoder):
    """Point-NeRF style decoding (ablation): decode every neighbour, then blend.

    g_k = MLP_n(h_k), h_k = [f_k, PE_3(f_k), PE_5(delta_k)], MLP_n: code -> pointnerf_hidden -> hidden
    with LeakyReLU after both layers; g = sum_k w_k g_k; density MLP g -> hidden -> 1; colour MLP
    [g, PE_4(d)] -> hidden -> hidden -> hidden -> 3.
    """

    def __init__(self, cfg: DecoderConfig, feature_dim: int = 32, colour_residual: bool = False):
        super().__init__(cfg, feature_dim, colour_residual)
        self.neighbour_mlp = leaky_mlp(
            [self.code_width, cfg.pointnerf_hidden, cfg.hidden], cfg.leaky_slope, True
        )
        self.density_mlp = leaky_mlp([cfg.hidden, cfg.hidden, 1], cfg.leaky_slope, False)
        self.colour_mlp = leaky_mlp(
            [cfg.hidden + self.direction_width, cfg.hidden, cfg.hidden, cfg.hidden, RGB_CHANNELS],
            cfg.leaky_slope,
            False,
        )
        self._start_at_base()

    def forward(
        self,
        features: torch.Tensor,
        offsets_world: torch.Tensor,
        offsets_camera: torch.Tensor,
        valid: torch.Tensor,
        ray_dirs: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_inputs(features, offsets_world, offsets_camera, valid, ray_dirs)
        weights = inverse_distance_weights(offsets_world, valid, self.cfg.min_distance_mm)
        features, offsets = self._masked_neighbours(features, offsets_world, offsets_camera, valid)
        per_neighbour = self.neighbour_mlp(self._shading_code(features, offsets))  # (N,K,hidden)
        blended = torch.einsum("nk,nkc->nc", weights, per_neighbour)
        base = self._colour_base(weights, features)
        return self._radiance(self.density_mlp, self.colour_mlp, blended, ray_dirs, valid.any(-1), base)


DECODER_VARIANTS = {"lightweight": RadianceDecoder, "pointnerf": PointNeRFDecoder}


def make_radiance_decoder(
    cfg: DecoderConfig, feature_dim: int = 32, colour_residual: bool = False
) -> RadianceDecoder | PointNeRFDecoder:
    """The decoder named by cfg.variant, for point features of feature_dim channels (see
    _NeighbourDecoder for colour_residual)."""
    if cfg.variant not in DECODER_VARIANTS:
        raise ConfigError(
            f"DecoderConfig.variant must be one of {sorted(DECODER_VARIANTS)}, got {cfg.variant!r}"
        )
    return DECODER_VARIANTS[cfg.variant](cfg, feature_dim, colour_residual)
