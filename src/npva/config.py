"""Typed settings, one dataclass per concern. Defaults are the published full-scale configuration
(method.md); every size is a setting so that tests run the same pipeline at tiny sizes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelConfig:
    """Encoder and decoders (method.md section 3) and neural points (section 4)."""

    texture_size: int = 1024  # side of the average UV texture fed to the encoder
    posmap_size: int = 256  # side of the position map (and of the decoded coarse map)
    point_map_size: int = 1024  # side of the displacement / feature maps: one neural point per texel
    latent_channels: int = 4
    latent_size: int = 8
    texture_channels: tuple[int, ...] = (512, 256)  # texture branch down blocks
    geometry_channels: int = 256  # 1x1 conv on the normalized position map
    encoder_channels: tuple[int, ...] = (128, 64, 32, 16, 8)  # down blocks after concatenation
    mu_scale: float = 0.1
    logstd_scale: float = 0.01
    coarse_channels: tuple[int, ...] = (32, 16, 16, 8, 3)  # 8 -> 256 (5 up blocks)
    displacement_channels: tuple[int, ...] = (64, 32, 32, 16, 16, 8, 3)  # 8 -> 1024 (7 up blocks)
    feature_channels: tuple[int, ...] = (512, 256, 256, 128, 128, 64, 32)  # 8 -> 1024
    leaky_slope: float = 0.2
    mask_points_outside_uv: bool = True  # drop points whose texel lies outside the UV islands


@dataclass
class SamplingConfig:
    """Patch-wise depth-guided shading-point sampling (method.md section 5)."""

    probe_offset_px: int = 16  # 3x3 probes at u + {-16, 0, 16}^2
    background_depth_mm: float = 10.0  # guide depth below this is background
    discontinuity_mm: float = 30.0  # d_max - d_min above this: two windows
    window_half_mm: float = 20.0  # each window is [d - 20, d + 20]
    num_candidates: int = 20  # 10 + 10 with two windows
    jitter: float = 0.3  # bin widths scaled by 1 + jitter (U - 0.5) in training
    max_samples: int = 16  # SR: kept shading points per ray, in ray order
    occupancy_voxel_mm: float = 1.0  # a candidate is kept if an occupied voxel is within
    occupancy_reach_voxels: int = 3  # +- this many voxels


@dataclass
class QueryConfig:
    """Neighbour query (method.md section 6)."""

    k: int = 8
    radius_mm: float = 4.0
    cell_fraction: float = 0.5  # grid cell side of the neighbour index, as a fraction of the radius
    max_candidates: int = 1 << 23  # (queries x candidates) entries per query chunk: bounds memory


@dataclass
class DecoderConfig:
    """Radiance decoding and compositing (method.md section 7)."""

    variant: str = "lightweight"  # or "pointnerf"
    feature_dim: int = 32  # must equal ModelConfig.feature_channels[-1]
    feature_frequencies: int = 3  # PE_3 of the aggregated feature
    offset_frequencies: int = 5  # PE_5 of the 6-channel offset
    direction_frequencies: int = 4  # PE_4 of the ray direction
    hidden: int = 128
    pointnerf_hidden: int = 256
    leaky_slope: float = 0.2
    density_shift: float = 1.0  # sigma = softplus(raw - shift)
    colour_margin: float = 0.001  # c = (1 + 2 margin) sigmoid(raw) - margin: 1.002 sigmoid - 0.001
    min_distance_mm: float = 1e-6  # inverse-distance weights use max(|p - x|, this)
    last_delta: float = 1e10  # the last valid sample is made opaque


@dataclass
class RenderConfig:
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    chunk_rays: int = 65536  # rays decoded at once; bounds memory for any image size


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-friendly dict of a settings dataclass (tuples become lists)."""
    return dataclasses.asdict(config)


@dataclass
class PreprocessConfig:
    """`npva preprocess`: what is made from a subject, and where (method.md section 2)."""

    uv_size: int = 256  # side of the position maps
    image_scale: float = 0.5  # training resolution relative to the images (2048x1334 -> 1024x667)
    depth: str = "import"  # "import" (MVS depth files), "mesh" (tracked mesh rendered), "none"
    depth_dir: str | None = (
        None  # for "import": <dir>/<seq>/<cam>/<frame>.exr|.npz; default <subject>/mvs_depth
    )
    depth_scale: float = 1000.0  # multiply imported depth by this to get mm (1000 for metres)
    mouth_mask: str | None = None  # a UV-space PNG overriding the derived mouth mask
    mouth_stretch: float = 1.8  # texel cells whose area grows this much over the frames are mouth
    mouth_dilate: int = 2  # texels added around the derived mouth region
    stats_list: str | None = None  # frames for the statistics; default splits/train_list.txt, else all


@dataclass
class DataConfig:
    """Training samples: one (frame, camera) image per step (method.md section 8)."""

    frames: str = "train"  # split name (splits/<name>_list.txt) or a path to a "<seq> <frame>" list
    cameras: tuple[str, ...] = ()  # cameras to train on; empty: every camera (the authors used 400029 only)
    camera_split: bool = False  # keep only the training cameras of splits/camera_split.json
    texture_size: int = 1024  # side the average texture is resized to; must equal ModelConfig.texture_size
    image_cache: str = "png"  # photos resized to the training size kept on disk: "png", "npy" or "none"
    cache_dir: str | None = None  # where the cache lives; default <gendir>/image_cache
    skip_unreadable: bool = True  # a sample whose files cannot be read is replaced by the next readable one


@dataclass
class GEPConfig:
    """Grid-Error-Patch ray sampling (method.md section 8); phases by epoch (35 epochs published)."""

    error_start: int = 10  # grid phase for epochs [0, error_start)
    patch_start: int = 25  # error phase for [error_start, patch_start); patch phase from here on
    grid_stride_x: int = 2  # grid phase: every 2nd column ...
    grid_stride_y: int = 3  # ... and every 3rd row, from a random offset (at 1024x667)
    error_rays: int = 115600  # error phase: rays per step (340^2), shared among the cells by error
    error_cells: int = 8  # the error map of an image has error_cells x error_cells cells
    error_momentum: float | None = None  # None: true running mean of every pixel error seen in a cell;
    # m in [0, 1): exponential running mean, cell = m * cell + (1 - m) * mean error of this step's rays
    patch_size: int = 340  # patch phase: one patch_size x patch_size square (clipped to the image)


@dataclass
class LossConfig:
    """Loss weights and their constants (method.md section 8)."""

    rgb_weight: float = 5.0
    lpips_weight: float = 0.1  # patch phase only
    depth_weight: float = 0.1
    rast_depth_weight: float = 0.2
    mesh_weight: float = 0.2
    smooth_weight: float = 1.0
    kl_weight: float = 0.001
    displacement_weight: float = 0.1
    depth_threshold_mm: float = 10.0  # depth terms use rays whose error is below this
    smooth_beta_mm: float = 4.0  # smooth-L1 transition of the smoothness term
    displacement_threshold_mm: float = 10.0  # displacements longer than this are penalized
    mesh_norm: str = "l1"  # per-texel distance of the mesh term: "l1" (sum of |dx|) or "l2" (Euclidean)
    lpips_weights: str | None = None  # LPIPS-VGG weight files, os.pathsep-separated; env NPVA_LPIPS_WEIGHTS
    lpips_substitute: str = "vgg"  # without LPIPS weights: ST-LPIPS "vgg"/"alex" (shipped) or a .pth path
