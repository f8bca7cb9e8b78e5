"""`npva synth`: write a synthetic subject in the Multiface layout."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from npva.errors import NpvaError
from npva.fileio import atomic_open
from npva.io import SubjectLayout, write_camera_split, write_frame_list, write_image, write_krt
from npva.synth.frames import write_frames
from npva.synth.grid import ParamGrid
from npva.synth.scene import FrameKey, Preset, capture_frames, dome_camera, get_preset
from npva.synth.sheet import ContactSheet
from npva.synth.variant import get_variant

MARKER = ".npva_synth.json"  # names the files a synth run writes, so that a re-run may replace them
CONTACT_SHEET = "contact_sheet.png"


@dataclass
class SynthSummary:
    """What a synth run wrote; str() is a one-line summary."""

    root: Path
    preset: str
    seed: int
    variant: str
    cameras: int
    sequences: int
    frames: int
    image_size: tuple[int, int]
    texture_size: int
    mesh_vertices: int
    files: int
    bytes: int
    seconds: float

    def __str__(self) -> str:
        height, width = self.image_size
        return (
            f"synthetic subject {self.root} (preset {self.preset}, seed {self.seed}{self._variant_words()}): "
            f"{self.cameras} cameras x {self.frames} frames in {self.sequences} sequences, "
            f"images {height}x{width}, textures {self.texture_size}^2, tracked mesh {self.mesh_vertices} "
            f"vertices; {self.files} files, {self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s"
        )

    def _variant_words(self) -> str:
        return "" if self.variant == "clean" else f", variant {self.variant}"


def write_subject(
    out: Path,
    preset: str = "tiny",
    seed: int = 0,
    *,
    variant: str = "clean",
    cameras: str = "preset",
    workers: int | None = None,
) -> SynthSummary:
    """Write the synthetic subject of `seed` and `variant` (variant.py) at the size of `preset`, seen by
    the camera layout `cameras` (scene.CAMERA_LAYOUTS: the preset's cameras, or every camera of the
    dome), into `out`. The layout changes which cameras photograph the subject, not the subject: a
    camera's photos, gain and noise are the same in either layout.

    `out` must be absent, empty, or a previous synth output (whose files are then replaced).
    workers: processes that render the frames' views; default 1 for the tiny preset, else one per
    available CPU core. The files do not depend on it."""
    start = time.perf_counter()
    spec = get_preset(preset, cameras)
    get_variant(variant)
    if importlib.util.find_spec("OpenEXR") is None:
        raise NpvaError(
            "synth writes its MVS depth maps as EXR, which needs the OpenEXR package (pip install OpenEXR)"
        )
    out = Path(out)
    layout = SubjectLayout(out)
    frames = capture_frames(spec)
    planned = _planned_files(layout, spec, frames)
    _prepare_directory(out, planned)

    height, width = spec.image_size
    write_krt(layout.krt, [dome_camera(name, height, width) for name in spec.cameras])
    if workers is None:
        workers = 1 if spec.name == "tiny" else _available_cores()
    sheet = ContactSheet(spec, frames)
    sheet.add(write_frames(preset, seed, out, frames, sheet.wanted(), workers, variant, cameras))
    entries = [(key.sequence, key.frame) for key in frames]
    write_frame_list(layout.frame_list, entries)
    write_frame_list(layout.split_list("train"), [e for e in entries if e[0] in spec.train_sequences])
    write_frame_list(layout.split_list("test"), [e for e in entries if e[0] in spec.test_sequences])
    train_cameras = [name for name in spec.cameras if name not in spec.test_cameras]
    write_camera_split(layout.camera_split, train_cameras, list(spec.test_cameras))
    write_image(out / CONTACT_SHEET, sheet.image())

    return SynthSummary(
        root=out,
        preset=preset,
        seed=seed,
        variant=variant,
        cameras=len(spec.cameras),
        sequences=len(spec.sequences),
        frames=len(frames),
        image_size=spec.image_size,
        texture_size=spec.texture_size,
        mesh_vertices=ParamGrid.coarse().num_grid_verts,
        files=len(planned),
        bytes=sum((out / name).stat().st_size for name in planned),
        seconds=time.perf_counter() - start,
    )


def _available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _planned_files(layout: SubjectLayout, spec: Preset, frames: list[FrameKey]) -> list[str]:
    """Paths (relative to the root) of every file the run writes."""
    paths = [layout.krt, layout.frame_list, layout.split_list("train"), layout.split_list("test")]
    paths += [layout.camera_split, layout.root / CONTACT_SHEET]
    for key in frames:
        seq, frame = key.sequence, key.frame
        paths += [layout.mesh_obj(seq, frame), layout.mesh_bin(seq, frame), layout.transform(seq, frame)]
        paths.append(layout.average_texture(seq, frame))
        for name in spec.cameras:
            paths += [layout.image(seq, name, frame), layout.mvs_depth(seq, name, frame)]
    return [str(path.relative_to(layout.root)) for path in paths]


def _prepare_directory(out: Path, planned: list[str]) -> None:
    """Make `out` ready: create it, or clear the files of a previous synth run, and record `planned`.

    Raises NpvaError if `out` is a file or a non-empty directory that synth did not write."""
    if out.exists() and not out.is_dir():
        raise NpvaError(f"{out}: exists and is not a directory; synth writes a subject directory")
    marker = out / MARKER
    if out.is_dir() and any(out.iterdir()):
        if not marker.is_file():
            raise NpvaError(
                f"{out}: directory is not empty and holds no {MARKER} (not a synth output); "
                "choose an empty or new directory"
            )
        _remove_previous(out, marker)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(marker) as f:
        json.dump({"generator": "npva synth", "files": planned}, f, indent=0)


def _remove_previous(out: Path, marker: Path) -> None:
    """Delete the files a previous synth run recorded in its marker, then the directories they emptied."""
    try:
        previous = json.loads(marker.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NpvaError(
            f"{marker}: cannot read the list of files of the previous synth run ({exc})"
        ) from None
    folders = set()
    for name in previous:
        path = (out / name).resolve()
        if out.resolve() not in path.parents:
            raise NpvaError(f"{marker}: lists {name!r}, which is outside {out}; not removing anything")
        path.unlink(missing_ok=True)
        folders.update(p for p in path.parents if out.resolve() in p.parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
