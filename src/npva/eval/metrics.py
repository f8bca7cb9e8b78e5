"""`npva metrics`: PSNR, SSIM and LPIPS of an avatar's renders against the photos, under a named protocol.

Every image is rendered at the training size in evaluation mode (z = mu, no jitter), its colours clamped
to [0, 1], and compared with the photo of the same size. Two protocols (method.md section 9):

- "standard": per image, PSNR, SSIM and LPIPS in three regions, each averaged over images:
  "image" (every pixel), "mask" (the tracked mesh's silhouette: the pixels of preprocessing's mask whose
  centre the tracked mesh covers) and "mouth" (pixels whose tracked-mesh UV lies in the avatar's mouth
  texels; images where it is empty are left out of that region's means). PSNR is 10 log10(1 / MSE)
  over the region's pixels; SSIM is the SSIM map of the whole image averaged over the region's pixels;
  LPIPS compares the two images with the pixels outside the region set to 0 (regions image and mask
  only: a small region in a black image says little perceptually).
- "npva-legacy" (the published script's numbers): camera 400029 only; pixels outside (rendered
  coverage AND photo mask) set to 0 in both images; per-image MSE over the whole image with colours in
  0-255; PSNR = 10 log10(255^2 / mean of the MSEs over images); LPIPS on the zeroed images. method.md
  leaves "rendered coverage" open: here it is accumulated opacity > 0.5 for the avatar and the mesh's
  coverage for the baseline.

With the textured-mesh baseline (baseline.py) every image is scored twice, "avatar" and "baseline",
so each number has its floor beside it.

Perceptual metrics: "lpips" is LPIPS-VGG when its weight files are given (argument, NPVA_LPIPS_WEIGHTS,
or the checkpoint's loss.lpips_weights when present on this machine), else reported as unavailable;
"st_lpips" is ST-LPIPS-VGG from the weights shipped in stlpips-pytorch, a related but different metric,
reported beside it whenever those weights are installed. Images smaller than a network accepts
(PerceptualLoss.min_size) get no perceptual score: they are not upsampled, which would change what is
measured.

SSIM (Wang et al. 2004) with an 11-tap Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data range 1,
reflection padding so the map has the image's size; the map is the mean over RGB of the per-channel maps.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from npva.data.samples import AvatarDataset, TrainSample
from npva.errors import NpvaError
from npva.eval.baseline import mesh_uv_image, mouth_region, textured_mesh_image
from npva.eval.loading import EvalContext, run_directory
from npva.fileio import atomic_open
from npva.io.multiface import read_krt
from npva.quality.perceptual import (
    ENV_WEIGHTS,
    ST_LPIPS_REQUIREMENT,
    lpips_vgg,
    shipped_st_lpips_weights,
    st_lpips,
)
from npva.quality.psnr import MSE_FLOOR, psnr
from npva.quality.ssim import SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_WINDOW, ssim

log = logging.getLogger(__name__)

LEGACY_CAMERA = "400029"
COVERAGE_OPACITY = 0.5  # npva-legacy: a pixel is rendered when its accumulated opacity exceeds this
PERCEPTUAL_KEYS = ("lpips", "st_lpips")
LPIPS_REGIONS = ("image", "mask")
SUBJECTS = ("avatar", "baseline")
BASELINE_DESCRIPTION = (
    "the tracked mesh of the frame rasterized in the same camera at the same size, coloured by bilinear "
    "lookup in the frame's average texture; outside the mesh the avatar's background colour for that camera"
)


@dataclass(frozen=True)
class Protocol:
    """A named way of comparing renders with photos.

    regions: the regions scored per image; cameras: the cameras it prescribes (empty: as chosen);
    settings: what metrics.json records about it.
    """

    name: str
    regions: tuple[str, ...]
    cameras: tuple[str, ...]
    settings: dict[str, Any] = field(hash=False)


PROTOCOLS: dict[str, Protocol] = {
    "standard": Protocol(
        name="standard",
        regions=("image", "mask", "mouth"),
        cameras=(),
        settings={
            "description": "per-image PSNR, SSIM and LPIPS in each region, averaged over images",
            "regions": {
                "image": "every pixel",
                "mask": "the tracked mesh's silhouette: pixels of preprocessing's mask whose centre the "
                "tracked mesh covers",
                "mouth": "pixels whose tracked-mesh UV lies in the avatar's mouth texels; images where "
                "it is empty are left out",
            },
            "psnr": "10 log10(1 / MSE), MSE over the region's pixels and RGB channels, colours in [0, 1] "
            f"(MSE floored at {MSE_FLOOR:g}); mean over images",
            "ssim": {
                "window": SSIM_WINDOW,
                "sigma": SSIM_SIGMA,
                "k1": SSIM_K1,
                "k2": SSIM_K2,
                "data_range": 1.0,
                "padding": "reflect",
                "reduction": "map (mean over RGB) of the whole image averaged over the region's pixels; "
                "mean over images",
            },
            "lpips": "regions image and mask: both images with the pixels outside the region set to 0; "
            "mean over images",
        },
    ),
    "npva-legacy": Protocol(
        name="npva-legacy",
        regions=("image",),
        cameras=(LEGACY_CAMERA,),
        settings={
            "description": "the published evaluation script's protocol",
            "zeroed": "pixels outside (rendered coverage AND photo mask) set to 0 in both images",
            "rendered_coverage": {
                "avatar": f"accumulated opacity > {COVERAGE_OPACITY:g}",
                "baseline": "tracked-mesh coverage",
            },
            "coverage_opacity": COVERAGE_OPACITY,
            "mse": "over every pixel and RGB channel of the zeroed images, colours scaled to 0-255 "
            "(not rounded)",
            "psnr": "10 log10(255^2 / mean over images of the per-image MSE); metrics.csv's per-image "
            "PSNR is that image's own, for reference",
            "lpips": "on the zeroed images; mean over images",
        },
    ),
}


def get_protocol(name: str) -> Protocol:
    """The protocol called `name`; NpvaError naming the known ones otherwise."""
    if name not in PROTOCOLS:
        raise NpvaError(f"unknown metrics protocol {name!r} (known: {', '.join(PROTOCOLS)})")
    return PROTOCOLS[name]


def protocol_cameras(protocol: str, cameras: Sequence[str], krt: Path) -> tuple[str, ...]:
    """The cameras to evaluate: `cameras` as given (names or "test"/"train"; empty = all) for the
    standard protocol; exactly the prescribed one for npva-legacy, which the KRT must list."""
    prescribed = get_protocol(protocol).cameras
    if not prescribed:
        return tuple(cameras)
    if cameras and tuple(cameras) != prescribed:
        raise NpvaError(
            f"the {protocol} protocol evaluates camera {', '.join(prescribed)} only: leave out --cameras"
        )
    known = read_krt(krt)
    absent = [name for name in prescribed if name not in known]
    if absent:
        raise NpvaError(
            f"{krt}: the {protocol} protocol evaluates camera {', '.join(absent)}, which this KRT does not "
            f"list (it has {', '.join(known) or 'none'})"
        )
    return prescribed


# ---- perceptual metrics ----------------------------------------------------------------------------


class PerceptualMetrics:
    """LPIPS-VGG and ST-LPIPS-VGG distances of image pairs; either may be unavailable (then NaN).

    networks: key in PERCEPTUAL_KEYS -> PerceptualLoss or None; notes: key -> why it is unavailable.
    """

    def __init__(self, networks: dict[str, Any], notes: dict[str, str]):
        self.networks = networks
        self.notes = notes

    @classmethod
    def load(
        cls, device: torch.device, weights: Sequence[str | Path] | None = None, configured: str | None = None
    ) -> PerceptualMetrics:
        """LPIPS-VGG from `weights`, else NPVA_LPIPS_WEIGHTS, else `configured` (os.pathsep-separated
        files, used only when all exist); ST-LPIPS-VGG from the installed stlpips-pytorch weights."""
        networks: dict[str, Any] = dict.fromkeys(PERCEPTUAL_KEYS)
        notes: dict[str, str] = {}
        paths, reason = _lpips_weight_files(weights, configured)
        if paths:
            networks["lpips"] = lpips_vgg(paths).to(device)
        else:
            notes["lpips"] = reason
        if shipped_st_lpips_weights("vgg") is not None:
            networks["st_lpips"] = st_lpips("vgg").to(device)
        else:
            notes["st_lpips"] = (
                f"unavailable: ST-LPIPS weights not installed (pip install {ST_LPIPS_REQUIREMENT})"
            )
        return cls(networks, notes)

    def scores(self, images: Sequence[torch.Tensor], reference: torch.Tensor) -> list[dict[str, float]]:
        """Distances of each image to one reference, all (H, W, 3) in [0, 1]: per image, one per key,
        NaN where unavailable or the images are smaller than the network accepts. The reference's
        features are computed once for all the images (the avatar and the baseline share the photo)."""
        result: list[dict[str, float]] = [{} for _ in images]
        stacked = torch.stack([image.permute(2, 0, 1).float() for image in images])
        for key, network in self.networks.items():
            if network is None or min(reference.shape[:2]) < network.min_size:
                distances = [math.nan] * len(images)
            else:
                distances = network.distance(stacked, reference.permute(2, 0, 1).float()[None]).tolist()
            for values, distance in zip(result, distances, strict=True):
                values[key] = float(distance)
        return result

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per key: the metric's name and weight files and smallest accepted size, or why it is missing."""
        described = {}
        for key, network in self.networks.items():
            if network is None:
                described[key] = {"metric": _METRIC_NAMES[key], "available": False, "reason": self.notes[key]}
            else:
                described[key] = {
                    "metric": network.name,
                    "available": True,
                    "weights": [str(p) for p in network.source],
                    "min_size": network.min_size,
                    "smaller_images": "not scored (no upsampling)",
                }
        return described


_METRIC_NAMES = {"lpips": "lpips-vgg", "st_lpips": "st-lpips-vgg"}


def _lpips_weight_files(
    weights: Sequence[str | Path] | None, configured: str | None
) -> tuple[list[Path], str]:
    """LPIPS-VGG weight files to load (empty: none) and, when empty, why."""
    if weights:
        return [Path(p) for p in weights], ""
    named = os.environ.get(ENV_WEIGHTS)
    if named:
        return [Path(p) for p in named.split(os.pathsep) if p], ""
    if configured:
        paths = [Path(p) for p in configured.split(os.pathsep) if p]
        missing = [p for p in paths if not p.is_file()]
        if not missing:
            return paths, ""
        return [], f"unavailable: the checkpoint's LPIPS weight file {missing[0]} is not on this machine"
    return [], f"unavailable: no LPIPS-VGG weights (give --lpips-weights or set {ENV_WEIGHTS})"


# ---- scoring one image -----------------------------------------------------------------------------


def standard_scores(
    images: dict[str, torch.Tensor],
    reference: torch.Tensor,
    regions: dict[str, torch.Tensor | None],
    perceptual: PerceptualMetrics,
) -> dict[str, dict[str, dict[str, float]]]:
    """Per image (subject name -> (H, W, 3)) and region (name -> (H, W) bool, None for every pixel):
    PSNR, SSIM and, for LPIPS_REGIONS, the perceptual distances to reference (H, W, 3), all in [0, 1].
    An empty region scores NaN."""
    squared = {name: ((image - reference) ** 2).mean(-1) for name, image in images.items()}  # (H, W)
    ssim_maps = {name: ssim(image, reference) for name, image in images.items()}
    scores: dict[str, dict[str, dict[str, float]]] = {name: {} for name in images}
    everywhere = torch.ones(reference.shape[:2], dtype=torch.bool, device=reference.device)
    for region_name, region in regions.items():
        region = everywhere if region is None else region
        keys = ("psnr", "ssim") + (PERCEPTUAL_KEYS if region_name in LPIPS_REGIONS else ())
        if not region.any():
            for name in images:
                scores[name][region_name] = dict.fromkeys(keys, math.nan)
            continue
        for name in images:
            scores[name][region_name] = {
                "psnr": psnr(float(squared[name][region].mean())),
                "ssim": float(ssim_maps[name][region].mean()),
            }
        if region_name in LPIPS_REGIONS:
            inside = region[..., None].to(reference.dtype)
            distances = perceptual.scores([image * inside for image in images.values()], reference * inside)
            for name, values in zip(images, distances, strict=True):
                scores[name][region_name].update(values)
    return scores


def legacy_scores(
    image: torch.Tensor,
    reference: torch.Tensor,
    coverage: torch.Tensor,
    mask: torch.Tensor,
    perceptual: PerceptualMetrics,
) -> dict[str, dict[str, float]]:
    """npva-legacy scores of image, reference (H, W, 3) in [0, 1] once the pixels outside (coverage AND
    mask), both (H, W) bool, are set to 0 in both: {"image": {"mse" (0-255 scale), "psnr" (this
    image's), perceptual distances}}."""
    inside = (coverage & mask)[..., None].to(image.dtype)
    image, reference = image * inside, reference * inside
    mse = float((((image - reference) * 255.0) ** 2).mean())
    return {"image": {"mse": mse, "psnr": psnr(mse, peak=255.0), **perceptual.scores([image], reference)[0]}}


@torch.no_grad()
def score_sample(
    ctx: EvalContext, sample: TrainSample, protocol: Protocol, baseline: bool, perceptual: PerceptualMetrics
) -> dict[str, Any]:
    """One CSV row: seq, frame, cam, pixel counts and "<subject>_<region>_<metric>" values."""
    photo = sample.targets.image.permute(1, 2, 0)  # (H, W, 3)
    mask = sample.targets.mask
    rendered, out = ctx.avatar.render_image(sample.drive, sample.camera)
    renders = {"avatar": (rendered.clamp(0, 1), out.to_image(out.rays.opacity) > COVERAGE_OPACITY)}
    legacy = protocol.name == "npva-legacy"
    # The tracked mesh by pixel centres: the floor's coverage and the standard protocol's regions.
    mesh_uv = mesh_uv_image(ctx.layout, sample) if baseline or not legacy else None
    if baseline:
        background = ctx.avatar.background_colour(sample.cam)
        renders["baseline"] = textured_mesh_image(ctx.layout, sample, background, mesh_uv)
    row: dict[str, Any] = {"seq": sample.seq, "frame": sample.frame, "cam": sample.cam}
    if legacy:
        for subject, (image, coverage) in renders.items():
            row[f"{subject}_kept_pixels"] = int((coverage & mask).sum())
            row.update(_columns(subject, legacy_scores(image, photo, coverage, mask, perceptual)))
        return row
    # Preprocessing's masks add a rim of pixels that the mesh touches without covering their centre;
    # there the textured mesh shows the avatar's background colour, which would make the floor's score
    # depend on what the avatar learned.
    regions = {
        "image": None,
        "mask": mask & mesh_uv[1],
        "mouth": mouth_region(ctx.layout, sample, ctx.avatar.mouth, mesh_uv),
    }
    row["mask_pixels"], row["mouth_pixels"] = int(regions["mask"].sum()), int(regions["mouth"].sum())
    images = {subject: image for subject, (image, _) in renders.items()}
    for subject, scores in standard_scores(images, photo, regions, perceptual).items():
        row.update(_columns(subject, scores))
    return row


def _columns(subject: str, scores: dict[str, dict[str, float]]) -> dict[str, float]:
    return {
        f"{subject}_{region}_{key}": value
        for region, values in scores.items()
        for key, value in values.items()
    }


# ---- the report ------------------------------------------------------------------------------------


def summarize(rows: list[dict[str, Any]], protocol: Protocol) -> dict[str, dict[str, dict[str, Any]]]:
    """summary[subject][region] for the subjects and regions the rows hold: "images" (the images with a
    PSNR there) and the mean of each metric over the images that have it (NaN when none); npva-legacy's
    PSNR is that of the mean MSE."""
    columns = list(rows[0]) if rows else []
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for subject in SUBJECTS:
        regions = {}
        for region in protocol.regions:
            prefix = f"{subject}_{region}_"
            metrics = [column[len(prefix) :] for column in columns if column.startswith(prefix)]
            if not metrics:
                continue
            entry: dict[str, Any] = {"images": sum(not math.isnan(row[f"{prefix}psnr"]) for row in rows)}
            entry.update({metric: _finite_mean([row[prefix + metric] for row in rows]) for metric in metrics})
            if protocol.name == "npva-legacy":
                entry["psnr"] = psnr(entry["mse"], peak=255.0)
            regions[region] = entry
        if regions:
            summary[subject] = regions
    return summary


def _finite_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


@dataclass
class MetricsReport:
    """The outcome of one `npva metrics` run.

    rows: one dict per image (seq, frame, cam, values); summary[subject][region][metric] (subjects
    "avatar" and, with the baseline, "baseline"); settings: the protocol's and this run's settings;
    skipped: samples left out, each with its reason.
    """

    protocol: str
    settings: dict[str, Any]
    checkpoint: Path
    step: int
    subject: Path
    gendir: Path
    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, dict[str, Any]]]
    skipped: list[str]

    def counts(self) -> dict[str, int]:
        return {
            "images": len(self.rows),
            "frames": len({(row["seq"], row["frame"]) for row in self.rows}),
            "cameras": len({row["cam"] for row in self.rows}),
            "skipped": len(self.skipped),
        }

    def to_json(self) -> dict[str, Any]:
        """What metrics.json holds (NaN written as null)."""
        return _json_safe(
            {
                "protocol": self.protocol,
                "settings": self.settings,
                "checkpoint": str(self.checkpoint),
                "step": self.step,
                "subject": str(self.subject),
                "gendir": str(self.gendir),
                "counts": self.counts(),
                "summary": self.summary,
                "skipped": self.skipped,
            }
        )

    def csv_text(self) -> str:
        """metrics.csv: a header, then one line per image (NaN left empty)."""
        buffer = io.StringIO()
        columns = list(self.rows[0]) if self.rows else ["seq", "frame", "cam"]
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in self.rows:
            writer.writerow([_csv_value(row[column]) for column in columns])
        return buffer.getvalue()

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write metrics.csv and metrics.json into out_dir (atomically); returns their paths."""
        out_dir = Path(out_dir)
        csv_path, json_path = out_dir / "metrics.csv", out_dir / "metrics.json"
        with atomic_open(csv_path, "w") as f:
            f.write(self.csv_text())
        with atomic_open(json_path, "w") as f:
            json.dump(self.to_json(), f, indent=2)
            f.write("\n")
        return csv_path, json_path

    def table(self) -> str:
        """A short text table of the summary, one line per subject and region."""
        counts = self.counts()
        skipped = f", {counts['skipped']} skipped" if counts["skipped"] else ""
        lines = [
            f"npva metrics, protocol {self.protocol}: step {self.step} of {self.checkpoint}, "
            f"{counts['images']} images ({counts['frames']} frames x {counts['cameras']} cameras){skipped}"
        ]
        present = {m for regions in self.summary.values() for entry in regions.values() for m in entry}
        metrics = [m for m in _TABLE_HEADERS if m in present]
        lines.append(
            f"{'subject':<9} {'region':<6} {'images':>6} "
            + " ".join(f"{_TABLE_HEADERS[m]:>9}" for m in metrics)
        )
        for subject, regions in self.summary.items():
            for region, entry in regions.items():
                cells = " ".join(f"{_table_value(entry.get(m)):>9}" for m in metrics)
                lines.append(f"{subject:<9} {region:<6} {entry['images']:>6} {cells}")
        return "\n".join(lines)


_TABLE_HEADERS = {"psnr": "PSNR dB", "ssim": "SSIM", "mse": "MSE", "lpips": "LPIPS", "st_lpips": "st-lpips"}


def _table_value(value: float | None) -> str:
    if value is None:
        return ""
    if math.isnan(value):
        return "n/a"
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else format(value, ".8g")
    return value


def _json_safe(value: Any) -> Any:
    """value with NaN and infinities replaced by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


# ---- the whole evaluation --------------------------------------------------------------------------


def default_out_dir(ctx: EvalContext, protocol: str) -> Path:
    """<run dir>/metrics/<protocol>, the run dir being the one holding checkpoints/."""
    return run_directory(ctx.checkpoint) / "metrics" / protocol


def run_settings(
    ctx: EvalContext,
    dataset: AvatarDataset,
    protocol: Protocol,
    baseline: bool,
    perceptual: PerceptualMetrics,
) -> dict[str, Any]:
    """The protocol's settings and this run's: cameras, image scale, latent, background, metrics used."""
    return {
        "name": protocol.name,
        **protocol.settings,
        "cameras": list(dataset.cameras),
        "image_size": "training size",
        "image_scale": dataset.prepared.settings.image_scale,
        "latent": "z = mu (evaluation mode, no sampling jitter)",
        "rendered_colours": "clamped to [0, 1]",
        "background": ctx.avatar.background_mode,
        "perceptual": perceptual.describe(),
        "baseline": BASELINE_DESCRIPTION if baseline else None,
    }


def evaluate_checkpoint(
    ctx: EvalContext,
    dataset: AvatarDataset,
    protocol: str = "standard",
    baseline: bool = False,
    out_dir: str | Path | None = None,
    progress: bool = True,
    *,
    lpips_weights: Sequence[str | Path] | None = None,
) -> MetricsReport:
    """Score every sample of `dataset` (see evaluation_dataset) under `protocol`, with the textured-mesh
    baseline beside the avatar when `baseline`; writes metrics.csv and metrics.json into out_dir when
    given. Samples whose files cannot be read are skipped and listed in the report."""
    chosen = get_protocol(protocol)
    if chosen.cameras and tuple(dataset.cameras) != chosen.cameras:
        raise NpvaError(
            f"the {protocol} protocol evaluates camera {', '.join(chosen.cameras)} only, the samples have "
            f"{', '.join(dataset.cameras)}"
        )
    perceptual = PerceptualMetrics.load(ctx.device, lpips_weights, ctx.config.loss.lpips_weights)
    rows, skipped = [], list(dataset.skipped)
    for index in tqdm(range(len(dataset)), desc="npva metrics", unit="image", disable=not progress):
        try:
            sample = dataset.load(index).to(ctx.device)
        except (NpvaError, OSError) as exc:
            log.warning("skipping %s: %s", " ".join(dataset.keys[index]), exc)
            skipped.append(f"{' '.join(dataset.keys[index])}: {exc}")
            continue
        rows.append(score_sample(ctx, sample, chosen, baseline, perceptual))
    if not rows:
        raise NpvaError(f"no image could be scored: {'; '.join(skipped[:3])}")
    report = MetricsReport(
        protocol=chosen.name,
        settings=run_settings(ctx, dataset, chosen, baseline, perceptual),
        checkpoint=ctx.checkpoint,
        step=ctx.step,
        subject=ctx.subject,
        gendir=ctx.gendir,
        rows=rows,
        summary=summarize(rows, chosen),
        skipped=skipped,
    )
    if out_dir is not None:
        report.write(out_dir)
    return report
