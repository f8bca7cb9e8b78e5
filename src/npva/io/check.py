"""`npva check`: validate a subject directory file by file, reporting every problem instead of stopping.

Images and textures are checked cheaply (PNG header, size and end of file, no decoding); meshes, head
poses, lists and depth maps are read fully, as preprocessing will read them. The subject is usable when
KRT and the frame list parse, every file the listed frames have (an image per KRT camera, the tracked
mesh, the head pose, the average texture) is well formed and consistent with the others, and some
photo has them all. Files absent from some frames are gaps, as real captures have (a camera that missed
frames, a frame without a tracked mesh or texture): they are reported and counted, and preprocessing and
training leave those frames or views out. A frame whose tracked mesh is a `.bin` alone is complete (its
faces and UVs are those of the other frames' OBJs).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import struct
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tqdm import tqdm

from npva.errors import FormatError, MissingFileError
from npva.geometry.camera import Camera
from npva.io.colmap import find_colmap_depth, read_colmap_depth
from npva.io.multiface import (
    read_bin,
    read_camera_split,
    read_depth,
    read_frame_list,
    read_image_size,
    read_krt,
    read_obj,
    read_transform,
)
from npva.io.subject import SubjectLayout

MISSING, MALFORMED, MISMATCH = "missing", "malformed", "mismatch"
KINDS = (MISSING, MALFORMED, MISMATCH)

FrameKey = tuple[str, str]  # (sequence, frame)
# Categories whose missing files are gaps of the capture (those frames or views are left out)
GAP_CATEGORIES = ("images", "meshes", "transforms", "textures")


@dataclass
class Problem:
    """One file that is absent, unreadable, or inconsistent with the rest of the subject."""

    path: Path
    kind: str  # one of KINDS
    reason: str  # empty for a missing file
    line: int | None = None


@dataclass
class Category:
    """Results for one kind of file. `required`: a problem here makes the subject unusable."""

    title: str
    required: bool
    expected: int = 0  # files looked for
    problems: list[Problem] = field(default_factory=list)
    note: str = ""  # why nothing was looked for, if so

    def count(self, kind: str) -> int:
        return sum(p.kind == kind for p in self.problems)

    @property
    def ok(self) -> int:
        return self.expected - len({p.path for p in self.problems})


# (key, title, required), in the order of the summary table
_CATEGORIES = (
    ("krt", "cameras (KRT)", True),
    ("frame_list", "frame list", True),
    ("images", "images", True),
    ("meshes", "tracked meshes (obj)", True),
    ("transforms", "head poses (transform)", True),
    ("textures", "average textures", True),
    ("bins", "mesh .bin (optional)", False),
    ("splits", "splits (optional)", False),
    ("mvs_depth", "mvs depth (optional)", False),
    ("audio", "audio (optional)", False),
)


@dataclass
class SequenceStats:
    """Listed frames of one sequence, how many have every required file, good images per camera."""

    frames: int = 0
    complete: int = 0
    images: dict[str, int] = field(default_factory=dict)


@dataclass
class CheckReport:
    """What `check_subject` found: per category counts and problems, and the frames per sequence."""

    root: Path
    categories: dict[str, Category]
    cameras: list[str]
    sequences: dict[str, SequenceStats]
    depth_sources: Counter[str] = field(default_factory=Counter)  # views by the depth import would use

    @property
    def usable(self) -> bool:
        """No required file malformed or inconsistent, and some photo with every file it needs."""
        return not self._blocking() and any(any(s.images.values()) for s in self.sequences.values())

    def _blocking(self) -> list[str]:
        """Titles of the required categories with problems other than gaps (see GAP_CATEGORIES)."""
        return [
            c.title
            for key, c in self.categories.items()
            if c.required and any(p.kind != MISSING or key not in GAP_CATEGORIES for p in c.problems)
        ]

    def gaps(self) -> str:
        """One line counting the files missing from listed frames, '' when none."""
        counts = [
            f"{c.count(MISSING)} {c.title}" for key, c in self.categories.items() if key in GAP_CATEGORIES
        ]
        counts = [text for text in counts if not text.startswith("0 ")]
        if not counts:
            return ""
        return f"gaps: missing {', '.join(counts)}; preprocess and train leave those frames or views out"

    def summary(self, max_lines: int = 20) -> str:
        """A readable report: counts per category, frames per sequence, then up to `max_lines`
        problems per category."""
        frames = sum(s.frames for s in self.sequences.values())
        lines = [
            f"subject {self.root}: {'usable' if self.usable else 'NOT usable'}",
            f"{len(self.cameras)} cameras in KRT, {len(self.sequences)} sequences, {frames} frames listed",
            "",
            f"{'files':<26}{'ok':>8}{'missing':>9}{'malformed':>11}{'mismatch':>10}",
        ]
        for category in self.categories.values():
            if category.note:
                lines.append(f"{category.title:<26}  {category.note}")
            else:
                counts = "".join(f"{category.count(k):>{w}}" for k, w in zip(KINDS, (9, 11, 10), strict=True))
                lines.append(f"{category.title:<26}{category.ok:>8}{counts}")
        if self.sequences:
            lines += ["", *self._sequence_table()]
        problems = [c for c in self.categories.values() if c.problems]
        if problems:
            lines += ["", "problems:"]
        for category in problems:
            count = len(category.problems)
            lines.append(f"{category.title}: {count} problem{'s' if count > 1 else ''}")
            for problem in category.problems[:max_lines]:
                reason = f": {problem.reason}" if problem.reason else ""
                lines.append(f"  {self._where(problem)}: {problem.kind}{reason}")
            if len(category.problems) > max_lines:
                lines.append(f"  ... and {len(category.problems) - max_lines} more")
        lines += ["", self._depth_line()]
        if self.gaps():
            lines += ["", self.gaps()]
        if not self.usable:
            failed = ", ".join(self._blocking()) or "images (no photo has every file it needs)"
            lines += ["", f"not usable: problems in {failed}"]
        return "\n".join(lines)

    def _depth_line(self) -> str:
        """Which depth each view gets from `npva preprocess --depth auto`."""
        if not self.depth_sources:
            return (
                "depth per view: no MVS depth checked; preprocess renders the tracked mesh "
                "(--depth auto) or matches the photos (--depth stereo)"
            )
        counts = ", ".join(f"{count} {source}" for source, count in sorted(self.depth_sources.items()))
        return f"depth per view (preprocess --depth auto imports mvs_depth/): {counts}"

    def _sequence_table(self) -> list[str]:
        width = max(len("sequence"), *(len(s) for s in self.sequences))
        rows = [f"{'sequence':<{width}}  {'frames':>6}  {'complete':>8}  images per camera"]
        for name, stats in self.sequences.items():
            images = ""
            if stats.images:
                fewest = min(stats.images, key=stats.images.get)
                low, high = stats.images[fewest], max(stats.images.values())
                images = f"{low} each" if low == high else f"{low}-{high} (fewest: camera {fewest})"
            rows.append(f"{name:<{width}}  {stats.frames:>6}  {stats.complete:>8}  {images}")
        return rows

    def _where(self, problem: Problem) -> str:
        path = problem.path.relative_to(self.root) if problem.path.is_relative_to(self.root) else problem.path
        return f"{path}:{problem.line}" if problem.line is not None else str(path)


def _hw(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]} (HxW)"


class _Topology(NamedTuple):
    """What must be equal for all tracked meshes of a subject."""

    verts: int
    uvs: int
    faces: int
    indices: int  # hash of the face and face-uv indices

    def __str__(self) -> str:
        return f"{self.verts} vertices, {self.uvs} uvs, {self.faces} faces"


def _read_wav_header(path: Path) -> None:
    """Check a RIFF/WAVE header and that the file is as long as the header says."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            size = f.seek(0, os.SEEK_END)
    except FileNotFoundError:
        raise MissingFileError(path, "audio") from None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise FormatError(path, "expected a RIFF/WAVE audio file")
    declared = struct.unpack("<I", head[4:8])[0] + 8
    if size < declared:
        raise FormatError(path, f"expected {declared} bytes as the RIFF header says, found {size}: truncated")


def _raise(error: Exception, path: Path) -> None:
    raise error


def _depth_size(path: Path) -> tuple[int, int]:
    """(H, W) of a depth map, decoded in full (a header can be whole when the pixels are cut short)."""
    return read_depth(path).shape


class _Checker:
    """Accumulates the categories of a CheckReport while walking a subject."""

    def __init__(self, root: Path):
        self.layout = SubjectLayout(root)
        self.categories = {key: Category(title, required) for key, title, required in _CATEGORIES}
        self.bad_frames: set[FrameKey] = set()
        self.depth_sources: Counter[str] = Counter()

    def problem(
        self,
        key: str,
        path: Path,
        kind: str,
        reason: str,
        frame: FrameKey | None = None,
        line: int | None = None,
    ) -> None:
        """Record a problem; a `frame` given marks that frame incomplete."""
        self.categories[key].problems.append(Problem(path, kind, reason, line))
        if frame is not None:
            self.bad_frames.add(frame)

    def expect(self, key: str, path: Path, read: Callable[[Path], Any], frame: FrameKey | None = None) -> Any:
        """read(path), or None after recording why it failed."""
        self.categories[key].expected += 1
        try:
            return read(path)
        except MissingFileError:
            self.problem(key, path, MISSING, "", frame)
        except FormatError as exc:
            self.problem(key, path, MALFORMED, exc.message, frame, exc.line)
        return None

    def flag_outliers(
        self,
        key: str,
        items: list[tuple[Path, Hashable, FrameKey | None]],
        describe: Callable[[Any, Any], str],
    ) -> None:
        """Record every item whose value differs from the most common one (the first seen on a tie)."""
        if not items:
            return
        reference = Counter(value for _, value, _ in items).most_common(1)[0][0]
        for path, value, frame in items:
            if value != reference:
                self.problem(key, path, MISMATCH, describe(value, reference), frame)

    def note(self, keys: tuple[str, ...], text: str) -> None:
        for key in keys:
            self.categories[key].note = text

    def run(self) -> CheckReport:
        layout = self.layout
        cameras: dict[str, Camera] = self.expect("krt", layout.krt, read_krt) or {}
        frames = self.expect("frame_list", layout.frame_list, read_frame_list)
        if frames == []:
            reason = "expected '<sequence> <frame>' lines, found none"
            self.problem("frame_list", layout.frame_list, MALFORMED, reason)
        frames = list(dict.fromkeys(frames or []))  # each listed frame once, in order
        if frames:
            self.check_frames(frames, cameras)
            self.check_audio(frames)
        else:
            per_frame = ("images", "meshes", "transforms", "textures", "bins", "mvs_depth", "audio")
            self.note(per_frame, "not checked: no usable frame list")
        self.check_splits(frames, cameras)
        stats = self.sequence_stats(frames, cameras)
        return CheckReport(layout.root, self.categories, list(cameras), stats, self.depth_sources)

    def check_frames(self, frames: list[FrameKey], cameras: dict[str, Camera]) -> None:
        """Every file of every listed frame, then the consistency of sizes and mesh topology."""
        if not cameras:
            self.note(("images", "mvs_depth"), "not checked: KRT unreadable")
        with_depth = bool(cameras) and self.mvs_depth_present()
        image_sizes: dict[str, list] = defaultdict(list)  # camera -> [(path, (H, W), frame)]
        depth_sizes: dict[str, list] = defaultdict(list)
        texture_sizes: list = []
        topologies: list = []
        for key in tqdm(frames, desc="npva check", unit="frame", disable=None, leave=False):
            sequence, frame = key
            topologies += self.check_mesh(sequence, frame)
            path = self.layout.average_texture(sequence, frame)
            if (size := self.expect("textures", path, read_image_size, key)) is not None:
                texture_sizes.append((path, size, key))
            for name in cameras:
                path = self.layout.image(sequence, name, frame)
                if (size := self.expect("images", path, read_image_size, key)) is not None:
                    image_sizes[name].append((path, size, key))
                if with_depth:
                    path, source, read = self.depth_file(sequence, name, frame)
                    if (size := self.expect("mvs_depth", path, read)) is not None:
                        depth_sizes[name].append((path, size, None))
                    self.depth_sources[
                        source if size is not None else "without a readable depth map (depth unknown)"
                    ] += 1
        if not topologies and not self.categories["meshes"].problems:
            reason = "no listed frame has an OBJ (the faces and UVs of the .bin meshes are read from one)"
            self.problem("meshes", self.layout.tracked_mesh_dir, MISMATCH, reason)
        self.flag_outliers(
            "meshes",
            topologies,
            lambda t, ref: (
                f"topology ({t}) differs from the other meshes ({ref})"
                if t[:3] != ref[:3]
                else "face indices differ from the other meshes"
            ),
        )
        self.flag_outliers("textures", texture_sizes, lambda s, ref: f"size {_hw(s)} differs from {_hw(ref)}")
        for name in cameras:
            self.flag_outliers(
                "images",
                image_sizes[name],
                lambda s, ref, name=name: f"size {_hw(s)} differs from {_hw(ref)} of camera {name}'s images",
            )
            self.flag_outliers(
                "mvs_depth",
                depth_sizes[name],
                lambda s, ref, name=name: (
                    f"size {_hw(s)} differs from {_hw(ref)} of camera {name}'s depth maps"
                ),
            )

    def check_mesh(self, sequence: str, frame: str) -> list[tuple[Path, _Topology, FrameKey]]:
        """Check the OBJ, its optional .bin and the head pose; returns the OBJ's topology if it parsed."""
        key = (sequence, frame)
        self.expect("transforms", self.layout.transform(sequence, frame), read_transform, key)
        path = self.layout.mesh_obj(sequence, frame)
        bin_path = self.layout.mesh_bin(sequence, frame)
        if not path.exists() and bin_path.exists():  # vertices only: faces and UVs from another OBJ
            self.expect("bins", bin_path, read_bin, key)
            return []
        mesh = self.expect("meshes", path, read_obj, key)
        if mesh is None:
            return []
        if bin_path.exists():
            self.expect("bins", bin_path, functools.partial(read_bin, num_verts=len(mesh.verts)))
        indices = hash((mesh.faces.tobytes(), mesh.face_uvs.tobytes()))
        return [(path, _Topology(len(mesh.verts), len(mesh.uvs), len(mesh.faces), indices), key)]

    def depth_file(self, sequence: str, camera: str, frame: str) -> tuple[Path, str, Callable]:
        """(path, source, size reader) of a view's MVS depth: the EXR, else the depth map of a COLMAP
        dense workspace mvs_depth/<seq>/<frame>/ whose image names the camera."""
        path = self.layout.mvs_depth(sequence, camera, frame)
        if path.exists():
            return path, "EXR", _depth_size
        workspace = self.layout.mvs_depth_dir / sequence / frame / "stereo" / "depth_maps"
        try:
            colmap = find_colmap_depth(workspace, camera)
        except FormatError as exc:
            return exc.path, "COLMAP", functools.partial(_raise, exc)
        if colmap is None:
            return path, "EXR", _depth_size
        return colmap, "COLMAP", lambda p: read_colmap_depth(p).shape

    def mvs_depth_present(self) -> bool:
        """Whether MVS depth maps are there to check (and can be)."""
        if not self.layout.mvs_depth_dir.is_dir():
            self.note(("mvs_depth",), "not present")
            return False
        if importlib.util.find_spec("OpenEXR") is None:
            self.note(("mvs_depth",), "not checked: the OpenEXR package is not installed")
            return False
        return True

    def check_audio(self, frames: list[FrameKey]) -> None:
        """Audio exists for some sequences only: check the files present."""
        if not self.layout.audio_dir.is_dir():
            self.note(("audio",), "not present")
            return
        for sequence in dict.fromkeys(s for s, _ in frames):
            path = self.layout.audio(sequence)
            if path.exists():
                self.expect("audio", path, _read_wav_header)

    def check_splits(self, frames: list[FrameKey], cameras: dict[str, Camera]) -> None:
        layout = self.layout
        lists = [layout.split_list("train"), layout.split_list("test")]
        if not any(p.exists() for p in (*lists, layout.camera_split)):
            self.note(("splits",), "not present")
            return
        listed = set(frames)
        for path in lists:
            entries = self.expect("splits", path, read_frame_list) if path.exists() else None
            for sequence, frame in dict.fromkeys(entries or []):
                if (sequence, frame) in self.bad_frames:
                    reason = f"{sequence} {frame}: the frame has missing or malformed files (see above)"
                    self.problem("splits", path, MISMATCH, reason)
                elif (sequence, frame) not in listed:
                    absent = self.absent_files(sequence, frame, cameras)
                    missing = f" and missing on disk: {absent}" if absent else ""
                    reason = (
                        f"{sequence} {frame}: not in the frame list{missing} "
                        "(preprocessing and training leave it out)"
                    )
                    self.problem("splits", path, MISMATCH, reason)
        split = (
            self.expect("splits", layout.camera_split, read_camera_split)
            if layout.camera_split.exists()
            else None
        )
        if split and cameras:
            for part in ("train", "test"):
                for name in split[part]:
                    if name not in cameras:
                        reason = f"camera {name!r} ({part}) is not in KRT"
                        self.problem("splits", layout.camera_split, MISMATCH, reason)

    def absent_files(self, sequence: str, frame: str, cameras: dict[str, Camera]) -> str:
        """The required files of a frame that do not exist, in words ('' if none)."""
        layout = self.layout
        absent = [
            what
            for what, path in (
                ("tracked mesh", layout.mesh_obj(sequence, frame)),
                ("head pose", layout.transform(sequence, frame)),
                ("average texture", layout.average_texture(sequence, frame)),
            )
            if not path.exists()
        ]
        missing_images = sum(not layout.image(sequence, name, frame).exists() for name in cameras)
        if missing_images:
            absent.append(f"{missing_images} of {len(cameras)} images")
        return ", ".join(absent)

    def sequence_stats(self, frames: list[FrameKey], cameras: dict[str, Camera]) -> dict[str, SequenceStats]:
        bad_images = {p.path for p in self.categories["images"].problems}
        stats: dict[str, SequenceStats] = {}
        for sequence, frame in frames:
            entry = stats.setdefault(sequence, SequenceStats(images=dict.fromkeys(cameras, 0)))
            entry.frames += 1
            entry.complete += (sequence, frame) not in self.bad_frames
            for name in cameras:
                entry.images[name] += self.layout.image(sequence, name, frame) not in bad_images
        return stats


def check_subject(root: str | Path) -> CheckReport:
    """Validate a subject directory in the Multiface layout; see CheckReport.summary for the result."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(root, "subject directory")
    return _Checker(root).run()
