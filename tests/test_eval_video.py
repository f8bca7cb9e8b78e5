"""npva video: frame count and size, orbit cameras, the tracked mesh beside the render, audio."""

from __future__ import annotations

import math
import shutil
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from npva.cli import main
from npva.eval.loading import open_checkpoint
from npva.eval.video import (
    default_camera,
    even_frame,
    make_video,
    orbit_cameras,
    rotation_about,
    shaded_mesh_image,
)
from npva.geometry.camera import look_at, project
from npva.geometry.mesh import uv_sphere
from npva.io.multiface import read_frame_list, read_krt, write_frame_list

av = pytest.importorskip("av")

SEQUENCE_FRAMES = 2


@pytest.fixture(scope="module")
def frames(tiny_subject: Path) -> list[tuple[str, str]]:
    """The first frames of one held-out sequence."""
    listed = read_frame_list(tiny_subject / "splits" / "test_list.txt")
    seq = listed[0][0]
    return [line for line in listed if line[0] == seq][:SEQUENCE_FRAMES]


@pytest.fixture(scope="module")
def frame_list(frames, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video_lists") / "replay.txt"
    write_frame_list(path, frames)
    return path


@pytest.fixture(scope="module")
def ctx(tiny_checkpoint: Path, tiny_subject: Path, gendir: Path):
    return open_checkpoint(tiny_checkpoint, subject=tiny_subject, gendir=gendir)


def decoded(path: Path) -> tuple[list[np.ndarray], list[str]]:
    """RGB frames (H, W, 3) and stream kinds of a video file."""
    with av.open(str(path)) as container:
        kinds = [stream.type for stream in container.streams]
        images = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return images, kinds


def test_prmesh_puts_the_shaded_mesh_beside_the_render(ctx, frame_list, frames, tmp_path):
    camera = ctx.prepared.view_camera("400029", frames)
    images, _ = decoded(make_video(ctx, frame_list, tmp_path / "mesh.mp4", prmesh=True, progress=False))
    assert len(images) == len(frames)
    assert images[0].shape == (camera.height, 2 * camera.width, 3)
    mesh_panel = images[0][:, camera.width :].astype(int)
    assert mesh_panel.max() - mesh_panel.min() > 60  # lit and shadowed parts of the mesh over the background


def test_shaded_mesh_is_brightest_where_it_faces_the_camera():
    sphere = uv_sphere(16, 32, radius=100.0)
    K = np.array([[120.0, 0, 32], [0, 120.0, 32], [0, 0, 1]])
    camera = look_at("c", np.array([0, 0, -500.0]), np.zeros(3), np.array([0, 1.0, 0]), K, 64, 64)
    verts = torch.from_numpy(sphere.verts)
    image = shaded_mesh_image(verts, torch.from_numpy(sphere.faces), camera, torch.tensor([0.0, 0.0, 1.0]))
    assert image.shape == (64, 64, 3)
    assert torch.equal(image[0, 0], torch.tensor([0.0, 0.0, 1.0]))  # background outside the sphere
    centre, rim = image[32, 32, 0], image[32, 12, 0]
    assert centre == pytest.approx(0.8, abs=0.02) and rim < centre - 0.1


def test_orbit_cameras_look_at_the_centre_from_the_base_distance(ctx, frames):
    base = ctx.prepared.view_camera("400008", frames)
    centre = np.array([5.0, -20.0, 30.0])
    cameras = orbit_cameras(base, centre, 12, degrees=40.0)
    assert len(cameras) == 12
    np.testing.assert_allclose(cameras[0].centre, base.centre, atol=1e-6)
    distance = np.linalg.norm(base.centre - centre)
    up = -base.R[1]
    angles = []
    for camera in cameras:
        uv, z = project(torch.tensor(centre), camera)
        np.testing.assert_allclose(uv.numpy(), camera.K[:2, 2], atol=1e-6)  # on the optical axis
        assert float(z) == pytest.approx(distance)
        np.testing.assert_array_equal(camera.K, base.K)
        assert (camera.height, camera.width) == (base.height, base.width)
        offset, start = camera.centre - centre, base.centre - centre
        assert np.dot(offset, up) == pytest.approx(np.dot(start, up))  # a yaw about the vertical axis
        flat = [v - np.dot(v, up) * up for v in (start, offset)]
        angles.append(np.degrees(np.arctan2(np.dot(np.cross(flat[0], flat[1]), up), np.dot(*flat))))
    # one sine period of +-40 degrees: smooth, and back to the start at the end
    np.testing.assert_allclose(angles, 40.0 * np.sin(2 * np.pi * np.arange(12) / 12), atol=1e-6)


def test_rotation_about_matches_the_matrix_exponential():
    rng = np.random.default_rng(3)
    axis = rng.normal(size=3)
    angle = 0.7
    unit = axis / np.linalg.norm(axis)
    cross = torch.tensor([[0, -unit[2], unit[1]], [unit[2], 0, -unit[0]], [-unit[1], unit[0], 0]])
    np.testing.assert_allclose(
        rotation_about(axis, angle), torch.matrix_exp(angle * cross).numpy(), atol=1e-12
    )


def test_even_frame_pads_odd_sizes_with_the_fill_colour():
    image = np.full((5, 7, 3), 9, np.uint8)
    padded = even_frame(image, np.array([1, 2, 3], np.uint8))
    assert padded.shape == (6, 8, 3)
    np.testing.assert_array_equal(padded[:5, :7], image)
    assert (padded[5] == (1, 2, 3)).all() and (padded[:, 7] == (1, 2, 3)).all()
    assert even_frame(padded, np.zeros(3, np.uint8)).shape == (6, 8, 3)


def mirror_subject(subject: Path, out: Path, without_photos: tuple[str, str]) -> Path:
    """`subject` seen through symbolic links, less the photos of one (seq, frame)."""
    out.mkdir()
    for entry in subject.iterdir():
        if entry.name != "images":
            (out / entry.name).symlink_to(entry)
    seq, frame = without_photos
    for photo in (subject / "images").rglob("*.png"):
        relative = photo.relative_to(subject)
        if relative.parts[1] == seq and photo.stem == frame:
            continue
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        (out / relative).symlink_to(photo)
    return out


def write_sine_wav(path: Path, seconds: float, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = [round(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(round(seconds * rate))]
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(struct.pack(f"<{len(samples)}h", *samples))


def test_orbit_video_with_audio_and_a_frame_without_photos(
    tiny_checkpoint, gendir, tiny_subject, frames, tmp_path
):
    subject = mirror_subject(tiny_subject, tmp_path / "subject", without_photos=frames[0])
    seq = frames[0][0]
    (subject / "audio").unlink(missing_ok=True)
    write_sine_wav(subject / "audio" / f"{seq}.wav", seconds=2.0)
    ctx = open_checkpoint(tiny_checkpoint, subject=subject, gendir=gendir)
    fps = 10
    path = make_video(
        ctx, frames_file(tmp_path, frames), tmp_path / "orbit.mp4", orbit=True, fps=fps, progress=False
    )
    images, kinds = decoded(path)
    assert kinds == ["video", "audio"]
    assert len(images) == len(frames)
    with av.open(str(path)) as container:
        audio = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(audio))
    assert samples / audio.rate == pytest.approx(len(frames) / fps, abs=0.15)  # cut at the video's end


def frames_file(folder: Path, frames: list[tuple[str, str]]) -> Path:
    path = folder / "frames.txt"
    write_frame_list(path, frames)
    return path


def test_cli_writes_the_run_video_by_default_from_the_default_camera(
    tiny_checkpoint, tiny_subject, gendir, frame_list, frames, tmp_path, capsys
):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, run / "checkpoints" / tiny_checkpoint.name)
    args = ["video", str(run), "--img-list", str(frame_list), "--subject", str(tiny_subject)]
    assert main([*args, "--gendir", str(gendir), "--fps", "12", "--no-progress"]) == 0
    expected = run / "video" / f"{frames[0][0]}.mp4"
    assert str(expected) in capsys.readouterr().out
    images, kinds = decoded(expected)
    ctx = open_checkpoint(run, subject=tiny_subject, gendir=gendir)
    camera = ctx.prepared.view_camera(default_camera(list(read_krt(ctx.layout.krt))), frames)
    assert camera.name == "400029"
    assert kinds == ["video"]
    assert len(images) == len(frames)
    assert images[0].shape == (camera.height + camera.height % 2, camera.width + camera.width % 2, 3)


def test_cli_bad_checkpoint_or_camera_exits_3_naming_it(
    tiny_checkpoint, tiny_subject, gendir, frame_list, tmp_path, capsys
):
    missing = tmp_path / "gone.pt"
    assert main(["video", str(missing), "--img-list", str(frame_list)]) == 3
    assert str(missing) in capsys.readouterr().err
    args = ["video", str(tiny_checkpoint), "--img-list", str(frame_list), "--subject", str(tiny_subject)]
    assert main([*args, "--gendir", str(gendir), "--camera", "999999", "--out", str(tmp_path / "v.mp4")]) == 3
    assert "999999" in capsys.readouterr().err
    assert not (tmp_path / "v.mp4").exists()
