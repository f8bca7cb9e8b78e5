"""Named training settings: tiny (tests), demo (the synthetic demo subject on a CPU), full (published).

Each preset is the published configuration (the dataclass defaults) with the overrides below. Sizes
scale together: UV side S = posmap_size (preprocess with --preset NAME), point map P (one neural point per
texel, P x P), latent L; every channel list has log2(side / latent side) entries (ModelConfig validation
tells which). The neighbour radius grows with the point spacing (at P = 1024 neighbouring points lie about
0.3 mm apart on the synthetic head, at P = 64 about 3 mm) and the pixel offsets of the sampling probes
shrink with the image. The demo's settings were chosen by held-out PSNR on the demo subject (24 renders
of the test frames from the test cameras, 2026-11-25/26, on an H100 and an H200); the measurements are
in docs/training.md ("Choosing the demo preset").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from npva.config import ExperimentConfig, apply_overrides, load_config, merge_settings
from npva.data.gendir import GenDir
from npva.data.prepared import read_settings

# One frame per step on one process for a few thousand steps at most: BatchNorm would normalize each
# frame by its own statistics, and a posterior starting at std 1 beside mu = 0.1 mu_raw makes z mostly
# noise, so the decoders would learn to ignore the latent and render the mean face (docs/training.md,
# Presets).
SHORT_RUN_LATENT: dict[str, Any] = {"batchnorm": False, "mu_scale": 1.0, "logstd_bias": -3.0}

PRESETS: dict[str, dict[str, Any]] = {
    # The tiny synthetic subject (`npva synth --preset tiny`, `npva preprocess --uv-size 32`): 64x42
    # training images, 32^2 UV maps, 64^2 points; a step takes a fraction of a second on one core.
    "tiny": {
        "model": {
            "texture_size": 64,
            "posmap_size": 32,
            "point_map_size": 64,
            "latent_size": 4,
            **SHORT_RUN_LATENT,
            "texture_channels": [8],
            "geometry_channels": 8,
            "encoder_channels": [16, 16, 8],
            "coarse_channels": [16, 8, 3],
            "displacement_channels": [16, 8, 8, 3],
            "feature_channels": [16, 16, 16, 8],
        },
        "render": {
            "sampling": {"probe_offset_px": 1, "occupancy_voxel_mm": 2.0, "occupancy_reach_voxels": 2},
            "query": {"radius_mm": 8.0},
            "decoder": {"hidden": 32, "pointnerf_hidden": 32},
        },
        "data": {"image_cache": "none"},
        "gep": {"error_rays": 900, "patch_size": 24},
        "train": {
            "epochs": 35,
            "steps_per_epoch": 1,
            "workers": 0,
            "log_every": 5,
            "checkpoint_every": 10,
            "val_every": 35,
            "val_samples": 2,
            "progress": False,
        },
    },
    # The demo subject (`npva synth --preset demo`, `npva preprocess --uv-size 64`): 256x167 training
    # images, 64^2 UV maps, 256^2 points (about 0.2 per pixel of the face). 6,720 steps: a quarter of
    # them left the avatar at the textured mesh's level on capture subjects seen from cameras training
    # did not see (docs/fidelity.md, "The demo budget"); about 27 minutes on two CPU cores.
    "demo": {
        "model": {
            "texture_size": 128,
            "posmap_size": 64,
            "point_map_size": 256,
            "latent_size": 8,
            **SHORT_RUN_LATENT,
            "texture_channels": [16],
            "geometry_channels": 16,
            "encoder_channels": [32, 16, 8],
            "coarse_channels": [32, 16, 3],
            "displacement_channels": [32, 16, 8, 8, 3],
            "feature_channels": [64, 32, 16, 16, 16],
            "texture": "ray",
        },
        "render": {
            "sampling": {
                "probe_offset_px": 4,
                "occupancy_voxel_mm": 2.0,
                "occupancy_reach_voxels": 1,
                "max_samples": 8,
            },
            "query": {"radius_mm": 5.0},
            "decoder": {"hidden": 64, "pointnerf_hidden": 64},
            # A tracked mesh's layout stretches the open mouth (cells about 10 mm) and, on the synthetic
            # head, the lower neck (up to 16 mm). Rendering fills them twice as finely as training does:
            # the points in between are interpolated from the same texels, so only rendering pays.
            "densify_mm": 6.0,
            "inference_densify_mm": 3.0,
        },
        # The mouth texels follow the tracked mesh too: the appended texture is laid out on its surface,
        # and a short run does not learn their place from the photos alone. Against the smoothness term,
        # which pulls the open lips together, they need a weight well above the other texels'.
        # At the point map's size the mouth's points follow it as well (the coarse map, a quarter of that
        # size, cannot hold the lips' edges); held harder, they carry the open mouth to views that
        # training did not see. The colour is looked up in the texture where each shading
        # point's ray meets the tracked mesh, through which the texture was unwrapped, and in the mouth
        # where the shading point lies on the points' layout (model.texture "ray").
        # SSIM on the patches keeps edges that the colour error alone blurs (teeth, lips, eyes).
        "loss": {"mesh_mouth_weight": 10.0, "mouth_points_weight": 1.0, "ssim_weight": 3.0},
        "gep": {"grid_stride_x": 4, "grid_stride_y": 4, "error_rays": 2500, "patch_size": 64},
        "train": {
            "epochs": 35,
            "steps_per_epoch": 192,
            "lr": 2e-3,
            "lr_decay_epochs": [25],
            # Real rigs' cameras differ a little in gain and white balance (docs/training.md).
            "camera_colour": True,
            # Samples are loaded between steps: a loader process would take CPU time from the step on
            # two cores (0.29 s a step instead of 0.25 with the tracked mouth loaded per sample).
            "workers": 0,
            "log_every": 10,
            "checkpoint_every": 100,
            "val_every": 1120,
            "val_samples": 4,
        },
    },
    "full": {},
}


def preset_config(name: str) -> ExperimentConfig:
    """The settings of a named preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown training preset {name!r}; choose one of {', '.join(PRESETS)}")
    return merge_settings(ExperimentConfig(), PRESETS[name])


def presets_of_size(posmap_size: int) -> list[str]:
    """The presets whose position maps are `posmap_size` texels on a side."""
    return [name for name in PRESETS if preset_config(name).model.posmap_size == posmap_size]


def preprocessed_preset(gendir: Path) -> str:
    """The preset a preprocessing output was made for (the one of its position map size), else full."""
    settings = read_settings(GenDir(gendir))
    fitting = presets_of_size(settings.uv_size) if settings is not None else []
    return fitting[0] if fitting else "full"


def build_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: ExperimentConfig | None = None,
) -> ExperimentConfig:
    """Settings of a run: the preset (else `base`, else the published "full" configuration), then the
    YAML file laid over it, then the key=value overrides in order."""
    if preset is not None:
        config = preset_config(preset)
    else:
        config = base if base is not None else preset_config("full")
    if config_file is not None:
        config = load_config(config_file, config)
    return apply_overrides(config, list(overrides))
