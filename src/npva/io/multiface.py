"""Readers and writers for the files of a Multiface subject.

Formats (see docs of each function): KRT cameras, OBJ meshes with UVs, raw float32 vertex .bin files,
`_transform.txt` head poses, "<sequence> <frame>" lists, camera split JSON, PNG images and depth maps
(EXR or npz). Readers raise FormatError naming the file, the line (1-based, for text formats) and what
was expected; an absent file raises MissingFileError. Writers are atomic and produce exactly the text
layout of the dataset, so that other tools read what npva writes.
"""

from __future__ import annotations

import json
import math
import os
import struct
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from npva.errors import FormatError, MissingFileError, NpvaError
from npva.fileio import atomic_open, atomic_path
from npva.geometry.camera import Camera
from npva.geometry.mesh import Mesh
from npva.io.subject import SubjectLayout

ROTATION_TOLERANCE = 1e-3  # max |R R^T - I| accepted for rotations read from text files


# ---------------------------------------------------------------------------------------------------
# Text parsing helpers


def _read_bytes(path: Path, what: str) -> bytes:
    """The whole file, with absence and unreadability reported as npva errors."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise MissingFileError(path, what) from None
    except IsADirectoryError:
        raise FormatError(path, f"expected a {what} file, found a directory") from None
    except OSError as exc:
        raise FormatError(path, f"cannot read {what}: {exc.strerror}") from None


def _require_file(path: Path, what: str) -> None:
    """Raise MissingFileError unless `path` is a regular file (FormatError if it is something else)."""
    if not path.is_file():
        if path.exists():
            raise FormatError(path, f"expected a {what} file, found a directory or special file")
        raise MissingFileError(path, what)


def _read_lines(path: Path, what: str) -> list[str]:
    """Lines of a UTF-8 text file (a leading byte-order mark dropped), without line ends; line i + 1
    of the file is element i."""
    data = _read_bytes(path, what)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise FormatError(path, f"expected a {what} text file, found bytes that are not text", line) from None
    lines = text.replace("\r\n", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _clip(text: str, limit: int = 60) -> str:
    """A line shortened for quoting in an error message."""
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _parse_numbers(
    path: Path, lineno: int, tokens: Sequence[str], counts: tuple[int, ...], what: str
) -> list[float]:
    """Finite floats from `tokens`, whose count must be one of `counts`."""

    def error(found: str) -> FormatError:
        expected = " or ".join(str(c) for c in counts)
        return FormatError(path, f"expected {expected} numbers ({what}), found {found}", lineno)

    if len(tokens) not in counts:
        raise error(f"{len(tokens)}: {_clip(' '.join(tokens))}")
    values = []
    for token in tokens:
        try:
            value = float(token)
        except ValueError:
            raise error(repr(token)) from None
        if not math.isfinite(value):
            raise FormatError(path, f"expected finite numbers ({what}), found {token!r}", lineno)
        values.append(value)
    return values


class _LineCursor:
    """Reads the numbered lines of a text file in order, for block formats (KRT, transforms)."""

    def __init__(self, path: Path, lines: list[str]):
        self.path = path
        self.lines = lines
        self.lineno = 0  # 1-based number of the line last read

    def next_nonblank(self) -> tuple[int, str] | None:
        """The next line that is not blank, or None at end of file."""
        while self.lineno < len(self.lines):
            self.lineno += 1
            line = self.lines[self.lineno - 1]
            if line.strip():
                return self.lineno, line
        return None

    def numbers(self, count: int, what: str) -> list[float]:
        """The next line, which must hold exactly `count` numbers."""
        if self.lineno >= len(self.lines):
            raise FormatError(
                self.path, f"expected {count} numbers ({what}), found end of file", self.lineno + 1
            )
        self.lineno += 1
        tokens = self.lines[self.lineno - 1].split()
        if not tokens:
            raise FormatError(
                self.path, f"expected {count} numbers ({what}), found a blank line", self.lineno
            )
        return _parse_numbers(self.path, self.lineno, tokens, (count,), what)


def _check_rotation(path: Path, lineno: int, R: np.ndarray, what: str) -> None:
    """Reject a matrix that is not a proper rotation within ROTATION_TOLERANCE."""
    error = float(np.abs(R @ R.T - np.eye(3)).max())
    det = float(np.linalg.det(R))
    if error > ROTATION_TOLERANCE or det < 0:
        raise FormatError(
            path,
            f"expected a rotation in {what} (max |R R^T - I| <= {ROTATION_TOLERANCE:g}, det +1), "
            f"found max |R R^T - I| = {error:.3g}, det = {det:.3g}",
            lineno,
        )


# Unicode categories a name may not contain: control, format (invisible), surrogate, private, unassigned
# characters and separators (spaces, line and paragraph separators).
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
_PATH_SEPARATORS = "/\\:"


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a camera, sequence or frame name, or None when it can.

    A name becomes one component of the paths npva reads and writes, so it must be a plain file name:
    not empty, not "." or "..", without path separators (/, \\ or :, so never absolute) and without
    control or invisible characters.
    """
    if name in ("", ".", ".."):
        return f"{name!r} is not a file name"
    if any(c in _PATH_SEPARATORS for c in name):
        return f"{name!r} contains a path separator (/, \\ or :)"
    hidden = [c for c in name if unicodedata.category(c) in _HIDDEN_CATEGORIES]
    if hidden:
        return f"{name!r} contains the control or invisible character U+{ord(hidden[0]):04X}"
    return None


def _check_name(path: Path, lineno: int | None, name: str, what: str) -> str:
    """`name`, or FormatError when it is not a plain file name (see name_problem)."""
    problem = name_problem(name)
    if problem is not None:
        raise FormatError(path, f"expected a {what} name that is a plain file name: {problem}", lineno)
    return name


def _format_numbers(values: Iterable[float]) -> str:
    """Numbers in their shortest exact text form, space separated."""
    return " ".join(repr(float(v)) for v in values)


# ---------------------------------------------------------------------------------------------------
# KRT cameras


def read_krt(path: str | Path) -> dict[str, Camera]:
    """Cameras of a KRT file, in file order, keyed by name.

    Each block: a name line; 3 lines of K; 1 line k1 k2 p1 p2 k3; 3 lines [R | t] (x_cam = R x_world + t,
    mm). Blank lines between blocks are optional. Height and width are left None (KRT does not say).
    """
    path = Path(path)
    cursor = _LineCursor(path, _read_lines(path, "KRT"))
    cameras: dict[str, Camera] = {}
    while (named := cursor.next_nonblank()) is not None:
        name_line, line = named
        tokens = line.split()
        if len(tokens) != 1:
            raise FormatError(
                path,
                f"expected a camera name (one token), found {len(tokens)} tokens: {_clip(line)}",
                name_line,
            )
        name = _check_name(path, name_line, tokens[0], "camera")
        if name in cameras:
            raise FormatError(path, f"camera {name!r} is defined twice", name_line)
        K = np.array([cursor.numbers(3, f"row {i + 1} of K of camera {name}") for i in range(3)])
        dist = np.array(cursor.numbers(5, f"distortion k1 k2 p1 p2 k3 of camera {name}"))
        rt_line = cursor.lineno + 1
        Rt = np.array([cursor.numbers(4, f"row {i + 1} of [R | t] of camera {name}") for i in range(3)])
        if K[0, 0] <= 0 or K[1, 1] <= 0 or K[1, 0] != 0 or not np.allclose(K[2], (0, 0, 1)):
            raise FormatError(
                path,
                f"expected intrinsics [fx s cx; 0 fy cy; 0 0 1] with fx, fy > 0 for camera {name}",
                name_line + 1,
            )
        _check_rotation(path, rt_line, Rt[:, :3], f"[R | t] of camera {name}")
        cameras[name] = Camera(name=name, K=K, R=Rt[:, :3], t=Rt[:, 3], dist=dist)
    if not cameras:
        raise FormatError(path, "expected at least one camera block, found none", cursor.lineno + 1)
    return cameras


def write_krt(path: str | Path, cameras: Iterable[Camera]) -> None:
    """Write cameras as KRT blocks (name, K, distortion, [R | t], blank line), in the given order."""
    blocks = []
    for camera in cameras:
        if (problem := name_problem(camera.name)) is not None:
            raise ValueError(f"camera name must be a plain file name: {problem}")
        rows = [camera.name, *(_format_numbers(row) for row in camera.K), _format_numbers(camera.dist)]
        rows += [_format_numbers((*r, t)) for r, t in zip(camera.R, camera.t, strict=True)]
        blocks.append("\n".join(rows) + "\n\n")
    with atomic_open(path) as f:
        f.write("".join(blocks))


# ---------------------------------------------------------------------------------------------------
# Meshes: OBJ with UVs, raw .bin vertices

# OBJ statements that carry nothing the method uses; anything else unknown is an error.
_OBJ_IGNORED = frozenset({"vn", "vp", "o", "g", "s", "mtllib", "usemtl", "l", "p"})


def _parse_face(path: Path, lineno: int, corners: list[str]) -> list[tuple[int, int]]:
    """1-based (vertex, uv) index pairs of one face's corners ("v/vt" or "v/vt/vn")."""
    if len(corners) < 3:
        raise FormatError(path, f"expected a face of 3 or more corners v/vt, found {len(corners)}", lineno)
    pairs = []
    for corner in corners:
        parts = corner.split("/")
        if len(parts) < 2 or parts[1] == "":
            raise FormatError(
                path, f"expected face corners v/vt or v/vt/vn (UVs are required), found {corner!r}", lineno
            )
        try:
            v, vt = int(parts[0]), int(parts[1])
        except ValueError:
            raise FormatError(path, f"expected integer indices v/vt, found {corner!r}", lineno) from None
        if v < 1 or vt < 1:
            raise FormatError(path, f"expected positive 1-based indices, found {corner!r}", lineno)
        pairs.append((v, vt))
    return pairs


# Characters a number of a plain OBJ may contain; deleting them from a row leaves its separators.
_NUMBER_CHARS = str.maketrans("", "", "0123456789.+-eE")


def _plain_fields(rows: list[str], separators: str, dtype: type) -> np.ndarray | None:
    """(len(rows), fields) array from rows whose fields are separated exactly by `separators`
    (e.g. "  " for three numbers, "/ / /" for three v/vt pairs); None if any row differs."""
    joined = " ".join(rows)
    if joined.translate(_NUMBER_CHARS) != " ".join([separators] * len(rows)):
        return None
    try:  # numpy's C text parser, on one long row
        values = np.loadtxt([joined.replace("/", " ")], dtype=dtype, delimiter=" ", comments=None, ndmin=1)
    except ValueError:
        return None
    return values.reshape(len(rows), -1)


def _parse_plain_obj(lines: list[str]) -> Mesh | None:
    """Fast path for OBJ text as mesh tools write it: only "v x y z", "vt u v", "f a/b c/d e/f" lines
    with single spaces, comments and blank lines. None for anything else, including every error, which
    the general parser then reports with its line."""
    v_rows = [line[2:] for line in lines if line[:2] == "v "]
    vt_rows = [line[3:] for line in lines if line[:3] == "vt "]
    f_rows = [line[2:] for line in lines if line[:2] == "f "]
    skipped = sum(1 for line in lines if not line or line[0] == "#")
    if not (v_rows and vt_rows and f_rows) or len(v_rows) + len(vt_rows) + len(f_rows) + skipped < len(lines):
        return None  # other statements, indented lines or tabs: not plain
    verts = _plain_fields(v_rows, "  ", np.float64)
    uvs = _plain_fields(vt_rows, " ", np.float64)
    corners = _plain_fields(f_rows, "/ / /", np.int64)
    if verts is None or uvs is None or corners is None:
        return None
    indices = corners.reshape(-1, 3, 2) - 1
    in_range = indices.min() >= 0 and (indices.max(axis=(0, 1)) < (len(verts), len(uvs))).all()
    if not (in_range and np.isfinite(verts).all() and np.isfinite(uvs).all()):
        return None
    return Mesh(
        verts=verts.astype(np.float32),
        faces=np.ascontiguousarray(indices[..., 0]),
        uvs=uvs.astype(np.float32),
        face_uvs=np.ascontiguousarray(indices[..., 1]),
    )


def _parse_obj(path: Path, lines: list[str]) -> Mesh:
    """General OBJ parser, line by line: every accepted form, and errors with their line."""
    verts: list[list[float]] = []
    uvs: list[list[float]] = []
    corners: list[tuple[int, int]] = []  # 3 per triangle, 1-based (v, vt)
    face_lines: list[int] = []  # source line of each triangle
    for lineno, line in enumerate(lines, 1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        key = tokens[0]
        if key == "v":
            verts.append(_parse_numbers(path, lineno, tokens[1:], (3, 4, 6), "vertex x y z")[:3])
        elif key == "vt":
            uvs.append(_parse_numbers(path, lineno, tokens[1:], (2, 3), "texture coordinate u v")[:2])
        elif key == "f":
            pairs = _parse_face(path, lineno, tokens[1:])
            for i in range(1, len(pairs) - 1):
                corners += (pairs[0], pairs[i], pairs[i + 1])
                face_lines.append(lineno)
        elif key not in _OBJ_IGNORED:
            raise FormatError(path, f"expected an OBJ statement (v, vt, f, ...), found {_clip(line)}", lineno)
    end = len(lines) + 1
    if not verts:
        raise FormatError(path, "expected vertices (v lines), found none", end)
    if not uvs:
        raise FormatError(path, "expected texture coordinates (vt lines), found none", end)
    if not corners:
        raise FormatError(path, "expected faces (f v/vt lines), found none: the file may be truncated", end)
    indices = np.array(corners, dtype=np.int64).reshape(-1, 3, 2) - 1
    for column, count, what in ((0, len(verts), "vertex"), (1, len(uvs), "texture coordinate")):
        bad = np.flatnonzero((indices[..., column] >= count).any(axis=1))
        if bad.size:
            index = int(indices[bad[0], :, column].max()) + 1
            raise FormatError(
                path, f"expected {what} indices in 1..{count}, found {index}", face_lines[bad[0]]
            )
    return Mesh(
        verts=np.array(verts, dtype=np.float32),
        faces=np.ascontiguousarray(indices[..., 0]),
        uvs=np.array(uvs, dtype=np.float32),
        face_uvs=np.ascontiguousarray(indices[..., 1]),
    )


def read_obj(path: str | Path) -> Mesh:
    """A triangle mesh with UVs from an OBJ file (v, vt, f v/vt or v/vt/vn; polygons are fanned).

    Vertex lines may carry 3, 4 (w, ignored) or 6 (colour, ignored) numbers; vt lines 2 or 3.
    """
    path = Path(path)
    lines = _read_lines(path, "OBJ mesh")
    mesh = _parse_plain_obj(lines)
    return mesh if mesh is not None else _parse_obj(path, lines)


def write_obj(path: str | Path, mesh: Mesh) -> None:
    """Write v, vt and f v/vt lines (1-based); float32 values are written exactly (9 digits)."""
    verts, uvs = np.asarray(mesh.verts), np.asarray(mesh.uvs)
    faces, face_uvs = np.asarray(mesh.faces), np.asarray(mesh.face_uvs)
    if verts.ndim != 2 or verts.shape[1] != 3 or uvs.ndim != 2 or uvs.shape[1] != 2:
        raise ValueError(f"expected verts (V, 3) and uvs (T, 2), got {verts.shape} and {uvs.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or face_uvs.shape != faces.shape:
        raise ValueError(f"expected faces and face_uvs (F, 3), got {faces.shape} and {face_uvs.shape}")
    rows = [f"v {x:.9g} {y:.9g} {z:.9g}" for x, y, z in verts.astype(np.float32).tolist()]
    rows += [f"vt {u:.9g} {v:.9g}" for u, v in uvs.astype(np.float32).tolist()]
    corners = np.stack((faces, face_uvs), axis=-1).reshape(-1, 6) + 1
    rows += ["f {}/{} {}/{} {}/{}".format(*c) for c in corners.tolist()]
    with atomic_open(path) as f:
        f.write("\n".join(rows) + "\n")


def read_bin(path: str | Path, num_verts: int | None = None) -> np.ndarray:
    """Vertices (V, 3) float32 from a raw little-endian float32 x y z file; V checked if given."""
    path = Path(path)
    data = _read_bytes(path, "vertex .bin")
    if not data or len(data) % 12:
        raise FormatError(
            path,
            f"expected raw float32 x y z triples (a non-zero multiple of 12 bytes), found {len(data)} bytes",
        )
    if num_verts is not None and len(data) != 12 * num_verts:
        raise FormatError(
            path,
            f"expected {num_verts} vertices ({12 * num_verts} bytes), "
            f"found {len(data) // 12} ({len(data)} bytes)",
        )
    verts = np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(-1, 3)
    bad = np.flatnonzero(~np.isfinite(verts).all(axis=1))
    if bad.size:
        raise FormatError(
            path, f"expected finite coordinates, found {verts[bad[0]].tolist()} at vertex {bad[0]}"
        )
    return verts


def write_bin(path: str | Path, verts: np.ndarray) -> None:
    """Write (V, 3) vertices as raw little-endian float32."""
    verts = np.asarray(verts)
    if verts.ndim != 2 or verts.shape[1] != 3:
        raise ValueError(f"expected verts (V, 3), got {verts.shape}")
    with atomic_open(path, "wb") as f:
        f.write(verts.astype("<f4").tobytes())


# ---------------------------------------------------------------------------------------------------
# Head poses


def read_transform(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Head pose (R (3, 3), t (3,)) float64 from 3 lines of [R | t]: x_world = R x_face + t."""
    path = Path(path)
    cursor = _LineCursor(path, _read_lines(path, "head pose transform"))
    Rt = np.array([cursor.numbers(4, f"row {i + 1} of the 3x4 [R | t] head pose") for i in range(3)])
    if (extra := cursor.next_nonblank()) is not None:
        raise FormatError(
            path, f"expected end of file after 3 rows of [R | t], found {_clip(extra[1])}", extra[0]
        )
    _check_rotation(path, 1, Rt[:, :3], "the head pose [R | t]")
    return Rt[:, :3], Rt[:, 3]


def write_transform(path: str | Path, R: np.ndarray, t: np.ndarray) -> None:
    """Write a head pose as 3 lines of [R | t]."""
    R, t = np.asarray(R, dtype=np.float64), np.asarray(t, dtype=np.float64)
    if R.shape != (3, 3) or t.shape != (3,):
        raise ValueError(f"expected R (3, 3) and t (3,), got {R.shape} and {t.shape}")
    with atomic_open(path) as f:
        f.write("".join(_format_numbers((*r, ti)) + "\n" for r, ti in zip(R, t, strict=True)))


# ---------------------------------------------------------------------------------------------------
# Frame lists, split lists, camera splits


def read_frame_list(path: str | Path) -> list[tuple[str, str]]:
    """(sequence, frame) pairs, one "<seq> <frame>" per line, in file order; blank lines ignored."""
    path = Path(path)
    entries = []
    for lineno, line in enumerate(_read_lines(path, "frame list"), 1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 2:
            raise FormatError(
                path, f"expected '<sequence> <frame>', found {len(tokens)} token(s): {_clip(line)}", lineno
            )
        sequence, frame = tokens
        if not (frame.isascii() and frame.isdigit()):
            raise FormatError(path, f"expected a frame id of digits, found {frame!r}", lineno)
        entries.append((_check_name(path, lineno, sequence, "sequence"), frame))
    return entries


def write_frame_list(path: str | Path, entries: Iterable[tuple[str, str]]) -> None:
    """Write "<seq> <frame>" lines."""
    rows = []
    for sequence, frame in entries:
        if name_problem(sequence) is not None or not (frame.isascii() and frame.isdigit()):
            raise ValueError(
                f"expected a sequence name that is a plain file name and a frame id of digits, "
                f"got {(sequence, frame)}"
            )
        rows.append(f"{sequence} {frame}\n")
    with atomic_open(path) as f:
        f.write("".join(rows))


def _json_key_line(text: str, key: str) -> int | None:
    """1-based line of the first occurrence of `"key"` in JSON text, if any."""
    position = text.find(json.dumps(key))
    return text.count("\n", 0, position) + 1 if position >= 0 else None


def read_camera_split(path: str | Path) -> dict[str, list[str]]:
    """Camera names for training and testing: {"train": [...], "test": [...]} (numbers become strings)."""
    path = Path(path)
    text = "\n".join(_read_lines(path, "camera split JSON"))
    try:
        content = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(path, f"expected JSON: {exc.msg}", exc.lineno) from None
    if not isinstance(content, dict):
        raise FormatError(path, 'expected a JSON object {"train": [...], "test": [...]}', 1)
    split = {}
    for key in ("train", "test"):
        names = content.get(key)
        line = _json_key_line(text, key)
        if not isinstance(names, list):
            found = "no such key" if names is None else type(names).__name__
            raise FormatError(path, f"expected {key!r}: a list of camera names, found {found}", line)
        bad = [n for n in names if isinstance(n, bool) or not isinstance(n, str | int)]
        if bad:
            raise FormatError(path, f"expected camera names (strings) in {key!r}, found {bad[0]!r}", line)
        split[key] = [_check_name(path, line, str(n), "camera") for n in names]
    return split


def write_camera_split(path: str | Path, train: list[str], test: list[str]) -> None:
    """Write {"train": [...], "test": [...]} as indented JSON."""
    with atomic_open(path) as f:
        f.write(
            json.dumps({"train": [str(n) for n in train], "test": [str(n) for n in test]}, indent=2) + "\n"
        )


# ---------------------------------------------------------------------------------------------------
# Images

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # length 0, type, CRC: the last 12 bytes of a whole PNG


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of a PNG from its IHDR chunk, after checking the file ends with IEND (not truncated).

    Cheap (two small reads); it does not decode the pixels.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(33)  # signature (8) + IHDR length, type, 13 bytes of data, CRC
            size = f.seek(0, os.SEEK_END)
            f.seek(max(size - 12, 0))
            tail = f.read(12)
    except FileNotFoundError:
        raise MissingFileError(path, "image") from None
    except OSError as exc:
        raise FormatError(path, f"cannot read image: {exc.strerror}") from None
    if head[:8] != _PNG_SIGNATURE:
        raise FormatError(path, "expected a PNG image, found no PNG signature")
    if (
        len(head) < 33
        or head[12:16] != b"IHDR"
        or zlib.crc32(head[12:29]) != struct.unpack(">I", head[29:33])[0]
    ):
        raise FormatError(path, "expected a PNG IHDR header chunk, found a damaged one")
    width, height = struct.unpack(">II", head[16:24])
    if width == 0 or height == 0:
        raise FormatError(path, f"expected a non-empty PNG, found size {height}x{width}")
    if tail != _PNG_IEND:
        raise FormatError(path, "expected a PNG ending with its IEND chunk: the file is truncated")
    return height, width


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (H, W, C) to size (H', W'): area averaging when shrinking, bilinear when enlarging."""
    height, width = size
    if (height, width) == image.shape[:2]:
        return image
    shrinking = height <= image.shape[0] and width <= image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def read_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 RGB (H, W, 3) image; grey and alpha images are converted; `size` = (H, W) resizes."""
    path = Path(path)
    data = _read_bytes(path, "image")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        raise FormatError(
            path, "expected an image file, found one that cannot be decoded (corrupt or truncated)"
        )
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image if size is None else resize_image(image, size)


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write uint8 (or float in [0, 1]) RGB (H, W, 3) or grey (H, W); format by suffix (PNG, ...)."""
    path = Path(path)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"expected a uint8 or float image, got {array.dtype}")
        array = np.round(np.clip(np.nan_to_num(array), 0.0, 1.0) * 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim != 2:
        raise ValueError(f"expected an image (H, W, 3) or (H, W), got {array.shape}")
    try:
        ok, encoded = cv2.imencode(path.suffix, array)
    except cv2.error:
        ok = False
    if not ok:
        raise ValueError(f"{path}: cannot encode an image with suffix {path.suffix!r}")
    with atomic_open(path, "wb") as f:
        f.write(encoded.tobytes())


def load_camera_image(
    path: str | Path, camera: Camera, size: tuple[int, int] | None = None
) -> tuple[np.ndarray, Camera]:
    """An image and its camera with intrinsics scaled to the size loaded.

    K refers to the camera's (height, width) when set, else to the size of the image on disk.
    Returns (uint8 (H, W, 3), camera with height H and width W).
    """
    image = read_image(path)
    if camera.height is None or camera.width is None:
        camera = camera.with_size(*image.shape[:2])
    if size is not None:
        image = resize_image(image, size)
    return image, camera.resized(*image.shape[:2])


# ---------------------------------------------------------------------------------------------------
# Depth maps: EXR (OpenEXR package, imported only when needed) or npz

_DEPTH_CHANNEL_NAMES = ("z", "depth", "y", "r")  # preferred when an EXR has several float channels


def _openexr(path: Path):
    try:
        import OpenEXR
    except ImportError:
        raise NpvaError(
            f"{path}: EXR depth needs the OpenEXR package, which is not installed: "
            "pip install OpenEXR (or npva[exr])"
        ) from None
    return OpenEXR


def _pick_depth_channel(path: Path, channel_types: dict[str, str]) -> str:
    """Name of the depth channel among EXR channels {name: "HALF" | "FLOAT" | "UINT"}."""
    floats = [name for name, kind in channel_types.items() if kind in ("HALF", "FLOAT")]
    if not floats:
        found = ", ".join(f"{n} ({k})" for n, k in channel_types.items()) or "none"
        raise FormatError(path, f"expected a float (HALF or FLOAT) depth channel, found {found}")
    if len(floats) == 1:
        return floats[0]
    by_name = {name.split(".")[-1].lower(): name for name in floats}
    for preferred in _DEPTH_CHANNEL_NAMES:
        if preferred in by_name:
            return by_name[preferred]
    raise FormatError(path, f"expected one float channel or one named Z/depth/Y/R, found {', '.join(floats)}")


def _read_exr_depth(path: Path) -> np.ndarray:
    OpenEXR = _openexr(path)
    try:
        exr = OpenEXR.File(str(path), separate_channels=True)
        channels = exr.channels()
    except (RuntimeError, ValueError):  # ValueError when the pixel data is cut short
        raise FormatError(
            path, "expected an OpenEXR image, found one that cannot be read (corrupt or truncated)"
        ) from None
    types = {name: channel.type().name.upper() for name, channel in channels.items()}
    return channels[_pick_depth_channel(path, types)].pixels


def _read_npz_depth(path: Path) -> np.ndarray:
    unreadable = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
    try:
        archive = np.load(path, allow_pickle=False)
    except unreadable as exc:
        raise FormatError(path, f"expected an npz archive, found one that cannot be read ({exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise FormatError(path, "expected an npz archive, found a single .npy array")
    with archive:
        keys = list(archive.keys())
        if "depth" not in keys and len(keys) != 1:
            raise FormatError(path, f"expected an array named 'depth' or a single array, found {keys}")
        try:
            return archive["depth" if "depth" in keys else keys[0]]
        except unreadable as exc:
            raise FormatError(path, f"expected an npz archive, found a damaged array ({exc})") from None


def read_depth(path: str | Path, scale: float = 1.0) -> np.ndarray:
    """Depth (H, W) float32 multiplied by `scale`; 0 where unknown (nan, inf or <= 0).

    `.exr`: the single float channel, or the one named Z, depth, Y or R.
    `.npz`: the array named "depth", or the only array.
    """
    path = Path(path)
    if scale <= 0:
        raise ValueError(f"depth scale must be positive, got {scale}")
    _require_file(path, "depth map")
    suffix = path.suffix.lower()
    if suffix == ".exr":
        depth = _read_exr_depth(path)
    elif suffix == ".npz":
        depth = _read_npz_depth(path)
    else:
        raise FormatError(path, f"expected a depth map with suffix .exr or .npz, found {path.suffix!r}")
    if depth.ndim != 2 or not (
        np.issubdtype(depth.dtype, np.floating) or np.issubdtype(depth.dtype, np.integer)
    ):
        raise FormatError(
            path, f"expected a 2-D numeric depth map, found {depth.dtype} array of shape {depth.shape}"
        )
    depth = depth.astype(np.float32) * np.float32(scale)
    depth[~np.isfinite(depth) | (depth <= 0)] = 0
    return depth


def read_depth_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of a depth map; for EXR read from the header only (float channel checked, pixels not)."""
    path = Path(path)
    if path.suffix.lower() != ".exr":
        return read_depth(path).shape
    _require_file(path, "depth map")
    OpenEXR = _openexr(path)
    try:
        exr = OpenEXR.InputFile(str(path))
        header = exr.header()
        exr.close()
    except (OSError, RuntimeError):
        raise FormatError(path, "expected an OpenEXR image, found one whose header cannot be read") from None
    _pick_depth_channel(path, {name: str(channel.type) for name, channel in header["channels"].items()})
    window = header["dataWindow"]
    return window.max.y - window.min.y + 1, window.max.x - window.min.x + 1


def write_depth(path: str | Path, depth: np.ndarray) -> None:
    """Write (H, W) depth as given: `.exr` (one FLOAT channel "Z") or `.npz` (array "depth", compressed)."""
    path = Path(path)
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2:
        raise ValueError(f"expected depth (H, W), got {depth.shape}")
    suffix = path.suffix.lower()
    if suffix == ".exr":
        OpenEXR = _openexr(path)
        header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
        with atomic_path(path) as tmp:
            OpenEXR.File(header, {"Z": np.ascontiguousarray(depth)}).write(str(tmp))
    elif suffix == ".npz":
        with atomic_open(path, "wb") as f:
            np.savez_compressed(f, depth=depth)
    else:
        raise ValueError(f"{path}: depth maps are written as .exr or .npz, not {path.suffix!r}")


def load_world_verts(layout: SubjectLayout, seq: str, frame: str, num_verts: int) -> np.ndarray:
    """(V, 3) world-frame vertices, from the .bin when present (fast), else the OBJ."""
    bin_path = layout.mesh_bin(seq, frame)
    if bin_path.is_file():
        return read_bin(bin_path, num_verts)
    verts = read_obj(layout.mesh_obj(seq, frame)).verts
    if len(verts) != num_verts:
        raise FormatError(layout.mesh_obj(seq, frame), f"expected {num_verts} vertices, got {len(verts)}")
    return verts
