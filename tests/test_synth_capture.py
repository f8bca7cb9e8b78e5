"""The capture variant of the synthetic subject: each capture defect is present and measurable, the
subject is fixed by its seed and varies across seeds, and the files keep the Multiface layout."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from npva.cli import main
from npva.errors import NpvaError
from npva.geometry.mesh import to_face_frame
from npva.io import SubjectLayout, read_image, read_obj, read_transform
from npva.synth import write_subject
from npva.synth.capture import SyntheticCapture, unwrap_cameras
from npva.synth.frames import FrameTask, FrameWriter, torch_threads
from npva.synth.parts import CLOTH, HAIR, SKIN
from npva.synth.render import render_view
from npva.synth.scene import CAMERA_NAMES, FrameKey, capture_frames, dome_camera, get_preset
from npva.synth.sheet import TEXTURE
from npva.synth.variant import get_variant

TINY = get_preset("tiny")
CAPTURE = get_variant("capture")
FRAMES = capture_frames(TINY)
NEUTRAL = FRAMES[0]
JAW_OPEN = [key for key in FRAMES if "_Jaw_Open" in key.sequence][-1]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def capture() -> SyntheticCapture:
    return SyntheticCapture(TINY, seed=2, variant="capture")


def _face_frame(mesh_verts: np.ndarray, pose: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return to_face_frame(mesh_verts.astype(np.float64), *pose)


def _photos(capture: SyntheticCapture, key: FrameKey) -> list[tuple[np.ndarray, object]]:
    scene = capture.scene(capture.expression(key), capture.pose(key))
    photos = []
    for name in unwrap_cameras():
        camera = dome_camera(name, TINY.texture_size, 83)
        photos.append((capture.photo(capture.render(scene, camera).image, key, name), camera))
    return photos


def test_tracked_mesh_lies_1_to_2_mm_off_the_true_surface(capture):
    """On a neutral frame, the tracked vertices lie 1-2 mm (mean) from the true surface at their grid
    points, the clean variant's exactly on it."""
    pose = capture.pose(NEUTRAL)
    truth = capture.coarse.at(capture.expression(NEUTRAL))
    tracked = _face_frame(capture.tracker_output(NEUTRAL).verts, pose)
    distance = np.linalg.norm(tracked - truth, axis=1)
    assert 1.0 <= distance.mean() <= 2.3 and distance.max() < 8.0
    clean = SyntheticCapture(TINY, seed=2)
    exact = _face_frame(clean.tracker_output(NEUTRAL).verts, pose)
    np.testing.assert_allclose(exact, clean.coarse.at(clean.expression(NEUTRAL)), atol=1e-3)


def test_mouth_is_under_tracked_and_one_frame_late(capture):
    """The tracked jaw is the variant's share of the jaw one capture frame (a third of a listed
    frame) earlier; on the open-jaw frame the tracked chin is mm off the true one."""
    middle = [key for key in FRAMES if key.sequence == JAW_OPEN.sequence][1]
    lag = 1 / (3 * (TINY.frames - 1))
    earlier = FrameKey(middle.sequence, middle.frame, middle.tau - lag)
    true_now, true_before = capture.expression(middle).jaw, capture.expression(earlier).jaw
    assert true_now > true_before + 0.01  # the jaw moves between the two
    assert capture.tracked_expression(middle).jaw == pytest.approx(CAPTURE.mouth_tracking * true_before)

    pose = capture.pose(JAW_OPEN)
    truth = capture.coarse.at(capture.expression(JAW_OPEN))
    tracked = _face_frame(capture.tracker_output(JAW_OPEN).verts, pose)
    closed = capture.coarse.at(replace(capture.expression(JAW_OPEN), jaw=0.0))
    chin = np.argmax(np.linalg.norm(truth - closed, axis=1))  # the vertex the jaw moves furthest
    assert np.linalg.norm(truth[chin] - closed[chin]) > 15.0
    assert np.linalg.norm(tracked[chin] - truth[chin]) > 4.0


def test_photos_carry_a_gain_per_camera_and_sensor_noise(capture, tmp_path):
    """The written images are the renders times a colour gain of their camera (different between
    cameras) plus noise of the variant's level; the clean variant writes the renders."""
    writer = FrameWriter("tiny", 2, tmp_path, set(), "capture")
    names = ("400029", "400008")
    writer.write(FrameTask(NEUTRAL, names))
    layout = SubjectLayout(tmp_path)
    scene = capture.scene(capture.expression(NEUTRAL), capture.pose(NEUTRAL))
    gains = []
    for name in names:
        render = capture.render(scene, capture.cameras[name]).image
        photo = read_image(layout.image(NEUTRAL.sequence, name, NEUTRAL.frame)) / 255.0
        unclipped = (render > 0.1) & (render < 0.8)
        gain = np.array(
            [
                photo[..., c][unclipped[..., c]].sum() / render[..., c][unclipped[..., c]].sum()
                for c in range(3)
            ]
        )
        residual = (photo - render * gain)[unclipped]
        assert residual.std() == pytest.approx(CAPTURE.noise_sd, rel=0.3)
        np.testing.assert_allclose(gain, capture.camera_gain(name), atol=0.01)
        gains.append(gain)
    assert np.abs(gains[0] - gains[1]).max() > 0.01
    clean = SyntheticCapture(TINY, seed=2)
    image = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    assert clean.photo(image, NEUTRAL, "400029") is image


def test_world_fixed_lights_make_specular_highlights(capture):
    """The subject's own lights (a few) add highlights on the skin of up to about 0.1 or more."""
    assert len(capture.lighting.lights) == CAPTURE.lights
    scene = capture.scene(capture.expression(NEUTRAL), capture.pose(NEUTRAL))
    camera = capture.cameras["400029"]
    lit = capture.render(scene, camera)
    args = (scene, camera, *TINY.image_size, 1, capture.skin_texture, capture.look)
    diffuse = render_view(*args, specular=False, lighting=capture.lighting)
    highlight = (lit.image - diffuse.image).max(-1)[lit.material_ss == SKIN]
    assert highlight.min() >= -1e-6 and np.percentile(highlight, 99) > 0.06


def test_unwrapped_texture_smears_the_mouth_where_the_tracked_mesh_is_wrong(capture):
    """On the open-jaw frame the texture unwrapped through the tracked mesh is far from the analytic
    texture in the mouth; through the exact mesh the same photos give a close one."""
    key = JAW_OPEN
    expr, pose = capture.expression(key), capture.pose(key)
    scene = capture.scene(expr, pose)
    exact = capture.tracked_mesh(expr, pose)
    reference = capture.average_texture(expr, pose, scene, exact)
    photos = _photos(capture, key)
    through_tracked = capture.texture.unwrap(torch.from_numpy(capture.tracker_output(key).verts), photos)
    through_exact = capture.texture.unwrap(torch.from_numpy(exact.verts), photos)
    texture = capture.texture
    mouth = texture.near_openings & (texture.identity[0][:, 1] < -30.0)
    rows, cols = texture.rows[mouth], texture.cols[mouth]

    def psnr(image: np.ndarray) -> float:
        return float(-10 * np.log10(((image[rows, cols] - reference[rows, cols]) ** 2).mean()))

    assert psnr(through_exact) > psnr(through_tracked) + 3.0
    assert psnr(through_exact) > 22.0


def _lift(capture: SyntheticCapture, points: np.ndarray) -> np.ndarray:
    """(N,) mm that face-frame points (N, 3) lie off the scalp (the identity surface) along the radius."""
    radius = np.linalg.norm(points, axis=1)
    theta, phi = np.arctan2(points[:, 0], points[:, 2]), np.arccos(points[:, 1] / radius)
    return radius - np.linalg.norm(capture.shape.identity_points(theta, phi), axis=1)


def test_hair_volume_and_shoulders(capture):
    """The hair surface stands 7-20 mm off the scalp (by +-15 %), flyaway strands further; the
    frontal camera sees clothing along the bottom of the image."""
    volume, strands = capture.hair
    assert volume.material == HAIR and strands.material == HAIR
    volume_lift = _lift(capture, volume.verts[np.unique(volume.faces)])
    assert 7.0 * 0.85 <= volume_lift.max() <= 20.0 * 1.15
    assert _lift(capture, strands.verts).max() > volume_lift.max() + 5.0
    scene = capture.scene(capture.expression(NEUTRAL), capture.pose(NEUTRAL))
    view = capture.render(scene, capture.cameras["400029"])
    assert (view.material_ss[-1] == CLOTH).mean() > 0.9


def test_same_seed_same_subject_and_seeds_vary(capture, tmp_path):
    """A seed fixes every byte of a frame's files; other seeds give other proportions, hair volumes,
    clothing, lights and tracking errors."""
    for name in ("a", "b"):
        FrameWriter("tiny", 2, tmp_path / name, set(), "capture").write(
            FrameTask(JAW_OPEN, (TEXTURE, "400029"))
        )
    digests = [
        {
            p.relative_to(tmp_path / n): hashlib.sha256(p.read_bytes()).digest()
            for p in (tmp_path / n).rglob("*.*")
        }
        for n in ("a", "b")
    ]
    assert digests[0] == digests[1] and len(digests[0]) == 6

    subjects = [SyntheticCapture(TINY, seed, "capture") for seed in range(3)]
    widths = [s.shape.identity.width for s in subjects]
    lifts = [np.linalg.norm(s.hair[0].verts, axis=1).max() for s in subjects]
    cloth = [tuple(s.look.cloth) for s in subjects]
    lights = [s.lighting.lights[0][0].tolist() for s in subjects]
    errors = [np.abs(s.tracking_offset).mean() for s in subjects]
    assert max(widths) - min(widths) > 0.02
    assert len(set(cloth)) == 3 and len({tuple(d) for d in lights}) == 3
    assert max(lifts) - min(lifts) > 1.0 and max(errors) - min(errors) > 0.1


def test_the_dome_layout_adds_cameras_and_keeps_each_cameras_photos(tmp_path):
    """`npva synth --cameras dome`: every camera of the dome, and a camera of the preset photographs
    the subject byte for byte as it does in the preset's layout."""
    assert get_preset("tiny", "dome").cameras == CAMERA_NAMES and len(CAMERA_NAMES) == 38
    assert set(get_preset("tiny").cameras) < set(CAMERA_NAMES)
    for layout in ("preset", "dome"):
        FrameWriter("tiny", 2, tmp_path / layout, set(), "capture", layout).write(
            FrameTask(JAW_OPEN, (TEXTURE, "400029"))
        )
    files = sorted(p.relative_to(tmp_path / "preset") for p in (tmp_path / "preset").rglob("*.*"))
    assert len(files) == 6
    for name in files:
        assert (tmp_path / "preset" / name).read_bytes() == (tmp_path / "dome" / name).read_bytes(), name
    with pytest.raises(NpvaError, match="camera layout"):
        get_preset("tiny", "ring")


@pytest.mark.slow
def test_cli_writes_the_multiface_layout(tiny_subject, tmp_path, capsys):
    """`npva synth --variant capture` writes the same files as the clean subject, which `npva check`
    accepts; the summary names the variant."""
    out = tmp_path / "capture"
    assert main(["synth", "--preset", "tiny", "--seed", "1", "--variant", "capture", "--out", str(out)]) == 0
    assert "variant capture" in capsys.readouterr().out

    def files(root: Path) -> set[Path]:
        return {
            path.relative_to(root)
            for path in root.rglob("*")
            if path.is_file() and path.name != ".npva_synth.json"
        }

    assert files(out) == files(tiny_subject)
    assert main(["check", str(out)]) == 0
    sequence, frame = NEUTRAL.sequence, NEUTRAL.frame
    layout = SubjectLayout(out)
    mesh = read_obj(layout.mesh_obj(sequence, frame))
    clean_mesh = read_obj(SubjectLayout(tiny_subject).mesh_obj(sequence, frame))
    np.testing.assert_array_equal(mesh.faces, clean_mesh.faces)
    np.testing.assert_array_equal(mesh.uvs, clean_mesh.uvs)
    assert read_transform(layout.transform(sequence, frame))[0].shape == (3, 3)
    with pytest.raises(NpvaError, match="unknown synth variant"):
        write_subject(tmp_path / "x", "tiny", 0, variant="studio")


def test_unwrap_reads_photos_for_more_texels_than_opencv_maps_hold():
    """At the demo size the layout has over 32767 texels, more than one OpenCV remap map may hold."""
    demo = SyntheticCapture(get_preset("demo"), seed=0, variant="capture")
    texture = demo.texture
    assert len(texture.rows) > 32767
    key = capture_frames(get_preset("demo"))[0]
    mesh = demo.tracker_output(key)
    grey = np.full((64, 42, 3), 0.25, np.float32)
    grey[:, 21:] = 0.75  # the right half of the photo is lighter
    camera = dome_camera("400029", 64, 42)
    unwrapped = texture.unwrap(torch.from_numpy(mesh.verts), [(grey, camera)])
    assert unwrapped.shape == (texture.size, texture.size, 3)
    values = unwrapped[texture.rows, texture.cols, 0]
    assert (
        np.isclose(values, 0.25, atol=1e-3).sum() > 1000 and np.isclose(values, 0.75, atol=1e-3).sum() > 1000
    )
