"""`npva check` on a small subject written with the Multiface writers, then damaged in various ways."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from npva.cli import main
from npva.geometry.camera import look_at
from npva.geometry.mesh import Mesh
from npva.io import (
    SubjectLayout,
    write_bin,
    write_camera_split,
    write_depth,
    write_frame_list,
    write_image,
    write_krt,
    write_obj,
    write_transform,
)
from npva.io.check import check_subject

CAMERAS = ("400029", "400002")
SEQUENCES = ("E001_Neutral_Eyes_Open", "SEN_hello")
FRAMES = [(sequence, frame) for sequence in SEQUENCES for frame in ("000001", "000004")]
HEIGHT, WIDTH = 26, 40


def quad_grid(n: int = 3) -> Mesh:
    """An n x n vertex grid (mm) with UVs spanning [0, 1]^2, two triangles per cell."""
    ij = np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 2)
    verts = np.column_stack((ij * 50.0 - 50.0, np.zeros(len(ij)))).astype(np.float32)
    cells = [
        (i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1)
        for i in range(n - 1)
        for j in range(n - 1)
    ]
    faces = np.array([tri for a, b, c, d in cells for tri in ((a, b, d), (a, d, c))], dtype=np.int64)
    return Mesh(verts, faces, (ij[:, ::-1] / (n - 1)).astype(np.float32), faces.copy())


@pytest.fixture
def io_subject(tmp_path) -> Path:
    """A valid subject: 2 cameras, 2 sequences of 2 frames, 26x40 images, every optional file too."""
    root = tmp_path / "subject"
    layout = SubjectLayout(root)
    rng = np.random.default_rng(0)
    K = np.array([[60.0, 0, WIDTH / 2], [0, 60.0, HEIGHT / 2], [0, 0, 1]])
    cameras = [
        look_at(name, np.array([x, 0.0, -1000.0]), np.zeros(3), np.array([0.0, -1.0, 0.0]), K, HEIGHT, WIDTH)
        for name, x in zip(CAMERAS, (-300.0, 300.0), strict=True)
    ]
    write_krt(layout.krt, cameras)
    write_frame_list(layout.frame_list, FRAMES)
    mesh = quad_grid()
    for sequence, frame in FRAMES:
        for camera in CAMERAS:
            write_image(
                layout.image(sequence, camera, frame), rng.integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)
            )
            write_depth(layout.mvs_depth(sequence, camera, frame), rng.uniform(0.9, 1.1, (HEIGHT, WIDTH)))
        write_obj(layout.mesh_obj(sequence, frame), mesh)
        write_bin(layout.mesh_bin(sequence, frame), mesh.verts)
        write_transform(layout.transform(sequence, frame), np.eye(3), rng.normal(0, 5, 3))
        write_image(layout.average_texture(sequence, frame), rng.integers(0, 256, (16, 16, 3), np.uint8))
    write_frame_list(layout.split_list("train"), FRAMES[:2])
    write_frame_list(layout.split_list("test"), FRAMES[2:])
    write_camera_split(layout.camera_split, [CAMERAS[0]], [CAMERAS[1]])
    layout.audio_dir.mkdir()
    with wave.open(str(layout.audio("SEN_hello")), "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(16000)
        audio.writeframes(np.zeros(160, np.int16).tobytes())
    return root


def run_check(root: Path, capsys, *args: str) -> tuple[int, str]:
    code = main(["check", str(root), *args])
    return code, capsys.readouterr().out


def test_valid_subject_is_usable(io_subject, capsys):
    code, out = run_check(io_subject, capsys)
    assert code == 0, out
    assert "usable" in out.split("\n")[0] and "NOT" not in out and "problems" not in out
    report = check_subject(io_subject)
    expected_ok = {"krt": 1, "frame_list": 1, "images": 8, "meshes": 4, "transforms": 4, "textures": 4}
    expected_ok |= {"bins": 4, "splits": 3, "mvs_depth": 8, "audio": 1}
    assert {key: c.ok for key, c in report.categories.items()} == expected_ok
    assert all(not c.problems for c in report.categories.values())
    assert {name: (s.frames, s.complete, s.images) for name, s in report.sequences.items()} == {
        "E001_Neutral_Eyes_Open": (2, 2, {"400029": 2, "400002": 2}),
        "SEN_hello": (2, 2, {"400029": 2, "400002": 2}),
    }


def test_python_dash_m_npva_check(io_subject):
    result = subprocess.run(
        [sys.executable, "-m", "npva", "check", str(io_subject)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "usable" in result.stdout


def test_deleted_image_is_a_gap_that_keeps_the_subject_usable(io_subject, capsys):
    SubjectLayout(io_subject).image("SEN_hello", "400002", "000004").unlink()
    code, out = run_check(io_subject, capsys)
    assert code == 0
    assert "images/SEN_hello/400002/000004.png: missing" in out
    assert "1-2 (fewest: camera 400002)" in out
    assert "gaps: missing 1 images; preprocess and train leave those frames or views out" in out
    # the test split holds that frame: reported there too, as an entry whose frame is incomplete
    assert "SEN_hello 000004: the frame has missing or malformed files" in out


def test_obj_cut_mid_line_is_named_with_its_line(io_subject, capsys):
    path = SubjectLayout(io_subject).mesh_obj("E001_Neutral_Eyes_Open", "000004")
    text = path.read_text()
    path.write_text(text[: text.rindex("/")])  # the last face loses its final uv index
    last_line = text.count("\n")
    code, out = run_check(io_subject, capsys)
    assert code == 1
    assert f"tracked_mesh/E001_Neutral_Eyes_Open/000004.obj:{last_line}: malformed:" in out


def test_obj_missing_faces_is_a_topology_mismatch(io_subject, capsys):
    path = SubjectLayout(io_subject).mesh_obj("SEN_hello", "000001")
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-3]))  # cut at a line boundary: still a valid OBJ, with fewer faces
    code, out = run_check(io_subject, capsys)
    assert code == 1
    assert "tracked_mesh/SEN_hello/000001.obj: mismatch: topology (9 vertices, 9 uvs, 5 faces) differs" in out


def test_corrupt_krt_is_named_and_images_are_not_checked(io_subject, capsys):
    krt = SubjectLayout(io_subject).krt
    lines = krt.read_text().split("\n")
    lines[2] = "0 sixty 13"
    krt.write_text("\n".join(lines))
    code, out = run_check(io_subject, capsys)
    assert code == 1
    assert "KRT:3: malformed: expected 3 numbers (row 2 of K of camera 400029), found 'sixty'" in out
    assert "not checked: KRT unreadable" in out


def test_missing_krt_and_frame_list(io_subject, capsys):
    layout = SubjectLayout(io_subject)
    layout.krt.unlink()
    layout.frame_list.write_text("\n")
    code, out = run_check(io_subject, capsys)
    assert code == 1
    assert "KRT: missing" in out
    assert "frame_list.txt: malformed: expected '<sequence> <frame>' lines, found none" in out


def test_image_problems_truncated_png_and_size_mismatch(io_subject, capsys):
    layout = SubjectLayout(io_subject)
    truncated = layout.image("E001_Neutral_Eyes_Open", "400029", "000001")
    truncated.write_bytes(truncated.read_bytes()[:-20])
    write_image(layout.image("SEN_hello", "400002", "000001"), np.zeros((13, 20, 3), np.uint8))
    code, out = run_check(io_subject, capsys)
    assert code == 1
    assert "images/E001_Neutral_Eyes_Open/400029/000001.png: malformed: expected a PNG ending" in out
    assert "images/SEN_hello/400002/000001.png: mismatch: size 13x20 (HxW) differs from 26x40" in out
    report = check_subject(io_subject)
    assert [report.categories["images"].count(k) for k in ("missing", "malformed", "mismatch")] == [0, 1, 1]
    assert report.categories["images"].ok == 6


def test_required_transform_and_texture_problems(io_subject, capsys):
    layout = SubjectLayout(io_subject)
    transform = layout.transform("SEN_hello", "000004")
    transform.write_text("\n".join(transform.read_text().splitlines()[:2]) + "\n")
    layout.average_texture("SEN_hello", "000001").unlink()
    code, out = run_check(io_subject, capsys)
    assert code == 1
    assert "tracked_mesh/SEN_hello/000004_transform.txt:3: malformed: expected 4 numbers" in out
    assert "unwrapped_uv_1024/SEN_hello/average/000001.png: missing" in out


def test_optional_problems_are_reported_but_keep_it_usable(io_subject, capsys):
    layout = SubjectLayout(io_subject)
    write_bin(layout.mesh_bin("SEN_hello", "000001"), np.zeros((8, 3), np.float32))
    write_frame_list(layout.split_list("test"), [*FRAMES[2:], ("SEN_gone", "000007")])
    write_camera_split(layout.camera_split, [CAMERAS[0], "499999"], [CAMERAS[1]])
    layout.mvs_depth("E001_Neutral_Eyes_Open", "400002", "000004").unlink()
    audio = layout.audio("SEN_hello")
    audio.write_bytes(audio.read_bytes()[:-40])
    code, out = run_check(io_subject, capsys)
    assert code == 0, out
    assert "tracked_mesh/SEN_hello/000001.bin: malformed: expected 9 vertices (108 bytes), found 8" in out
    assert (
        "splits/test_list.txt: mismatch: SEN_gone 000007: not in the frame list and missing on disk: " in out
    )
    assert "tracked mesh, head pose, average texture, 2 of 2 images" in out
    assert "splits/camera_split.json: mismatch: camera '499999' (train) is not in KRT" in out
    assert "mvs_depth/E001_Neutral_Eyes_Open/400002/000004.exr: missing" in out
    assert "audio/SEN_hello.wav: malformed:" in out and "truncated" in out


def test_optional_parts_absent(io_subject, capsys):
    layout = SubjectLayout(io_subject)
    for path in sorted(layout.mvs_depth_dir.rglob("*"), reverse=True) + [layout.mvs_depth_dir]:
        path.rmdir() if path.is_dir() else path.unlink()
    for path in [*layout.splits_dir.iterdir(), layout.audio("SEN_hello")]:
        path.unlink()
    code, out = run_check(io_subject, capsys)
    assert code == 0, out
    report = check_subject(io_subject)
    assert report.categories["mvs_depth"].note == "not present"
    assert report.categories["splits"].note == "not present"
    assert report.categories["audio"].expected == 0 and not report.categories["audio"].problems


def test_summary_limits_problems_per_category(io_subject, capsys):
    layout = SubjectLayout(io_subject)
    for sequence, frame in FRAMES:
        layout.image(sequence, "400029", frame).unlink()
    code, out = run_check(io_subject, capsys, "--max-lines", "3")
    assert code == 0  # a camera that missed every frame: a gap
    assert sum(line.endswith(": missing") for line in out.splitlines()) == 3 and "... and 1 more" in out
    assert "0-2 (fewest: camera 400029)" in out


def test_subject_directory_missing(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nowhere")]) == 3
    assert "nowhere: missing subject directory" in capsys.readouterr().err
