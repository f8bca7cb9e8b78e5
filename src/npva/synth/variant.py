"""Variants of the synthetic subject: the clean head (the default) and the head as a real capture
delivers it.

A variant fixes which kinds of variety and which capture defects a subject has; the seed then draws
their amounts. "clean" is the head of earlier releases, byte for byte: a tracked mesh exactly on the
true surface, an analytic average texture, fixed studio light, no camera differences, no noise.
"capture" adds what Multiface captures have (see docs/synth.md):

- variety: wider head proportions, hair as a volume 7-20 mm off the scalp with flyaway strands,
  shoulders in clothing of the subject's colour, oilier skin;
- tracking: the tracked mesh 1-2 mm off the true surface (a smooth per-subject field along the normals
  plus a small rigid jitter per frame), the jaw and the lip corners under-tracked and one capture frame
  late;
- photos: a few world-fixed lights with specular highlights drawn per subject, a colour gain per camera,
  sensor noise;
- average texture: unwrapped from photos through the tracked mesh and averaged over the cameras, so
  that lighting and highlights are baked in, texels blur where the mesh is off and the mouth smears.
"""

from __future__ import annotations

from dataclasses import dataclass

from npva.errors import NpvaError


@dataclass(frozen=True)
class Variant:
    """Which variety and defects a synthetic subject has (amounts: ranges drawn per seed)."""

    name: str
    shape_spread: float = 1.0  # multiplies the ranges of the head proportions
    hair_volume_mm: tuple[float, float] = (0.0, 0.0)  # hair surface off the scalp, per subject
    flyaway: float = 0.0  # share of hair strands standing out of the volume
    shoulders: bool = False  # shoulders and clothing below the neck
    tracking_error_mm: tuple[float, float] = (0.0, 0.0)  # mean distance of the mesh from the surface
    tracking_jitter_mm: float = 0.0  # rigid per-frame jitter of the tracked mesh (sd, mm)
    mouth_tracking: float = 1.0  # share of the jaw and lip-corner motion the tracker follows
    tracking_lag_frames: int = 0  # capture frames the tracked mouth lags behind (listed: every 3rd)
    lights: int = 0  # world-fixed lights drawn per subject (0: the fixed studio light)
    camera_gain_sd: float = 0.0  # sd of the log colour gain per camera and channel
    noise_sd: float = 0.0  # sensor noise (sd, colours in [0, 1])
    unwrapped_texture: bool = False  # average texture unwrapped from photos through the tracked mesh


VARIANTS = {
    variant.name: variant
    for variant in (
        Variant("clean"),
        Variant(
            "capture",
            shape_spread=2.0,
            hair_volume_mm=(7.0, 20.0),
            flyaway=0.12,
            shoulders=True,
            tracking_error_mm=(1.0, 2.0),
            tracking_jitter_mm=0.3,
            mouth_tracking=0.7,
            tracking_lag_frames=1,
            lights=3,
            camera_gain_sd=0.04,
            noise_sd=0.012,
            unwrapped_texture=True,
        ),
    )
}


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise NpvaError(f"unknown synth variant {name!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[name]
