"""The synthetic view-averaged texture: face cameras around the head and the mean over their views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npva.geometry.camera import project
from npva.synth.capture import TEXTURE_VIEW_ANGLE_DEG, SyntheticCapture
from npva.synth.frames import torch_threads
from npva.synth.head import Expression
from npva.synth.render import FACE_VIEW_CENTRE, face_camera, render_view
from npva.synth.scene import frontal_directions, get_preset

OPEN = Expression(jaw=0.3)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def capture() -> SyntheticCapture:
    return SyntheticCapture(get_preset("tiny"), seed=3)


def test_texture_views_are_the_dome_cameras_facing_the_head():
    views = frontal_directions(TEXTURE_VIEW_ANGLE_DEG)
    # Ring 0 at azimuth 0, +-15, +-30 and the rings at +-17 degrees at azimuth +-8, +-24.
    assert len(views) == 13 and (0.0, 0.0) in views
    assert sorted(az for el, az in views if el == 0.0) == [-30.0, -15.0, 0.0, 15.0, 30.0]
    cosines = [np.cos(np.deg2rad(el)) * np.cos(np.deg2rad(az)) for el, az in views]
    assert min(cosines) >= np.cos(np.deg2rad(TEXTURE_VIEW_ANGLE_DEG)) - 1e-9
    assert frontal_directions(1.0) == ((0.0, 0.0),)
    assert set(views) < set(frontal_directions(45.0))


@pytest.mark.parametrize("elevation, azimuth", [(0.0, 0.0), (17.0, -24.0), (-17.0, 8.0)])
def test_face_camera_sees_the_face_from_its_direction(elevation, azimuth):
    yaw = np.deg2rad(10.0)
    R = np.array([[np.cos(yaw), 0.0, np.sin(yaw)], [0.0, 1.0, 0.0], [-np.sin(yaw), 0.0, np.cos(yaw)]])
    t = np.array([5.0, -3.0, 2.0])
    camera = face_camera((R, t), 128, elevation, azimuth)
    el, az = np.deg2rad(elevation), np.deg2rad(azimuth)
    direction = np.array([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)])
    np.testing.assert_allclose(camera.centre, R @ (FACE_VIEW_CENTRE + 600.0 * direction) + t, atol=1e-9)
    pixel, depth = project(torch.from_numpy(R @ FACE_VIEW_CENTRE + t)[None], camera)
    np.testing.assert_allclose(pixel[0].numpy(), [64.0, 64.0], atol=1e-6)
    np.testing.assert_allclose(depth.numpy(), [600.0], atol=1e-6)


def test_texture_is_the_mean_of_its_views_and_blurs_the_open_mouth(capture):
    """Skin texels keep their shaded albedo whatever the views; texels over the open mouth take the
    mean of what each view sees through them, so head-on alone is not what the texture holds."""
    pose = (np.eye(3), np.zeros(3))
    scene = capture.scene(OPEN, pose)
    mesh = torch.from_numpy(capture.tracked_mesh(OPEN, pose).verts)
    size = max(128, capture.preset.texture_size // 2)
    views = []
    for elevation, azimuth in frontal_directions(TEXTURE_VIEW_ANGLE_DEG):
        camera = face_camera(pose, size, elevation, azimuth)
        views.append(
            (
                render_view(scene, camera, size, size, 1, capture.skin_texture, capture.look, specular=False),
                camera,
            )
        )
    single = np.stack([capture.texture.render(OPEN, pose, mesh, [view]) for view in views])
    averaged = capture.average_texture(OPEN, pose, scene, capture.tracked_mesh(OPEN, pose))
    np.testing.assert_allclose(averaged, single.mean(0), atol=1e-6)

    spread = single.max(0) - single.min(0)  # (S, S, 3)
    differs = spread.max(-1) > 0.05
    assert 0 < differs.sum() < 0.05 * differs.size  # only texels near the openings depend on the views
    head_on = single[0]
    assert np.abs(averaged - head_on)[differs].max() > 0.1
