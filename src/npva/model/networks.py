"""Encoder and decoders of the avatar (method.md section 3).

A variational encoder (Deep-Appearance-Model style) maps the average UV texture and the normalized
position map of a frame to a latent code z (latent_channels x latent_size²). Three convolutional decoders
map z to UV maps: the coarse geometry offset (posmap_size²), the per-texel displacement and the per-texel
neural-point features (point_map_size²).

Every size comes from ModelConfig. Each block halves (encoder) or doubles (decoder) the resolution, so the
length of each channel list fixes the sizes; contradictions raise ConfigError naming the fields.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from npva.config import TEXTURE_MODES, ModelConfig
from npva.errors import ConfigError
from npva.model.init import leaky_gain, xavier_init

IMAGE_CHANNELS = 3  # RGB texture, xyz position map, xyz coarse offset and displacement


# ----------------------------------------------------------------------------------------------
# Validation of the sizes


def _check_positive(cfg: ModelConfig) -> None:
    if cfg.texture not in TEXTURE_MODES:
        raise ConfigError(
            f"ModelConfig.texture must be one of {', '.join(TEXTURE_MODES)}, got {cfg.texture!r}"
        )
    for name in (
        "texture_size",
        "posmap_size",
        "point_map_size",
        "latent_channels",
        "latent_size",
    ):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"ModelConfig.{name} must be positive, got {getattr(cfg, name)}")
    for name in (
        "texture_channels",
        "encoder_channels",
        "coarse_channels",
        "displacement_channels",
        "feature_channels",
    ):
        channels = getattr(cfg, name)
        if len(channels) == 0 or min(channels) <= 0:
            raise ConfigError(f"ModelConfig.{name} must be a non-empty list of positive channel counts")
    if cfg.geometry_channels <= 0:
        raise ConfigError(f"ModelConfig.geometry_channels must be positive, got {cfg.geometry_channels}")


def _check_chain(
    blocks_field: str, num_blocks: int, large_field: str, large: int, small_field: str, small: int
) -> None:
    """Each block halves (or doubles) the side: large must be small * 2^num_blocks."""
    if large == small * 2**num_blocks:
        return
    ratio = large / small
    hint = ""
    if ratio >= 2 and ratio == 2 ** round(math.log2(ratio)):
        hint = f"; {large_field}/{small_field} = {large}/{small} needs {round(math.log2(ratio))} entries"
    raise ConfigError(
        f"ModelConfig.{blocks_field} has {num_blocks} entries (one resolution step of 2 each), so "
        f"{large_field} ({large}) must equal {small_field} ({small}) x 2^{num_blocks} = "
        f"{small * 2**num_blocks}{hint}"
    )


def _check_encoder_config(cfg: ModelConfig) -> None:
    _check_positive(cfg)
    _check_chain(
        "texture_channels",
        len(cfg.texture_channels),
        "texture_size",
        cfg.texture_size,
        "posmap_size",
        cfg.posmap_size,
    )
    _check_chain(
        "encoder_channels",
        len(cfg.encoder_channels),
        "posmap_size",
        cfg.posmap_size,
        "latent_size",
        cfg.latent_size,
    )


def _check_decoder_config(
    cfg: ModelConfig, channels_field: str, size_field: str, out_channels: int | None
) -> None:
    _check_positive(cfg)
    channels = getattr(cfg, channels_field)
    _check_chain(
        channels_field, len(channels), size_field, getattr(cfg, size_field), "latent_size", cfg.latent_size
    )
    if out_channels is not None and channels[-1] != out_channels:
        raise ConfigError(
            f"ModelConfig.{channels_field} must end with {out_channels} output channels, got {channels[-1]}"
        )


def validate_model_config(cfg: ModelConfig) -> None:
    """Raise ConfigError if the sizes and channel lists of `cfg` do not fit together."""
    _check_encoder_config(cfg)
    _check_decoder_config(cfg, "coarse_channels", "posmap_size", IMAGE_CHANNELS)
    _check_decoder_config(cfg, "displacement_channels", "point_map_size", IMAGE_CHANNELS)
    _check_decoder_config(cfg, "feature_channels", "point_map_size", None)


def _check_shape(name: str, tensor: torch.Tensor, expected: tuple[int | None, ...]) -> None:
    """ValueError unless tensor.shape matches `expected` (None matches any size)."""
    ok = tensor.dim() == len(expected) and all(
        e is None or e == s for e, s in zip(expected, tensor.shape, strict=True)
    )
    if not ok:
        pattern = ", ".join("B" if e is None else str(e) for e in expected)
        raise ValueError(f"{name} must have shape ({pattern}), got {tuple(tensor.shape)}")


# ----------------------------------------------------------------------------------------------
# Building blocks


def xavier_conv(
    in_channels: int, out_channels: int, kernel_size: int, gain: float, bias: bool = True, **kwargs
) -> nn.Conv2d:
    """A Conv2d with xavier-uniform weights scaled by `gain` and zero bias.

    PyTorch's default init scales each layer's output variance by about 1/3, so without BatchNorm the
    part of a decoded map that depends on z starts tiny after a few layers and the decoders learn the
    mean face long before they follow the latent (measured: a short run's coarse map never opened the
    jaw). Xavier with the LeakyReLU gain keeps the activations' scale through the layers.
    """
    return xavier_init(nn.Conv2d(in_channels, out_channels, kernel_size, bias=bias, **kwargs), gain)


def down_block(
    in_channels: int, out_channels: int, leaky_slope: float, batchnorm: bool = True
) -> nn.Sequential:
    """Conv 4x4 stride 2 pad 1, BatchNorm (unless `batchnorm` is off), LeakyReLU:
    (B, cin, f, f) -> (B, cout, f/2, f/2).

    With BatchNorm the convolution has no bias: the BatchNorm right after it removes any per-channel
    constant. Xavier-uniform weights with the LeakyReLU gain.
    """
    return nn.Sequential(
        xavier_conv(
            in_channels, out_channels, 4, leaky_gain(leaky_slope), bias=not batchnorm, stride=2, padding=1
        ),
        nn.BatchNorm2d(out_channels) if batchnorm else nn.Identity(),
        nn.LeakyReLU(leaky_slope),
    )


class UntiedBias(nn.Module):
    """A learnable bias per channel and pixel, shape (C, f, f), added to (B, C, f, f)."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels, size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class UpBlock(nn.Module):
    """(B, cin, f, f) -> (B, cout, 2f, 2f).

    Conv 3x3 without bias plus an untied per-pixel bias, BatchNorm (unless `batchnorm` is off), conv 1x1
    cout -> 4 cout, LeakyReLU, PixelShuffle(2). With `final` the LeakyReLU is left out, so the decoder
    output (an offset, a displacement in mm, a feature) is an unconstrained affine function of the
    normalized activations. Xavier-uniform weights with the LeakyReLU gain (gain 1 for the final 1x1).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        size: int,
        leaky_slope: float,
        final: bool = False,
        batchnorm: bool = True,
    ):
        super().__init__()
        gain = leaky_gain(leaky_slope)
        self.conv = xavier_conv(in_channels, out_channels, 3, gain, bias=False, padding=1)
        self.untied_bias = UntiedBias(out_channels, size)
        self.norm = nn.BatchNorm2d(out_channels) if batchnorm else nn.Identity()
        self.expand = xavier_conv(out_channels, 4 * out_channels, 1, 1.0 if final else gain)
        self.activation = nn.Identity() if final else nn.LeakyReLU(leaky_slope)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.untied_bias(self.conv(x)))
        return self.shuffle(self.activation(self.expand(x)))


# ----------------------------------------------------------------------------------------------
# Encoder and latent code


class Encoder(nn.Module):
    """(texture (B,3,T,T), normalized position map (B,3,S,S)) -> (mu, logstd), each (B,Z,L,L).

    T = texture_size, S = posmap_size, Z = latent_channels, L = latent_size. The texture branch brings T
    down to S, the geometry branch is a 1x1 conv at S, both are concatenated and brought down to L.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        _check_encoder_config(cfg)
        self.cfg = cfg
        slope = cfg.leaky_slope
        texture_in = (IMAGE_CHANNELS, *cfg.texture_channels[:-1])
        self.texture_branch = nn.Sequential(
            *(
                down_block(a, b, slope, cfg.batchnorm)
                for a, b in zip(texture_in, cfg.texture_channels, strict=True)
            )
        )
        self.geometry_branch = nn.Sequential(
            xavier_conv(IMAGE_CHANNELS, cfg.geometry_channels, 1, leaky_gain(slope)), nn.LeakyReLU(slope)
        )
        joint_in = (cfg.texture_channels[-1] + cfg.geometry_channels, *cfg.encoder_channels[:-1])
        self.joint_branch = nn.Sequential(
            *(
                down_block(a, b, slope, cfg.batchnorm)
                for a, b in zip(joint_in, cfg.encoder_channels, strict=True)
            )
        )
        self.mu_head = xavier_conv(cfg.encoder_channels[-1], cfg.latent_channels, 1, 1.0)
        self.logstd_head = xavier_conv(cfg.encoder_channels[-1], cfg.latent_channels, 1, 1.0)

    def forward(
        self, texture: torch.Tensor, posmap_normalized: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        _check_shape("texture", texture, (None, IMAGE_CHANNELS, cfg.texture_size, cfg.texture_size))
        _check_shape(
            "posmap_normalized",
            posmap_normalized,
            (texture.shape[0], IMAGE_CHANNELS, cfg.posmap_size, cfg.posmap_size),
        )
        joint = torch.cat([self.texture_branch(texture), self.geometry_branch(posmap_normalized)], dim=1)
        hidden = self.joint_branch(joint)
        mu = cfg.mu_scale * self.mu_head(hidden)
        logstd = cfg.logstd_scale * self.logstd_head(hidden) + cfg.logstd_bias
        return mu, logstd


def kl_divergence(mu: torch.Tensor, logstd: torch.Tensor) -> torch.Tensor:
    """0.5 * mean(exp(2 logstd) + mu² - 1 - 2 logstd) over all elements: a scalar."""
    return 0.5 * torch.mean(torch.exp(2 * logstd) + mu**2 - 1 - 2 * logstd)


def sample_latent(
    mu: torch.Tensor, logstd: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """z = mu + exp(logstd) * eps, eps ~ N(0, 1) drawn from `generator` (on mu's device)."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(logstd) * eps


# ----------------------------------------------------------------------------------------------
# Decoders


class MapDecoder(nn.Module):
    """z (B,Z,L,L) -> map (B, channels[-1], N, N) through len(channels) up blocks, N = L * 2^len."""

    def __init__(self, cfg: ModelConfig, channels_field: str, size_field: str, out_channels: int | None):
        super().__init__()
        _check_decoder_config(cfg, channels_field, size_field, out_channels)
        self.cfg = cfg
        channels = getattr(cfg, channels_field)
        inputs = (cfg.latent_channels, *channels[:-1])
        self.blocks = nn.Sequential(
            *(
                UpBlock(
                    cin,
                    cout,
                    cfg.latent_size * 2**i,
                    cfg.leaky_slope,
                    final=i == len(channels) - 1,
                    batchnorm=cfg.batchnorm,
                )
                for i, (cin, cout) in enumerate(zip(inputs, channels, strict=True))
            )
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        _check_shape("z", z, (None, cfg.latent_channels, cfg.latent_size, cfg.latent_size))
        return self.blocks(z)


class CoarseDecoder(MapDecoder):
    """G_o: z -> normalized coarse offset o (B,3,S,S); the face-frame map is s * o + mean."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, "coarse_channels", "posmap_size", IMAGE_CHANNELS)


class DisplacementDecoder(MapDecoder):
    """G_d: z -> per-texel displacement (B,3,P,P) in mm, face frame."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, "displacement_channels", "point_map_size", IMAGE_CHANNELS)


class FeatureDecoder(MapDecoder):
    """F: z -> per-texel neural-point features (B,C,P,P), C = feature_channels[-1]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, "feature_channels", "point_map_size", None)


class DecodedMaps(NamedTuple):
    coarse_offset: torch.Tensor  # (B,3,S,S) normalized; coarse_map() turns it into mm
    displacement: torch.Tensor  # (B,3,P,P) mm
    features: torch.Tensor  # (B,C,P,P)


class AvatarOutput(NamedTuple):
    maps: DecodedMaps
    mu: torch.Tensor  # (B,Z,L,L)
    logstd: torch.Tensor  # (B,Z,L,L)
    z: torch.Tensor  # (B,Z,L,L): a sample in training mode, mu in evaluation mode


def coarse_map(offset: torch.Tensor, mean: torch.Tensor, std: float | torch.Tensor) -> torch.Tensor:
    """Face-frame coarse position map s * o + mean.

    offset: (B,3,S,S); mean: per-texel mean position map, channels first, (3,S,S) or (B,3,S,S);
    std: the scalar std s of the training position maps. Returns (B,3,S,S) in mm.
    """
    if mean.dim() not in (3, 4) or mean.shape[-3:] != offset.shape[-3:]:
        raise ValueError(
            f"mean must have shape (3,S,S) or (B,3,S,S) matching offset {tuple(offset.shape)}, "
            f"got {tuple(mean.shape)} (channels first)"
        )
    return std * offset + mean


def append_texture(features: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
    """features (B,C,P,P), texture (B,3,T,T) in the same UV image layout -> (B,C+3,P,P): the texture
    resampled to P x P (bilinear, antialiased when shrinking) appended to every texel's features."""
    size = features.shape[-1]
    resampled = F.interpolate(
        texture.to(features.dtype), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return torch.cat((features, resampled), dim=1)


class AvatarNetwork(nn.Module):
    """Encoder and the three decoders of one avatar."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        validate_model_config(cfg)
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.coarse_decoder = CoarseDecoder(cfg)
        self.displacement_decoder = DisplacementDecoder(cfg)
        self.feature_decoder = FeatureDecoder(cfg)
        self.batchnorm_folded = False

    def encode(
        self, texture: torch.Tensor, posmap_normalized: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(texture (B,3,T,T), normalized position map (B,3,S,S)) -> (mu, logstd) (B,Z,L,L)."""
        return self.encoder(texture, posmap_normalized)

    def latent(
        self, mu: torch.Tensor, logstd: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A sample of the posterior in training mode, its mean mu in evaluation mode."""
        return sample_latent(mu, logstd, generator) if self.training else mu

    def decode(self, z: torch.Tensor, texture: torch.Tensor | None = None) -> DecodedMaps:
        """z (B,Z,L,L) -> the three UV maps. texture (B,3,T,T), the encoder's average texture, is needed
        with cfg.texture_features (model.texture not "off"): the point features are then the decoded ones
        followed by its RGB."""
        features = self.feature_decoder(z)
        if self.cfg.texture_features:
            if texture is None:
                raise ValueError(
                    f"model.texture is {self.cfg.texture!r}: decoding needs the frame's average texture"
                )
            features = append_texture(features, texture)
        return DecodedMaps(
            coarse_offset=self.coarse_decoder(z),
            displacement=self.displacement_decoder(z),
            features=features,
        )

    @torch.no_grad()
    def fold_batchnorm(self) -> int:
        """Fold every BatchNorm layer into the convolution before it, for inference: in evaluation mode
        a BatchNorm is a per-channel affine map, so the network then computes what it did with one
        launch less per layer. It can no longer be trained (train() raises). Returns the layers folded."""
        if self.training:
            raise RuntimeError("fold BatchNorm in evaluation mode only (call eval() first)")
        folded = 0
        for module in self.modules():
            if isinstance(module, nn.Sequential):
                layers = list(module)
                for i, (conv, norm) in enumerate(zip(layers, layers[1:], strict=False)):
                    if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                        module[i] = fuse_conv_bn_eval(conv, norm)
                        module[i + 1] = nn.Identity()
                        folded += 1
            elif isinstance(module, UpBlock) and isinstance(module.norm, nn.BatchNorm2d):
                # norm(conv(x) + B) = a conv(x) + (a B + b), a = gamma / sqrt(var + eps), b = beta - a mean
                norm = module.norm
                scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
                shift = norm.bias - scale * norm.running_mean
                module.conv.weight.mul_(scale[:, None, None, None])
                module.untied_bias.bias.copy_(
                    scale[:, None, None] * module.untied_bias.bias + shift[:, None, None]
                )
                module.norm = nn.Identity()
                folded += 1
        self.batchnorm_folded = True
        return folded

    def train(self, mode: bool = True) -> AvatarNetwork:
        if mode and self.batchnorm_folded:
            raise RuntimeError("this network's BatchNorm layers were folded for inference: it cannot train")
        return super().train(mode)

    def forward(
        self,
        texture: torch.Tensor,
        posmap_normalized: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> AvatarOutput:
        mu, logstd = self.encode(texture, posmap_normalized)
        z = self.latent(mu, logstd, generator)
        return AvatarOutput(maps=self.decode(z, texture), mu=mu, logstd=logstd, z=z)
