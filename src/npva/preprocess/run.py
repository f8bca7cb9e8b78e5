"""`npva preprocess`: position maps, masks, depth and statistics for a subject; resumable, shardable.

The unit of work is one frame: its position map and, for every camera, its mask and depth. Frames are
dealt to shards round-robin in a fixed order, so the union of shards is the whole job. Statistics and the
UV layout are computed by whichever shard finds every position map present.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from npva import __version__
from npva.config import PreprocessConfig
from npva.data import gendir as gd
from npva.data.prepared import training_camera
from npva.errors import FormatError, MissingFileError, NpvaError
from npva.fileio import UnsafePathError, remove_temporaries
from npva.geometry.camera import Camera
from npva.geometry.mesh import to_face_frame
from npva.geometry.posmap import PositionMapSampler
from npva.geometry.raster import coverage_mask, rasterize_camera
from npva.io.colmap import find_colmap_depth, read_colmap_depth
from npva.io.multiface import (
    load_world_verts,
    read_depth,
    read_frame_list,
    read_image,
    read_image_size,
    read_krt,
    read_obj,
    read_transform,
)
from npva.io.splits import split_frames
from npva.io.subject import SubjectLayout
from npva.preprocess.stereo import StereoSettings, StereoView, frame_depths
from npva.preprocess.uvlayout import (
    FaceAxes,
    MouthStretch,
    check_mouth,
    face_axes,
    grid_faces,
)
from npva.processes import exit_with_parent

Frame = tuple[str, str]  # (sequence, frame id)
# Temporary files of unfinished writes older than this are left by killed runs (shards running beside
# this one keep theirs fresh) and are removed.
STALE_TEMPORARY_S = 3600.0
DEPTH_MODES = ("auto", "import", "stereo", "mesh", "none")


@dataclass
class Summary:
    """What a run made, skipped and failed (each failure with its reason; `failed_frames`: the frames
    whose position map could not be made). `gaps` counts what the capture lacks, by kind (views
    without a photo, frames without a tracked mesh, views without an MVS depth file): those are left
    out, or get an unknown depth, and are not failures. `depth_sources` counts the views whose depth
    was made, by source. `notes`: one line each, e.g. the depth used."""

    made: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    failed_frames: list[Frame] = field(default_factory=list)
    gaps: Counter[str] = field(default_factory=Counter)
    depth_sources: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    finalized: str = ""
    seconds: float = 0.0

    def merge(self, other: Summary) -> None:
        self.made += other.made
        self.skipped += other.skipped
        self.failed.extend(other.failed)
        self.failed_frames.extend(other.failed_frames)
        self.gaps.update(other.gaps)
        self.depth_sources.update(other.depth_sources)

    def __str__(self) -> str:
        lines = [
            f"preprocess: {self.made} outputs made, {self.skipped} skipped (already done), "
            f"{len(self.failed)} failed, {self.seconds:.1f} s"
        ]
        lines += [f"  {note}" for note in self.notes]
        if self.depth_sources:
            counts = ", ".join(f"{count} {source}" for source, count in sorted(self.depth_sources.items()))
            lines.append(f"  depth made per view: {counts}")
        if self.gaps:
            counts = ", ".join(f"{count} {kind}" for kind, count in sorted(self.gaps.items()))
            lines.append(f"  missing in the capture (left out, not failures): {counts}")
        lines += [f"  failed: {reason}" for reason in self.failed[:50]]
        if len(self.failed) > 50:
            lines.append(f"  ... and {len(self.failed) - 50} more")
        if self.finalized:
            lines.append(self.finalized)
        return "\n".join(lines)


def parse_shard(text: str | None, environ: dict[str, str] | None = None) -> tuple[int, int]:
    """'I/N' -> (I, N); None falls back to RANK / WORLD_SIZE (torchrun, cluster launchers), else 0/1."""
    environ = os.environ if environ is None else environ
    if text is None:
        if "RANK" in environ and "WORLD_SIZE" in environ:
            text = f"{environ['RANK']}/{environ['WORLD_SIZE']}"
        else:
            return 0, 1
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError as exc:
        raise NpvaError(f"shard must look like I/N (e.g. 0/4), got {text!r}") from exc
    if count < 1 or not 0 <= index < count:
        raise NpvaError(f"shard {text!r}: need 0 <= I < N")
    return index, count


@dataclass
class Context:
    """Everything a worker needs to process frames (picklable)."""

    subject: Path
    gendir: Path
    config: PreprocessConfig
    cameras: dict[str, Camera]
    sampler: PositionMapSampler
    num_verts: int
    photo_sizes: dict[str, tuple[int, int]]  # (H, W) of each camera's photos (see photo_sizes)


PHOTO_SIZE_PROBES = 8  # frames whose photos decide the size of each camera's photos


def photo_sizes(
    layout: SubjectLayout, cameras: Iterable[str], frames: list[Frame]
) -> dict[str, tuple[int, int]]:
    """(H, W) of each camera's photos: the most common size among its photos in up to
    PHOTO_SIZE_PROBES frames spread over `frames` (headers only). Cameras without a readable photo
    there are left out. Every shard finds the same sizes."""
    step = max(1, len(frames) // PHOTO_SIZE_PROBES)
    probes = frames[::step][:PHOTO_SIZE_PROBES]
    sizes: dict[str, tuple[int, int]] = {}
    for cam in cameras:
        seen = Counter()
        for seq, frame in probes:
            with contextlib.suppress(NpvaError, OSError):
                seen[read_image_size(layout.image(seq, cam, frame))] += 1
        if seen:
            sizes[cam] = seen.most_common(1)[0][0]
    return sizes


def depth_folder(subject: Path, config: PreprocessConfig) -> Path:
    """Where imported depth lives: config.depth_dir, default SUBJECT/mvs_depth."""
    return Path(config.depth_dir) if config.depth_dir else SubjectLayout(subject).mvs_depth_dir


def resolve_depth(subject: Path, config: PreprocessConfig) -> tuple[PreprocessConfig, str]:
    """`config` with depth "auto" decided ("import" when the MVS depth folder exists, else "mesh"),
    and one line saying which depth is used. An "import" folder that does not exist is an error."""
    if config.depth not in DEPTH_MODES:
        raise NpvaError(f"depth must be one of {', '.join(DEPTH_MODES)}, got {config.depth!r}")
    folder = depth_folder(subject, config)
    if config.depth == "auto":
        config = dataclasses.replace(config, depth="import" if folder.is_dir() else "mesh")
    if config.depth == "import":
        if not folder.is_dir():
            raise MissingFileError(folder, "MVS depth folder (--depth import DIR)")
        return config, f"depth: imported from {folder} (x{config.depth_scale:g} to mm)"
    if config.depth == "stereo":
        return (
            config,
            f"depth: multi-view stereo from the photos around the tracked mesh, on {stereo_device()}",
        )
    if config.depth == "mesh":
        return config, f"depth: the tracked mesh rendered (no MVS depth folder {folder})"
    return config, "depth: none"


def stereo_device() -> str:
    """Where stereo runs: the GPU when there is one (each worker process uses it), else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _imported_depth(ctx: Context, seq: str, cam: str, frame: str, shape: tuple[int, int]):
    """(imported MVS depth in mm resized (nearest) to `shape`, its source), or (None, "") when no
    file exists: DIR/<seq>/<cam>/<frame>.exr|.npz, else the geometric depth map of a COLMAP dense
    workspace DIR/<seq>/<frame>/ whose image names the camera (npva.io.colmap)."""
    root = depth_folder(ctx.subject, ctx.config)
    depth, source = None, ""
    for suffix in (".exr", ".npz"):
        path = root / seq / cam / f"{frame}{suffix}"
        if path.is_file():
            depth, source = read_depth(path, scale=ctx.config.depth_scale), f"imported {suffix[1:]}"
            break
    else:
        path = find_colmap_depth(root / seq / frame / "stereo" / "depth_maps", cam)
        if path is not None:
            depth, source = read_colmap_depth(path, scale=ctx.config.depth_scale), "imported COLMAP"
    if depth is not None and depth.shape != shape:
        depth = cv2.resize(depth, shape[::-1], interpolation=cv2.INTER_NEAREST)
    return depth, source


class _FrameStereo:
    """Stereo depth of one frame's views, computed for all of them at the first request (each view is
    matched with, and checked against, its neighbours)."""

    def __init__(self, ctx: Context, layout: SubjectLayout, verts: torch.Tensor, seq: str, frame: str):
        self.ctx, self.layout, self.verts, self.seq, self.frame = ctx, layout, verts, seq, frame
        self.depths: dict[str, np.ndarray] | None = None
        self.errors: dict[str, NpvaError] = {}

    def depth(self, cam: str) -> np.ndarray:
        """(H, W) depth in mm of camera `cam`; the error of its photo when it could not be read."""
        if self.depths is None:
            self.depths = self._compute()
        if cam in self.errors:
            raise self.errors[cam]
        return self.depths[cam]

    def _compute(self) -> dict[str, np.ndarray]:
        ctx, views = self.ctx, {}
        for cam, camera in ctx.cameras.items():
            path = self.layout.image(self.seq, cam, self.frame)
            try:
                size = read_image_size(path)
                if size != ctx.photo_sizes.get(cam, size):
                    continue  # _process_view reports it
                camera = training_camera(camera, size, ctx.config.image_scale)
                photo = read_image(path, (camera.height, camera.width))
            except MissingFileError:
                continue
            except NpvaError as exc:
                self.errors[cam] = exc
                continue
            prior = rasterize_camera(self.verts, ctx.sampler.faces, camera).depth.numpy()
            views[cam] = StereoView(camera, photo, prior)
        return frame_depths(views, self.verts.mean(0).numpy(), device=stereo_device())


def process_frame(ctx: Context, seq: str, frame: str) -> Summary:
    """Make the missing outputs of one frame; never raises for bad input, reports it instead (an
    output path leading outside the gendir is no frame's fault: UnsafePathError stops the run)."""
    summary = Summary()
    layout, out = SubjectLayout(ctx.subject), gd.GenDir(ctx.gendir)
    size = ctx.config.uv_size
    if not (layout.mesh_bin(seq, frame).is_file() or layout.mesh_obj(seq, frame).is_file()):
        summary.gaps["frames without a tracked mesh"] += 1
        summary.failed_frames.append((seq, frame))
        return summary
    try:
        world = load_world_verts(layout, seq, frame, ctx.num_verts)
        if gd.posmap_ok(out.posmap(seq, frame), size):
            summary.skipped += 1
        else:
            R, t = read_transform(layout.transform(seq, frame))
            gd.write_npy(out.posmap(seq, frame), ctx.sampler.position_map(to_face_frame(world, R, t)))
            summary.made += 1
    except UnsafePathError:
        raise
    except (NpvaError, OSError) as exc:
        summary.failed.append(f"{seq} {frame}: {exc}")
        summary.failed_frames.append((seq, frame))
        return summary
    verts = torch.as_tensor(world, dtype=torch.float32)
    stereo = _FrameStereo(ctx, layout, verts, seq, frame) if ctx.config.depth == "stereo" else None
    for cam, camera in ctx.cameras.items():
        try:
            summary.merge(_process_view(ctx, layout, out, verts, seq, cam, frame, camera, stereo))
        except UnsafePathError:
            raise
        except (NpvaError, OSError) as exc:
            summary.failed.append(f"{seq} {frame} camera {cam}: {exc}")
    return summary


def _process_view(ctx, layout, out, verts, seq, cam, frame, camera, stereo) -> Summary:
    summary = Summary()
    image = layout.image(seq, cam, frame)
    if not image.is_file():
        summary.gaps["views without a photo"] += 1
        return summary
    size = read_image_size(image)
    expected = ctx.photo_sizes.get(cam, size)
    if size != expected:  # training needs one image size: this view gets no mask and is left out
        raise FormatError(
            image,
            f"size {size[0]}x{size[1]} (HxW) differs from {expected[0]}x{expected[1]} "
            f"of camera {cam}'s photos",
        )
    camera = training_camera(camera, size, ctx.config.image_scale)
    shape = (camera.height, camera.width)
    mask_path, depth_path = out.mask(seq, cam, frame), out.depth(seq, cam, frame)
    want_depth = ctx.config.depth != "none"
    mask_done = gd.mask_ok(mask_path, shape)
    depth_done = not want_depth or gd.depth_ok(depth_path, shape)
    summary.skipped += int(mask_done) + int(want_depth and depth_done)
    if mask_done and depth_done:
        return summary
    if not mask_done:
        gd.write_mask(mask_path, coverage_mask(verts, ctx.sampler.faces, camera))
        summary.made += 1
    if not depth_done:
        if ctx.config.depth == "mesh":
            depth, source = rasterize_camera(verts, ctx.sampler.faces, camera).depth.numpy(), "mesh"
        elif stereo is not None:
            depth, source = stereo.depth(cam), "stereo"
        else:
            depth, source = _imported_depth(ctx, seq, cam, frame, shape)
            if depth is None:
                summary.gaps["views without an MVS depth file (depth unknown)"] += 1
                depth, source = np.zeros(shape, np.float32), "unknown (no MVS depth file)"
        gd.write_depth_npz(depth_path, depth)
        summary.depth_sources[source] += 1
        summary.made += 1
    return summary


# ---- orchestration -------------------------------------------------------------------------------

_WORKER_CONTEXT: Context | None = None


def _init_worker(ctx: Context) -> None:
    global _WORKER_CONTEXT
    exit_with_parent()
    torch.set_num_threads(1)
    _WORKER_CONTEXT = ctx


def _worker(frame: Frame) -> Summary:
    assert _WORKER_CONTEXT is not None
    return process_frame(_WORKER_CONTEXT, *frame)


def _run_frames(ctx: Context, frames: list[Frame], workers: int, progress: bool) -> Summary:
    summary = Summary()
    bar = tqdm(total=len(frames), desc="preprocess", unit="frame", disable=not progress)
    if workers <= 1:
        results: Iterable[Summary] = (process_frame(ctx, *f) for f in frames)
        for result in results:
            summary.merge(result)
            bar.update()
    else:
        spawn = get_context("spawn")  # fork after torch has started threads can deadlock
        with ProcessPoolExecutor(workers, spawn, _init_worker, (ctx,)) as pool:
            for result in pool.map(_worker, frames, chunksize=4):
                summary.merge(result)
                bar.update()
    bar.close()
    return summary


def _stats_frames(subject: Path, config: PreprocessConfig) -> list[Frame]:
    """config.stats_list, else the training frames of the subject's split (npva.io.splits)."""
    if config.stats_list:
        return read_frame_list(Path(config.stats_list))
    return split_frames(subject, "train")


def _good_stats_frames(
    ctx: Context, stats_frames: list[Frame], frames: list[Frame], failed: list[Frame]
) -> tuple[list[Frame], list[str], int]:
    """The statistics frames to use, notes on those left out (not in the frame list, or failed in this
    run), and how many position maps are still awaited from other shards."""
    out, size = gd.GenDir(ctx.gendir), ctx.config.uv_size
    listed, bad = set(frames), set(failed)
    unlisted = [f for f in stats_frames if f not in listed]
    candidates = [f for f in dict.fromkeys(stats_frames) if f in listed and f not in bad]
    present = [f for f in candidates if gd.posmap_ok(out.posmap(*f), size)]
    notes = [
        f"{len(group)} statistics frames left out ({reason}), e.g. {' '.join(group[0])}"
        for group, reason in ((unlisted, "not in the frame list"), (sorted(bad), "no position map"))
        if group
    ]
    return present, notes, len(candidates) - len(present)


def finalize(ctx: Context, stats_frames: list[Frame], frames: list[Frame], failed: list[Frame]) -> str:
    """Statistics, UV grid mesh and mouth mask over the statistics frames that are listed and have a
    position map, once no other shard may still make one (`failed`: frames this run could not make)."""
    stats_frames, notes, awaited = _good_stats_frames(ctx, stats_frames, frames, failed)
    if awaited:
        return "; ".join([f"statistics wait for {awaited} position maps (other shards)", *notes])
    if not stats_frames:
        return "; ".join(["no statistics: no statistics frame has a position map", *notes])
    out, size = gd.GenDir(ctx.gendir), ctx.config.uv_size
    coverage = ctx.sampler.coverage
    stretch = MouthStretch(coverage)
    total, total_sq = np.zeros((size, size, 3)), np.zeros((size, size, 3))
    for seq, frame in stats_frames:
        posmap = gd.read_posmap(out.posmap(seq, frame), size).astype(np.float64)
        total += posmap
        total_sq += posmap**2
        stretch.add(posmap)
    mean = total / len(stats_frames)
    per_texel = np.maximum(total_sq / len(stats_frames) - mean**2, 0.0)
    variance = float(per_texel[coverage].mean())
    if ctx.config.mouth_mask:
        mouth = gd.read_mask(Path(ctx.config.mouth_mask))
        if mouth.shape != coverage.shape:
            raise FormatError(ctx.config.mouth_mask, f"expected a {size}x{size} mask")
    else:
        layout = SubjectLayout(ctx.subject)
        poses = [
            read_transform(layout.transform(*f)) for f in stats_frames[:: max(1, len(stats_frames) // 32)]
        ]
        axes = face_axes(ctx.cameras.values(), poses)
        mouth, problem = derive_mouth(stretch, mean, coverage, axes, ctx.config)
        if problem is not None:
            notes.insert(0, problem)
    gd.write_stats(out, mean, variance)
    gd.write_uv_layout(out, coverage, grid_faces(coverage), mouth)
    done = (
        f"statistics over {len(stats_frames)} frames: std {np.sqrt(variance):.2f} mm; "
        f"{int(coverage.sum())} covered texels, {int(mouth.sum())} mouth texels"
    )
    return "; ".join([done, *notes])


def derive_mouth(
    stretch: MouthStretch, mean: np.ndarray, coverage: np.ndarray, axes: FaceAxes, config: PreprocessConfig
) -> tuple[np.ndarray, str | None]:
    """The mouth texels (S, S): the largest stretched region that sits where a mouth does (check_mouth),
    and None; when no region does, the largest one and a warning that says why it failed."""
    candidates = stretch.candidates(config.mouth_stretch, config.mouth_dilate)
    problems = []
    for region in candidates:
        problem = check_mouth(region, mean, coverage, axes)
        if problem is None:
            return region, None
        problems.append(problem)
    if not candidates:
        return np.zeros_like(coverage), "warning: no texel stretches like a mouth; give --mouth-mask PNG"
    return candidates[0], (
        f"warning: the derived mouth mask is not between the lips below the nose ({problems[0]}); "
        "check mouth_mask.png and give --mouth-mask PNG"
    )


def template_mesh(layout: SubjectLayout, frames: list[Frame]) -> Path:
    """The first OBJ of the frame list: tracked meshes share one topology and UVs, which .bin meshes
    (vertices only) lack."""
    for seq, frame in frames:
        if layout.mesh_obj(seq, frame).is_file():
            return layout.mesh_obj(seq, frame)
    raise MissingFileError(
        layout.tracked_mesh_dir, "tracked mesh OBJ of any listed frame (the faces and UVs are read from one)"
    )


def _count_outputs(out: gd.GenDir) -> dict[str, int]:
    """Files present under each output folder (all shards together)."""
    folders = {"posmaps": "posMap", "masks": "rast_mask", "depths": "depths"}
    return {
        name: sum(1 for p in (out.root / folder).rglob("*") if p.is_file() and not p.name.startswith("."))
        for name, folder in folders.items()
    }


def _check_manifest(out: gd.GenDir, settings: dict) -> None:
    manifest = gd.read_manifest(out)
    if manifest is not None and manifest.get("settings") != settings:
        raise NpvaError(
            f"{out.manifest}: this gendir was made with other settings "
            f"({manifest.get('settings')}); use another --gendir or delete it"
        )


def preprocess_subject(
    subject: Path,
    config: PreprocessConfig,
    gendir: Path | None = None,
    shard: tuple[int, int] = (0, 1),
    workers: int = 1,
    progress: bool = True,
) -> Summary:
    """Run (or resume) this shard's part of preprocessing; finalize when everything is present."""
    start = time.perf_counter()
    config, depth_note = resolve_depth(subject, config)
    layout = SubjectLayout(subject)
    out = gd.GenDir(gendir or subject / "gendir")
    settings = dataclasses.asdict(config)
    if config.depth == "stereo":  # what a re-run must match: the search and filter settings too
        settings["stereo"] = json.loads(json.dumps(dataclasses.asdict(StereoSettings())))  # as read back
    _check_manifest(out, settings)
    remove_temporaries(out.root, min_age_s=STALE_TEMPORARY_S)
    cameras = read_krt(layout.krt)
    frames = read_frame_list(layout.frame_list)
    if not frames:
        raise FormatError(layout.frame_list, "no frames listed")
    template = read_obj(template_mesh(layout, frames))
    ctx = Context(
        subject=subject,
        gendir=out.root,
        config=config,
        cameras=cameras,
        sampler=PositionMapSampler(template, config.uv_size),
        num_verts=len(template.verts),
        photo_sizes=photo_sizes(layout, cameras, frames),
    )
    index, count = shard
    summary = _run_frames(ctx, frames[index::count], workers, progress)
    summary.notes.append(depth_note)
    stats_frames = _stats_frames(subject, config)
    summary.finalized = finalize(ctx, stats_frames, frames, summary.failed_frames)
    gd.write_json(
        out.manifest,
        {
            "format_version": gd.FORMAT_VERSION,
            "npva_version": __version__,
            "settings": settings,
            "subject": str(subject),
            "frames": len(frames),
            "cameras": list(cameras),
            "template_vertices": ctx.num_verts,
            "produced": _count_outputs(out),
            "statistics": summary.finalized,
        },
    )
    summary.seconds = time.perf_counter() - start
    return summary
