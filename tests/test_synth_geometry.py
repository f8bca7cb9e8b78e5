"""The parametric head of the synthetic subject: grid topology, UV layout, mouth opening, parts, and
the view-averaged texture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npva.geometry.camera import project
from npva.geometry.mesh import vertex_normals
from npva.synth.capture import TEXTURE_VIEW_ANGLE_DEG, SyntheticCapture
from npva.synth.frames import torch_threads
from npva.synth.grid import SEAM_PHI, ParamGrid
from npva.synth.head import Expression, HeadIdentity, HeadShape
from npva.synth.parts import CAVITY, SKIN, TEETH, TONGUE
from npva.synth.render import FACE_VIEW_CENTRE, face_camera
from npva.synth.scene import frontal_directions, get_preset

OPEN = Expression(jaw=0.3)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def capture() -> SyntheticCapture:
    return SyntheticCapture(get_preset("tiny"), seed=3)


def _boundary_loops(faces: np.ndarray) -> list[set[int]]:
    """Vertex sets of the loops formed by edges used by one face only."""
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    assert counts.max() <= 2, "an edge is shared by more than two faces"
    loops: list[set[int]] = []
    for a, b in unique[counts == 1]:
        touching = [loop for loop in loops if a in loop or b in loop]
        merged = {int(a), int(b)}.union(*touching)
        loops = [loop for loop in loops if loop not in touching] + [merged]
    return loops


def test_coarse_grid_is_closed_but_at_the_neck():
    grid = ParamGrid.coarse()
    loops = _boundary_loops(grid.faces())
    assert len(loops) == 1 and len(loops[0]) == grid.cols
    assert grid.num_grid_verts == grid.cols * grid.rows + 1


def test_fine_grid_has_a_mouth_slit(capture):
    grid = capture.fine_grid
    loops = sorted(_boundary_loops(capture.fine_faces), key=len)
    assert len(loops) == 2  # the lips and the neck
    lips = np.array(sorted(loops[0]))
    seam_row = np.arange((grid.seam_row - 1) * grid.cols, grid.seam_row * grid.cols)
    duplicates = np.arange(grid.num_grid_verts, len(capture.fine.side))
    assert set(lips) <= set(seam_row) | set(duplicates) and set(duplicates) <= set(lips)


def test_uv_layout_matches_grid_coordinates():
    grid = ParamGrid.coarse()
    u, s = grid.vertex_params()
    uvs, face_uvs = grid.uv_layout()
    faces = grid.faces()
    corner_uv = uvs[face_uvs]  # (F, 3, 2)
    corner_param = np.stack((u[faces], 1.0 - s[faces]), -1)
    quads = faces.max(1) != grid.num_grid_verts - 1  # the pole fan has one texel per column
    # The last column repeats the first at u = 1 instead of 0.
    diff = corner_uv[quads] - corner_param[quads]
    diff[..., 0] = np.where(np.isclose(diff[..., 0], 1.0), 0.0, diff[..., 0])
    assert np.abs(diff).max() < 1e-6
    # Every UV triangle has positive area: counter-clockwise, no overlaps from the seam.
    e1, e2 = corner_uv[:, 1] - corner_uv[:, 0], corner_uv[:, 2] - corner_uv[:, 0]
    assert (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0] > 0).all()


def test_surface_normals_point_outwards(capture):
    verts = capture.coarse.at(Expression())
    normals = vertex_normals(torch.from_numpy(verts), torch.from_numpy(capture.coarse_faces)).numpy()
    radial = verts / np.linalg.norm(verts, axis=1, keepdims=True)
    assert ((normals * radial).sum(1) > 0).mean() > 0.97


def test_jaw_opens_only_the_fine_surface(capture):
    """Coarse vertices are fine vertices; with the jaw open they agree except on the lip seam, where
    the coarse membrane sits between the parted lips of the fine surface."""
    factor = capture.preset.fine_factor
    coarse_grid, fine_grid = capture.coarse_grid, capture.fine_grid
    k, j = np.meshgrid(np.arange(1, coarse_grid.rows + 1), np.arange(coarse_grid.cols), indexing="ij")
    matching = np.append(
        ((k * factor - 1) * fine_grid.cols + j * factor).ravel(), fine_grid.num_grid_verts - 1
    )
    coarse, fine = capture.coarse.at(OPEN), capture.fine.at(OPEN)
    gap = np.linalg.norm(coarse - fine[matching], axis=1)
    on_seam = np.zeros(len(coarse), dtype=bool)
    on_seam[(coarse_grid.seam_row - 1) * coarse_grid.cols : coarse_grid.seam_row * coarse_grid.cols] = True
    assert gap[~on_seam].max() < 1e-9
    assert gap[on_seam].max() > 10.0
    upper = fine[: fine_grid.num_grid_verts][capture.fine.side[: fine_grid.num_grid_verts] < 0]
    lower = fine[fine_grid.num_grid_verts :]
    assert np.linalg.norm(upper - lower, axis=1).max() > 20.0  # the lips part by centimetres
    closed = capture.fine.at(Expression())
    np.testing.assert_allclose(
        closed[: fine_grid.num_grid_verts][capture.fine.side[: fine_grid.num_grid_verts] < 0],
        closed[fine_grid.num_grid_verts :],
    )


def test_jaw_weight_splits_at_the_seam():
    shape = HeadShape(HeadIdentity())
    sides = np.array([-1.0, 0.0, 1.0])  # upper lip, coarse membrane, lower lip
    lips = shape.identity_points(np.zeros(3), np.full(3, SEAM_PHI))
    middle = shape.jaw_weight(lips, np.zeros(3), np.full(3, SEAM_PHI), sides)
    np.testing.assert_allclose(middle, [0.0, 0.5, 1.0], atol=1e-9)
    corners = shape.identity_points(np.full(3, 0.5), np.full(3, SEAM_PHI))
    beyond_corner = shape.jaw_weight(corners, np.full(3, 0.5), np.full(3, SEAM_PHI), sides)
    np.testing.assert_allclose(beyond_corner, beyond_corner[1])


def test_parts_sit_inside_the_closed_head(capture):
    """With the mouth closed, teeth, cavity and tongue are behind the skin: rays from a frontal camera
    reach them only through the open mouth."""
    camera = capture.cameras["400029"]
    for expr, expect_inside_visible in ((Expression(), False), (OPEN, True)):
        scene = capture.scene(expr, (np.eye(3), np.zeros(3)))
        view = capture.render(scene, camera)
        interior = np.isin(view.material_ss, (TEETH, TONGUE, CAVITY))
        assert interior.any() == expect_inside_visible
        assert (view.material_ss == SKIN).mean() > 0.1


# ---- the view-averaged texture ----------------------------------------------------------------------


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
    views = capture.face_views(pose, scene)
    assert len(views) == len(frontal_directions(TEXTURE_VIEW_ANGLE_DEG))
    single = np.stack([capture.texture.render(OPEN, pose, mesh, [view]) for view in views])
    averaged = capture.average_texture(OPEN, pose, scene, capture.tracked_mesh(OPEN, pose))
    np.testing.assert_allclose(averaged, single.mean(0), atol=1e-6)

    spread = single.max(0) - single.min(0)  # (S, S, 3)
    differs = spread.max(-1) > 0.05
    assert 0 < differs.sum() < 0.05 * differs.size  # only texels near the openings depend on the views
    head_on = single[0]
    assert np.abs(averaged - head_on)[differs].max() > 0.1
