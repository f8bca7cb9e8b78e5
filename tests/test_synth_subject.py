"""The synthetic subject: layout, geometry, cameras, determinism and the CLI, on the tiny preset."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from npva.cli import main
from npva.errors import NpvaError
from npva.geometry.camera import project
from npva.geometry.mesh import to_face_frame
from npva.geometry.raster import rasterize_camera
from npva.io import (
    SubjectLayout,
    read_bin,
    read_camera_split,
    read_depth,
    read_frame_list,
    read_image,
    read_krt,
    read_obj,
    read_transform,
)
from npva.synth import frames as synth_frames
from npva.synth import write_subject
from npva.synth.capture import SyntheticCapture
from npva.synth.frames import FrameTask, FrameWriter, plan_tasks, torch_threads
from npva.synth.grid import COARSE_COLS, COARSE_ROWS
from npva.synth.scene import capture_frames, get_preset
from npva.synth.sheet import TEXTURE
from npva.synth.subject import MARKER

TINY = get_preset("tiny")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture
def subject(tiny_subject) -> Path:
    """The tiny subject of seed 0 (written once per test process, see conftest.py)."""
    return tiny_subject


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _jaw_open_frame(root: Path) -> tuple[str, str]:
    """The last frame of the open-jaw expression (its jaw is open widest)."""
    frames = [entry for entry in read_frame_list(SubjectLayout(root).frame_list) if "_Jaw_Open" in entry[0]]
    return frames[-1]


def test_every_listed_frame_has_its_files(subject):
    root = subject
    layout = SubjectLayout(root)
    cameras = read_krt(layout.krt)
    assert list(cameras) == list(TINY.cameras)
    frames = read_frame_list(layout.frame_list)
    assert len(frames) == len(TINY.sequences) * TINY.frames
    for sequence, frame in frames:
        assert len(frame) == 6 and int(frame) % 3 == 0
        for path in (
            layout.mesh_obj(sequence, frame),
            layout.mesh_bin(sequence, frame),
            layout.transform(sequence, frame),
            layout.average_texture(sequence, frame),
            *(layout.image(sequence, name, frame) for name in cameras),
            *(layout.mvs_depth(sequence, name, frame) for name in cameras),
        ):
            assert path.is_file(), path
    sequence, frame = frames[0]
    assert read_image(layout.image(sequence, "400029", frame)).shape == (*TINY.image_size, 3)
    texture = read_image(layout.average_texture(sequence, frame))
    assert texture.shape == (TINY.texture_size, TINY.texture_size, 3)
    assert (texture.sum(-1) > 0).mean() > 0.8  # the cylindrical unwrap covers most of the square
    assert (root / "contact_sheet.png").is_file()


def test_splits_hold_out_whole_sequences(subject):
    root = subject
    layout = SubjectLayout(root)
    train = read_frame_list(layout.split_list("train"))
    test = read_frame_list(layout.split_list("test"))
    assert sorted(train + test) == sorted(read_frame_list(layout.frame_list))
    train_sequences, test_sequences = {s for s, _ in train}, {s for s, _ in test}
    assert not train_sequences & test_sequences
    assert any(s.startswith("E0") for s in test_sequences) and any(
        s.startswith("SEN_") for s in test_sequences
    )
    split = read_camera_split(layout.camera_split)
    assert "400029" in split["test"] and not set(split["train"]) & set(split["test"])
    assert sorted(split["train"] + split["test"]) == sorted(TINY.cameras)


def test_tracked_mesh_is_a_closed_face_with_fixed_topology(subject):
    root = subject
    layout = SubjectLayout(root)
    meshes = [read_obj(layout.mesh_obj(s, f)) for s, f in read_frame_list(layout.frame_list)]
    expected = COARSE_COLS * COARSE_ROWS + 1
    assert all(len(m.verts) == expected and np.array_equal(m.faces, meshes[0].faces) for m in meshes)
    mesh = meshes[0]
    assert 4000 <= expected <= 7000 and mesh.uvs.min() >= 0 and mesh.uvs.max() <= 1
    # Boundary edges (used by one face) form one loop, round the neck: the lips are joined.
    edges = np.sort(mesh.faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    boundary = unique[counts == 1]
    assert counts.max() == 2 and len(boundary) == COARSE_COLS
    assert np.all(np.bincount(boundary.ravel())[np.unique(boundary)] == 2)
    lowest_ring = np.arange(COARSE_COLS * (COARSE_ROWS - 1), COARSE_COLS * COARSE_ROWS)
    assert set(boundary.ravel()) == set(lowest_ring)


def test_mesh_files_agree_and_pose_is_removable(subject):
    root = subject
    layout = SubjectLayout(root)
    sequence, frame = read_frame_list(layout.frame_list)[0]  # neutral: the face frame mesh is symmetric
    mesh = read_obj(layout.mesh_obj(sequence, frame))
    np.testing.assert_array_equal(read_bin(layout.mesh_bin(sequence, frame), len(mesh.verts)), mesh.verts)
    R, t = read_transform(layout.transform(sequence, frame))
    face = to_face_frame(mesh.verts.astype(np.float64), R, t)
    mirrored = face * np.array([-1.0, 1.0, 1.0])
    # Column j mirrors column (cols - j) mod cols; the pole mirrors itself.
    grid = np.arange(COARSE_COLS * COARSE_ROWS).reshape(COARSE_ROWS, COARSE_COLS)
    mirror_index = np.append(grid[:, (-np.arange(COARSE_COLS)) % COARSE_COLS].ravel(), len(face) - 1)
    np.testing.assert_allclose(mirrored[mirror_index], face, atol=1e-2)
    assert np.abs(mesh.verts - face).max() > 1.0  # the head moved


def test_depth_sees_into_the_open_mouth(subject):
    """MVS depth (of the true geometry) lies far behind the tracked mesh (whose lips are joined) in
    the open mouth, and close to it elsewhere on the face."""
    root = subject
    layout = SubjectLayout(root)
    camera = read_krt(layout.krt)["400029"].with_size(*TINY.image_size)
    differences = {}
    for sequence, frame in (read_frame_list(layout.frame_list)[0], _jaw_open_frame(root)):
        mesh = read_obj(layout.mesh_obj(sequence, frame))
        coarse = rasterize_camera(torch.from_numpy(mesh.verts), torch.from_numpy(mesh.faces), camera).depth
        mvs = read_depth(layout.mvs_depth(sequence, "400029", frame), scale=1000.0)
        assert 800.0 < mvs[mvs > 0].min() and mvs.max() < 1200.0  # written in metres
        both = (mvs > 0) & (coarse.numpy() > 0)
        differences[sequence] = np.abs(mvs - coarse.numpy())[both]
        assert (mvs[coarse.numpy() > 0] == 0).mean() > 0.02  # holes on the head
    neutral, jaw_open = differences.values()
    assert (jaw_open > 20.0).sum() >= 5
    assert (neutral > 20.0).sum() <= (jaw_open > 20.0).sum() // 5
    assert np.median(neutral) < 2.0


def test_cameras_frame_the_head(subject):
    root = subject
    layout = SubjectLayout(root)
    sequence, frame = read_frame_list(layout.frame_list)[0]
    verts = torch.from_numpy(read_obj(layout.mesh_obj(sequence, frame)).verts).double()
    height, width = TINY.image_size
    for name, camera in read_krt(layout.krt).items():
        pixels, depth = project(verts, camera)
        centre = pixels.mean(0).numpy()
        assert abs(centre[0] / width - 0.5) < 0.15 and abs(centre[1] / height - 0.5) < 0.15, name
        assert 850.0 < depth.min() and depth.max() < 1200.0
        span = (pixels.max(0).values - pixels.min(0).values).numpy()
        assert span[1] > 0.5 * height, name  # the head fills much of the portrait image


def test_same_seed_same_bytes_through_the_cli_over_a_previous_output(subject, tmp_path, capsys):
    """A second run into an earlier synth output writes identical files and removes the files the
    earlier run recorded."""
    again = tmp_path / "again"
    stale = again / "images" / "OLD" / "400029" / "000003.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    (again / MARKER).write_text(json.dumps({"files": ["images/OLD/400029/000003.png"]}))
    assert main(["synth", "--preset", "tiny", "--out", str(again), "--seed", "0"]) == 0
    summary = capsys.readouterr().out.strip()
    frames = len(TINY.sequences) * TINY.frames
    assert "preset tiny" in summary and f"{len(TINY.cameras)} cameras x {frames} frames" in summary
    assert "\n" not in summary
    assert not (again / "images" / "OLD").exists()
    assert _tree_hashes(again) == _tree_hashes(subject)
    assert len(json.loads((again / MARKER).read_text())["files"]) == len(_tree_hashes(again)) - 1


def test_worker_processes_write_the_same_files(subject, tmp_path, monkeypatch):
    """Three workers, each frame split into two tasks (as on a machine with more cores than frames),
    write the same bytes as one process, contact sheet included."""
    monkeypatch.setattr(synth_frames, "TASKS_PER_WORKER", 6)
    frames = capture_frames(TINY)
    assert len(plan_tasks(frames, TINY.cameras, workers=3)) == 2 * len(frames)
    write_subject(tmp_path / "split", "tiny", 0, workers=3)
    assert _tree_hashes(tmp_path / "split") == _tree_hashes(subject)


@pytest.mark.parametrize("preset", ["tiny", "full"])
@pytest.mark.parametrize("workers", [1, 2, 3, 32, 1000])
def test_tasks_cover_every_view_of_every_frame_once(preset, workers):
    """Every (frame, camera) pair, and every frame's own files (TEXTURE), lie in exactly one task;
    the views of a frame are split evenly into enough tasks to keep every worker busy."""
    spec = get_preset(preset)
    frames = capture_frames(spec)
    tasks = plan_tasks(frames, spec.cameras, workers)
    covered = Counter((task.key, name) for task in tasks for name in task.views)
    assert covered == Counter((key, name) for key in frames for name in (TEXTURE, *spec.cameras))
    views = len(spec.cameras) + 1
    if workers == 1:
        assert len(tasks) == len(frames)
    else:
        assert len(tasks) >= min(synth_frames.TASKS_PER_WORKER * workers, len(frames) * views)
    groups_per_frame = Counter(task.key for task in tasks)
    group_sizes = [len(task.views) for task in tasks]
    assert len(set(groups_per_frame.values())) == 1  # as many groups in every frame
    assert max(group_sizes) - min(group_sizes) <= 1


def test_only_the_texture_task_writes_the_frame_files(subject, tmp_path):
    """A task of cameras writes their images and depth maps; the TEXTURE task writes the frame's mesh
    (obj, bin), head pose and average texture. Both return their wanted tiles."""
    key = capture_frames(TINY)[4]
    wanted = {(key.sequence, key.frame, name) for name in ("400008", "400012", TEXTURE)}
    writer = FrameWriter("tiny", 0, tmp_path, wanted)
    layout = SubjectLayout(tmp_path)
    cameras = ("400008", "400017")
    tiles = writer.write(FrameTask(key, cameras))
    assert set(tiles) == {(key.sequence, key.frame, "400008")}
    camera_files = {layout.image(key.sequence, name, key.frame) for name in cameras}
    camera_files |= {layout.mvs_depth(key.sequence, name, key.frame) for name in cameras}
    assert {path for path in tmp_path.rglob("*") if path.is_file()} == camera_files

    tiles = writer.write(FrameTask(key, (TEXTURE,)))
    assert set(tiles) == {(key.sequence, key.frame, TEXTURE)}
    frame_files = {
        layout.mesh_obj(key.sequence, key.frame),
        layout.mesh_bin(key.sequence, key.frame),
        layout.transform(key.sequence, key.frame),
        layout.average_texture(key.sequence, key.frame),
    }
    assert {path for path in tmp_path.rglob("*") if path.is_file()} == camera_files | frame_files
    reference = _tree_hashes(subject)
    assert all(reference[name] == digest for name, digest in _tree_hashes(tmp_path).items())


def test_different_seed_differs(subject):
    """Another seed is another subject (shape, colours) performing with other timing."""
    layout = SubjectLayout(subject)
    other = SyntheticCapture(TINY, seed=1)
    for key in capture_frames(TINY)[:6:5]:  # the first neutral frame and a sentence frame
        expr, pose = other.expression(key), other.pose(key)
        image = other.render(other.scene(expr, pose), other.cameras["400029"]).image
        written = read_image(layout.image(key.sequence, "400029", key.frame))
        assert np.abs(np.round(image * 255) - written).mean() > 2.0
        R, t = read_transform(layout.transform(key.sequence, key.frame))
        face = to_face_frame(
            read_obj(layout.mesh_obj(key.sequence, key.frame)).verts.astype(np.float64), R, t
        )
        assert np.abs(other.coarse.at(expr) - face).max() > 1.0


def test_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(NpvaError, match="not empty"):
        write_subject(tmp_path, "tiny", 0)
    assert main(["synth", "--preset", "tiny", "--out", str(tmp_path)]) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    with pytest.raises(NpvaError, match="unknown synth preset"):
        write_subject(tmp_path / "new", "huge", 0)


def test_npva_check_accepts_the_output(subject):
    from npva.io.check import check_subject

    root = subject
    assert check_subject(root).usable
    assert main(["check", str(root)]) == 0
