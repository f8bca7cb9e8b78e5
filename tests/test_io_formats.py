"""Round trips and malformed inputs for every Multiface file format."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from npva.errors import FormatError, MissingFileError, NpvaError
from npva.geometry.camera import Camera
from npva.geometry.mesh import Mesh
from npva.io import (
    SubjectLayout,
    load_camera_image,
    multiface,
    read_bin,
    read_camera_split,
    read_depth,
    read_depth_size,
    read_frame_list,
    read_image,
    read_image_size,
    read_krt,
    read_obj,
    read_transform,
    write_bin,
    write_camera_split,
    write_depth,
    write_frame_list,
    write_image,
    write_krt,
    write_obj,
    write_transform,
)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def random_camera(rng: np.random.Generator, name: str) -> Camera:
    K = np.array(
        [[rng.uniform(800, 5000), 0, rng.uniform(300, 700)], [0, rng.uniform(800, 5000), 1000], [0, 0, 1]]
    )
    return Camera(name, K, random_rotation(rng), rng.normal(0, 500, 3), dist=rng.normal(0, 0.1, 5))


def grid_mesh(n: int = 4) -> Mesh:
    """An n x n vertex grid in the z = 0 plane with a UV layout whose indexing differs from the vertices'."""
    ij = np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 2)
    verts = np.column_stack((ij * 10.0, np.zeros(len(ij)))).astype(np.float32) + np.float32(0.1)
    cells = [
        (i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1)
        for i in range(n - 1)
        for j in range(n - 1)
    ]
    faces = np.array([tri for a, b, c, d in cells for tri in ((a, b, d), (a, d, c))], dtype=np.int64)
    order = np.arange(len(verts))[::-1]  # uv k belongs to vertex order[k]
    uvs = (ij[order] / (n - 1)).astype(np.float32)
    face_uvs = np.argsort(order)[faces]
    return Mesh(verts, faces, uvs, face_uvs)


def expect_format_error(path: Path, line: int | None, fragment: str, read, *args) -> FormatError:
    with pytest.raises(FormatError) as info:
        read(path, *args)
    error = info.value
    assert error.path == path
    assert error.line == line
    where = f"{path}:{line}:" if line is not None else f"{path}:"
    assert str(error).startswith(where), str(error)
    assert fragment in error.message, error.message
    return error


# --------------------------------------------------------------------------------------------- KRT


def test_krt_round_trip_keeps_order_and_distortion(tmp_path):
    rng = np.random.default_rng(0)
    cameras = [random_camera(rng, name) for name in ("400029", "400002", "cam_b")]
    write_krt(tmp_path / "KRT", cameras)
    read = read_krt(tmp_path / "KRT")
    assert list(read) == ["400029", "400002", "cam_b"]
    for camera in cameras:
        got = read[camera.name]
        for field in ("K", "R", "t", "dist"):
            np.testing.assert_array_equal(getattr(got, field), getattr(camera, field))
        assert got.height is None and got.width is None
    lines = (tmp_path / "KRT").read_text().split("\n")
    assert lines[0] == "400029" and len(lines[4].split()) == 5 and lines[8] == ""


def test_krt_accepts_missing_blank_lines_crlf_and_rounded_rotations(tmp_path):
    rng = np.random.default_rng(1)
    a, b = random_camera(rng, "a"), random_camera(rng, "b")
    rounded = Camera("b", b.K, np.round(b.R, 4), b.t)  # |R R^T - I| ~ 1e-4, within the tolerance
    write_krt(tmp_path / "KRT", [a, rounded])
    text = (tmp_path / "KRT").read_text().replace("\n\n", "\n").replace("\n", "\r\n")
    (tmp_path / "KRT2").write_bytes(text.encode())
    cameras = read_krt(tmp_path / "KRT2")
    assert list(cameras) == ["a", "b"]
    np.testing.assert_array_equal(cameras["b"].R, rounded.R)


def _replace_line(text: str, lineno: int, new: str) -> str:
    lines = text.split("\n")
    lines[lineno - 1] = new
    return "\n".join(lines)


def _scale_rotation_row(text: str, lineno: int, factor: float) -> str:
    values = [float(v) for v in text.split("\n")[lineno - 1].split()]
    values[:3] = [v * factor for v in values[:3]]
    return _replace_line(text, lineno, " ".join(map(repr, values)))


# Two blocks: camera A on lines 1-8 (name, K 2-4, distortion 5, [R|t] 6-8), blank 9; camera B on 10-17.
KRT_CASES = {
    "non-numeric entry": (lambda s: _replace_line(s, 3, "0 12x 1000"), 3, "found '12x'"),
    "wrong count": (lambda s: _replace_line(s, 5, "0 0 0 0"), 5, "expected 5 numbers"),
    "truncated final block": (lambda s: "\n".join(s.split("\n")[:15]) + "\n", 16, "found end of file"),
    "cut final line": (lambda s: s[: s.rindex(" ")], 17, "expected 4 numbers"),
    "not a rotation": (lambda s: _scale_rotation_row(s, 6, 1.01), 6, "expected a rotation"),
    "missing K row": (lambda s: "\n".join(s.split("\n")[:2] + s.split("\n")[3:]), 4, "expected 3 numbers"),
    "blank line in block": (lambda s: _replace_line(s, 12, ""), 12, "found a blank line"),
    "duplicate camera": (lambda s: _replace_line(s, 10, "A"), 10, "defined twice"),
    "two-token name": (lambda s: _replace_line(s, 10, "B extra"), 10, "expected a camera name"),
    "bad K": (lambda s: _replace_line(s, 4, "0 0 2"), 2, "expected intrinsics"),
    "empty": (lambda s: "\n\n", 3, "found none"),
}


@pytest.mark.parametrize("case", KRT_CASES)
def test_krt_malformed_names_file_and_line(tmp_path, case):
    rng = np.random.default_rng(2)
    write_krt(tmp_path / "KRT", [random_camera(rng, "A"), random_camera(rng, "B")])
    edit, line, fragment = KRT_CASES[case]
    path = tmp_path / "bad_KRT"
    path.write_text(edit((tmp_path / "KRT").read_text()))
    expect_format_error(path, line, fragment, read_krt)


def test_krt_binary_garbage_and_missing_file(tmp_path):
    path = tmp_path / "KRT"
    path.write_bytes(b"400029\n\xff\xfe\x00garbage")
    expect_format_error(path, 2, "not text", read_krt)
    with pytest.raises(MissingFileError, match="missing KRT"):
        read_krt(tmp_path / "absent")


# --------------------------------------------------------------------------------------------- meshes


def test_obj_round_trip(tmp_path):
    mesh = grid_mesh()
    write_obj(tmp_path / "m.obj", mesh)
    got = read_obj(tmp_path / "m.obj")
    for field, dtype in (
        ("verts", np.float32),
        ("faces", np.int64),
        ("uvs", np.float32),
        ("face_uvs", np.int64),
    ):
        assert getattr(got, field).dtype == dtype
        np.testing.assert_array_equal(getattr(got, field), getattr(mesh, field))
    assert (tmp_path / "m.obj").read_text().split("\n")[-2].startswith("f ")


def test_obj_accepts_normals_quads_and_ignored_statements(tmp_path):
    path = tmp_path / "quad.obj"
    path.write_text(
        "# a quad\nmtllib x.mtl\no quad\nv 0 0 0\nv 1 0 0 1 0 0\nv 1 1 0\nv 0 1 0\n"
        "vt 0 0\nvt 1 0\nvt 1 1 0\nvt 0 1\nvn 0 0 1\ng grp\ns off\nusemtl m\n"
        "f 1/1/1 2/2/1 3/3/1 4/4/1\n"
    )
    mesh = read_obj(path)
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [0, 2, 3]])
    np.testing.assert_array_equal(mesh.face_uvs, [[0, 1, 2], [0, 2, 3]])
    np.testing.assert_array_equal(mesh.verts[1], [1, 0, 0])
    np.testing.assert_array_equal(mesh.uvs[2], [1, 1])


def test_obj_fast_path_matches_general_parser(tmp_path, monkeypatch):
    """Plain OBJ text takes a vectorised path; the same mesh in a non-plain layout takes the line by line
    parser: both give the written mesh exactly, on random meshes."""
    rng = np.random.default_rng(9)
    plain, general = tmp_path / "plain.obj", tmp_path / "general.obj"
    for _ in range(5):
        V, T, F = rng.integers(3, 60, 3)
        scale = 10.0 ** rng.uniform(-8, 5, (V, 1))
        mesh = Mesh(
            verts=(rng.normal(size=(V, 3)) * scale).astype(np.float32),
            faces=rng.integers(0, V, (F, 3)),
            uvs=rng.uniform(0, 1, (T, 2)).astype(np.float32),
            face_uvs=rng.integers(0, T, (F, 3)),
        )
        write_obj(plain, mesh)
        general.write_text("o mesh\n" + plain.read_text().replace(" ", "  "))
        for path in (plain, general):
            got = read_obj(path)
            for field in ("verts", "faces", "uvs", "face_uvs"):
                np.testing.assert_array_equal(getattr(got, field), getattr(mesh, field))
                assert getattr(got, field).dtype == getattr(mesh, field).dtype

    def general_parser_called(path, lines):
        raise AssertionError("the general parser was used")

    monkeypatch.setattr(multiface, "_parse_obj", general_parser_called)
    read_obj(plain)
    with pytest.raises(AssertionError, match="general parser"):
        read_obj(general)


# The written grid has 16 v lines (1-16), 16 vt lines (17-32), then faces from line 33.
OBJ_CASES = {
    "vertex index out of range": (lambda ls: ls[:33] + ["f 1/1 99/2 3/3"] + ls[34:], 34, "found 99"),
    "uv index out of range": (
        lambda ls: ls[:40] + ["f 1/1 2/17 3/3"] + ls[41:],
        41,
        "texture coordinate indices",
    ),
    "truncated before faces": (lambda ls: ls[:32], 33, "expected faces"),
    "cut face line": (lambda ls: ls[:35] + [ls[35][:-2]], 36, "found '"),
    "face of two corners": (lambda ls: ls[:35] + ["f 1/1 2/2"], 36, "3 or more corners"),
    "face without uvs": (lambda ls: ls[:33] + ["f 1 2 3"] + ls[34:], 34, "UVs are required"),
    "face with normals only": (lambda ls: ls[:33] + ["f 1//1 2//2 3//3"] + ls[34:], 34, "UVs are required"),
    "zero index": (lambda ls: ls[:33] + ["f 0/1 2/2 3/3"] + ls[34:], 34, "1-based"),
    "non-numeric vertex": (lambda ls: ["v 1 2 three"] + ls[1:], 1, "found 'three'"),
    "short vertex": (lambda ls: ls[:4] + ["v 1 2"] + ls[5:], 5, "expected 3 or 4 or 6 numbers"),
    "unknown statement": (lambda ls: ls[:20] + ["xyz 1 2"] + ls[20:], 21, "expected an OBJ statement"),
    "no uvs": (lambda ls: ls[:16], 17, "expected texture coordinates"),
}


@pytest.mark.parametrize("case", OBJ_CASES)
def test_obj_malformed_names_file_and_line(tmp_path, case):
    write_obj(tmp_path / "m.obj", grid_mesh())
    lines = (tmp_path / "m.obj").read_text().split("\n")[:-1]
    assert lines[32].startswith("f ") and lines[31].startswith("vt ")
    edit, line, fragment = OBJ_CASES[case]
    path = tmp_path / "bad.obj"
    path.write_text("\n".join(edit(lines)))
    expect_format_error(path, line, fragment, read_obj)


def test_bin_round_trip_and_size_checks(tmp_path):
    verts = np.random.default_rng(3).normal(size=(7, 3)).astype(np.float32)
    path = tmp_path / "v.bin"
    write_bin(path, verts)
    assert path.stat().st_size == 7 * 12
    np.testing.assert_array_equal(read_bin(path), verts)
    np.testing.assert_array_equal(read_bin(path, num_verts=7), verts)
    expect_format_error(path, None, "expected 8 vertices (96 bytes), found 7", read_bin, 8)
    path.write_bytes(verts.tobytes()[:-4])
    expect_format_error(path, None, "multiple of 12 bytes", read_bin)
    verts[2, 1] = np.nan
    write_bin(path, verts)
    expect_format_error(path, None, "at vertex 2", read_bin)


# --------------------------------------------------------------------------------------------- poses, lists


def test_transform_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    R, t = random_rotation(rng), rng.normal(0, 100, 3)
    write_transform(tmp_path / "000001_transform.txt", R, t)
    R2, t2 = read_transform(tmp_path / "000001_transform.txt")
    np.testing.assert_array_equal(R2, R)
    np.testing.assert_array_equal(t2, t)
    assert len((tmp_path / "000001_transform.txt").read_text().splitlines()) == 3


TRANSFORM_CASES = {
    "two lines": (lambda ls: ls[:2], 3, "found end of file"),
    "extra line": (lambda ls: ls + ["1 2 3 4"], 4, "expected end of file"),
    "three numbers": (lambda ls: [ls[0], "1 0 0", ls[2]], 2, "expected 4 numbers"),
    "not a rotation": (lambda ls: ["2 0 0 1", "0 1 0 2", "0 0 1 3"], 1, "expected a rotation"),
    "nan": (lambda ls: ["nan 0 0 1"] + ls[1:], 1, "expected finite numbers"),
}


@pytest.mark.parametrize("case", TRANSFORM_CASES)
def test_transform_malformed_names_file_and_line(tmp_path, case):
    write_transform(tmp_path / "t.txt", np.eye(3), np.array([1.0, 2.0, 3.0]))
    edit, line, fragment = TRANSFORM_CASES[case]
    path = tmp_path / "bad_transform.txt"
    path.write_text("\n".join(edit((tmp_path / "t.txt").read_text().splitlines())) + "\n")
    expect_format_error(path, line, fragment, read_transform)


def test_frame_list_round_trip_ignores_blank_lines(tmp_path):
    entries = [
        ("E001_Neutral_Eyes_Open", "000063"),
        ("SEN_a_b", "000066"),
        ("E001_Neutral_Eyes_Open", "000066"),
    ]
    path = tmp_path / "frame_list.txt"
    write_frame_list(path, entries)
    assert (
        path.read_text() == "E001_Neutral_Eyes_Open 000063\nSEN_a_b 000066\nE001_Neutral_Eyes_Open 000066\n"
    )
    assert read_frame_list(path) == entries
    path.write_text("\nE001 000063\n  \r\nE002 000001   \r\n\n")
    assert read_frame_list(path) == [("E001", "000063"), ("E002", "000001")]


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ("E001 000063\nE001\n", 2, "found 1 token"),
        ("E001 000063\n\nE001 000066 x\n", 3, "found 3 token"),
        ("E001 00006a\n", 1, "frame id of digits"),
        ("E001 -3\n", 1, "frame id of digits"),
    ],
)
def test_frame_list_malformed_names_file_and_line(tmp_path, text, line, fragment):
    path = tmp_path / "train_list.txt"
    path.write_text(text)
    expect_format_error(path, line, fragment, read_frame_list)


def test_camera_split_round_trip(tmp_path):
    path = tmp_path / "camera_split.json"
    write_camera_split(path, ["400029", "400002"], ["400013"])
    assert read_camera_split(path) == {"train": ["400029", "400002"], "test": ["400013"]}
    path.write_text('{"train": [400029, "a"], "test": [], "other": 1}')
    assert read_camera_split(path) == {"train": ["400029", "a"], "test": []}


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        ('{"train": ["a"],\n "test": ["b",]\n}', 2, "expected JSON"),
        ('{"train": ["a"]}', None, "found no such key"),
        ('{\n"train": ["a"],\n"test": "b"}', 3, "found str"),
        ('{"train": [["a"]], "test": []}', 1, "expected camera names"),
        ('["a", "b"]', 1, "expected a JSON object"),
    ],
)
def test_camera_split_malformed(tmp_path, text, line, fragment):
    path = tmp_path / "camera_split.json"
    path.write_text(text)
    expect_format_error(path, line, fragment, read_camera_split)


# --------------------------------------------------------------------------------------------- images


def test_image_round_trip_rgb_float_grey(tmp_path):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, size=(26, 40, 3), dtype=np.uint8)
    write_image(tmp_path / "a.png", image)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), image)
    # RGB in memory, BGR as OpenCV stores it: the first channel is red on disk for real viewers.
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "a.png"))[..., 2], image[..., 0])
    values = rng.uniform(-0.2, 1.2, size=(5, 6, 3))
    write_image(tmp_path / "f.png", values)
    np.testing.assert_array_equal(read_image(tmp_path / "f.png"), np.round(np.clip(values, 0, 1) * 255))
    grey = rng.integers(0, 256, size=(5, 6), dtype=np.uint8)
    write_image(tmp_path / "g.png", grey)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(grey[..., None], 3, axis=2))
    assert read_image_size(tmp_path / "a.png") == (26, 40)
    rgba = np.concatenate((image, np.full((26, 40, 1), 7, np.uint8)), axis=2)
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), image)
    (tmp_path / "rgba.png").unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "f.png", "g.png"]  # no temporaries left


def test_read_image_resizes_by_area_when_shrinking(tmp_path):
    image = np.random.default_rng(6).integers(0, 256, size=(26, 40, 3), dtype=np.uint8)
    write_image(tmp_path / "a.png", image)
    small = read_image(tmp_path / "a.png", size=(13, 20))
    block_mean = image.reshape(13, 2, 20, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert small.shape == (13, 20, 3) and small.dtype == np.uint8
    assert np.abs(small - block_mean).max() <= 0.5 + 1e-9
    assert read_image(tmp_path / "a.png", size=(52, 80)).shape == (52, 80, 3)


def test_corrupt_and_missing_images(tmp_path):
    image = np.random.default_rng(7).integers(0, 256, size=(26, 40, 3), dtype=np.uint8)
    write_image(tmp_path / "a.png", image)
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    expect_format_error(tmp_path / "cut.png", None, "cannot be decoded", read_image)
    expect_format_error(tmp_path / "cut.png", None, "truncated", read_image_size)
    (tmp_path / "text.png").write_text("not an image")
    expect_format_error(tmp_path / "text.png", None, "cannot be decoded", read_image)
    expect_format_error(tmp_path / "text.png", None, "no PNG signature", read_image_size)
    damaged = bytearray(data)
    damaged[18] ^= 0xFF  # inside IHDR: the CRC no longer matches
    (tmp_path / "ihdr.png").write_bytes(bytes(damaged))
    expect_format_error(tmp_path / "ihdr.png", None, "IHDR", read_image_size)
    for read in (read_image, read_image_size):
        with pytest.raises(MissingFileError):
            read(tmp_path / "absent.png")


def test_load_camera_image_scales_intrinsics_to_loaded_size(tmp_path):
    K = np.array([[50.0, 0, 20], [0, 60, 13], [0, 0, 1]])
    camera = Camera("c", K, np.eye(3), np.zeros(3), dist=np.arange(5.0))
    write_image(tmp_path / "a.png", np.zeros((26, 40, 3), np.uint8))
    image, cam = load_camera_image(tmp_path / "a.png", camera)  # K refers to the file's size
    assert image.shape == (26, 40, 3) and (cam.height, cam.width) == (26, 40)
    np.testing.assert_array_equal(cam.K, K)
    image, cam = load_camera_image(tmp_path / "a.png", camera, size=(13, 10))
    assert image.shape == (13, 10, 3) and (cam.height, cam.width) == (13, 10)
    np.testing.assert_allclose(cam.K, [[12.5, 0, 5], [0, 30, 6.5], [0, 0, 1]])
    np.testing.assert_array_equal(cam.dist, np.arange(5.0))
    # K calibrated at twice the stored resolution (52 x 80): scaled by the loaded size over 52 x 80.
    image, cam = load_camera_image(tmp_path / "a.png", camera.with_size(52, 80))
    np.testing.assert_allclose(cam.K, [[25, 0, 10], [0, 30, 6.5], [0, 0, 1]])


# --------------------------------------------------------------------------------------------- depth


def test_depth_round_trip_exr_and_npz_with_scale(tmp_path):
    rng = np.random.default_rng(8)
    depth = rng.uniform(0.5, 2.0, size=(26, 40)).astype(np.float32)
    depth[0, :3] = (np.nan, np.inf, -1.0)
    depth[1, 0] = 0.0
    expected = depth.copy()
    expected[0, :3] = 0
    for name in ("d.exr", "d.npz"):
        write_depth(tmp_path / name, depth)
        np.testing.assert_array_equal(read_depth(tmp_path / name), expected)
        np.testing.assert_allclose(read_depth(tmp_path / name, scale=1000.0), expected * 1000, rtol=1e-7)
        assert read_depth(tmp_path / name).dtype == np.float32
        assert read_depth_size(tmp_path / name) == (26, 40)
    np.savez(tmp_path / "only.npz", z=np.full((3, 4), 2, dtype=np.uint16))
    np.testing.assert_array_equal(read_depth(tmp_path / "only.npz", scale=0.5), np.ones((3, 4)))


def _write_exr(path: Path, channels: dict[str, np.ndarray]) -> None:
    import OpenEXR

    OpenEXR.File({"type": OpenEXR.scanlineimage}, channels).write(str(path))


def test_exr_channel_choice_and_half_precision(tmp_path):
    z = np.full((4, 5), 1.5, np.float32)
    _write_exr(tmp_path / "rgbz.exr", {"R": z * 2, "G": z * 3, "B": z * 4, "Z": z})
    np.testing.assert_array_equal(read_depth(tmp_path / "rgbz.exr"), z)
    _write_exr(tmp_path / "half.exr", {"depth.V": z.astype(np.float16)})
    np.testing.assert_array_equal(read_depth(tmp_path / "half.exr"), z)


def test_malformed_depth_files(tmp_path):
    _write_exr(tmp_path / "uint.exr", {"I": np.ones((4, 5), np.uint32)})
    expect_format_error(
        tmp_path / "uint.exr", None, "expected a float (HALF or FLOAT) depth channel", read_depth
    )
    expect_format_error(tmp_path / "uint.exr", None, "depth channel", read_depth_size)
    _write_exr(tmp_path / "ab.exr", {"A": np.ones((4, 5), np.float32), "B": np.ones((4, 5), np.float32)})
    expect_format_error(tmp_path / "ab.exr", None, "named Z/depth/Y/R", read_depth)
    write_depth(tmp_path / "d.exr", np.ones((40, 50)))
    data = (tmp_path / "d.exr").read_bytes()
    (tmp_path / "cut.exr").write_bytes(data[: len(data) // 2])
    expect_format_error(tmp_path / "cut.exr", None, "cannot be read", read_depth)
    np.savez(tmp_path / "two.npz", a=np.ones((2, 2)), b=np.ones((2, 2)))
    expect_format_error(tmp_path / "two.npz", None, "named 'depth'", read_depth)
    np.savez(tmp_path / "cube.npz", depth=np.ones((2, 2, 2)))
    expect_format_error(tmp_path / "cube.npz", None, "2-D numeric", read_depth)
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    expect_format_error(tmp_path / "junk.npz", None, "cannot be read", read_depth)
    np.save(tmp_path / "array.npy", np.ones((2, 2)))
    (tmp_path / "array.npy").rename(tmp_path / "array.npz")
    expect_format_error(tmp_path / "array.npz", None, "found a single .npy array", read_depth)
    write_depth(tmp_path / "noise.npz", np.random.default_rng(10).uniform(size=(40, 50)))
    damaged = bytearray((tmp_path / "noise.npz").read_bytes())
    damaged[len(damaged) // 2 : len(damaged) // 2 + 16] = bytes(16)
    (tmp_path / "noise.npz").write_bytes(bytes(damaged))
    expect_format_error(tmp_path / "noise.npz", None, "expected an npz archive", read_depth)
    (tmp_path / "d.tiff").write_bytes(b"")
    expect_format_error(tmp_path / "d.tiff", None, "suffix .exr or .npz", read_depth)
    with pytest.raises(MissingFileError):
        read_depth(tmp_path / "absent.exr")


def test_openexr_is_imported_only_for_exr(tmp_path):
    """Without the OpenEXR package the module imports, npz depth works and EXR gives a clear error."""
    script = f"""
import sys
sys.modules["OpenEXR"] = None  # import OpenEXR now fails
import numpy as np
from npva.errors import NpvaError
from npva.io import read_depth, write_depth
write_depth({str(tmp_path / "d.npz")!r}, np.ones((2, 3)))
assert read_depth({str(tmp_path / "d.npz")!r}).shape == (2, 3)
try:
    write_depth({str(tmp_path / "d.exr")!r}, np.ones((2, 3)))
except NpvaError as exc:
    print(exc)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "needs the OpenEXR package" in result.stdout
    assert issubclass(FormatError, NpvaError)


@pytest.mark.parametrize(
    "read, what",
    [
        (read_krt, "KRT"),
        (read_obj, "OBJ mesh"),
        (read_bin, "vertex .bin"),
        (read_transform, "head pose transform"),
        (read_frame_list, "frame list"),
        (read_camera_split, "camera split JSON"),
        (read_image, "image"),
        (read_image_size, "image"),
        (read_depth, "depth map"),
        (read_depth_size, "depth map"),
    ],
)
def test_missing_files_raise_missing_file_error(tmp_path, read, what):
    path = tmp_path / "absent.exr"
    with pytest.raises(MissingFileError) as info:
        read(path)
    assert info.value.path == path
    assert str(info.value) == f"{path}: missing {what}"


def test_subject_layout_paths():
    layout = SubjectLayout("/data/m--20180227")
    root = Path("/data/m--20180227")
    assert layout.krt == root / "KRT"
    assert layout.frame_list == root / "frame_list.txt"
    assert layout.image("E001", "400029", "000063") == root / "images/E001/400029/000063.png"
    assert layout.mesh_obj("E001", "000063") == root / "tracked_mesh/E001/000063.obj"
    assert layout.mesh_bin("E001", "000063") == root / "tracked_mesh/E001/000063.bin"
    assert layout.transform("E001", "000063") == root / "tracked_mesh/E001/000063_transform.txt"
    assert layout.average_texture("E001", "000063") == root / "unwrapped_uv_1024/E001/average/000063.png"
    assert layout.audio("SEN_x") == root / "audio/SEN_x.wav"
    assert layout.split_list("train") == root / "splits/train_list.txt"
    assert layout.camera_split == root / "splits/camera_split.json"
    assert layout.mvs_depth("E001", "400029", "000063") == root / "mvs_depth/E001/400029/000063.exr"
    assert (layout.tex_mean, layout.tex_var) == (root / "tex_mean.png", root / "tex_var.txt")
