"""Rasterizer tests against closed-form answers, a plain per-triangle reference, and (gpu) CUDA vs CPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from npva.geometry.camera import Camera, project
from npva.geometry.mesh import uv_position_map, uv_sphere
from npva.geometry.raster import interpolate, rasterize, rasterize_camera, rasterize_uv

QUAD = torch.tensor([[0, 1, 2], [0, 2, 3]])


def camera(height: int, width: int, focal: float = 100.0) -> Camera:
    """A camera at the world origin looking along +z (world frame = camera frame)."""
    K = np.array([[focal, 0, width / 2 + 0.23], [0, focal, height / 2 - 0.17], [0, 0, 1]])
    return Camera("c", K, np.eye(3), np.zeros(3), height=height, width=width)


def ray_directions(cam: Camera) -> torch.Tensor:
    """(H, W, 3) float64 rays K^-1 [x + 0.5, y + 0.5, 1] (z component 1) through the pixel centres."""
    ys, xs = torch.meshgrid(
        torch.arange(cam.height, dtype=torch.float64) + 0.5,
        torch.arange(cam.width, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    pixels = torch.stack((xs, ys, torch.ones_like(xs)), -1)
    return pixels @ torch.as_tensor(np.linalg.inv(cam.K)).T


def reference_front_faces(verts: torch.Tensor, faces: torch.Tensor, height: int, width: int):
    """Plain z-buffer: one triangle at a time over every pixel, float64, perspective depth."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64) + 0.5,
        torch.arange(width, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    best_depth = torch.full((height, width), math.inf, dtype=torch.float64)
    best_face = torch.full((height, width), -1, dtype=torch.int64)
    for f, (i, j, k) in enumerate(faces.tolist()):
        (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = verts[[i, j, k]].double().tolist()
        area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
        if area == 0 or min(z0, z1, z2) <= 0:
            continue
        l0 = ((x2 - x1) * (ys - y1) - (y2 - y1) * (xs - x1)) / area
        l1 = ((x0 - x2) * (ys - y2) - (y0 - y2) * (xs - x2)) / area
        l2 = 1 - l0 - l1
        inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
        depth = 1 / (l0 / z0 + l1 / z1 + l2 / z2)
        nearer = inside & (depth < best_depth)
        best_depth[nearer], best_face[nearer] = depth[nearer], f
    return best_face


def test_fronto_parallel_plane_has_its_depth_and_projected_outline():
    cam = camera(40, 50)
    depth = 250.0
    corners = torch.tensor([[-30.3, -25.1], [40.7, -25.1], [40.7, 33.9], [-30.3, 33.9]])
    verts = torch.cat((corners, torch.full((4, 1), depth)), 1)
    frags = rasterize_camera(verts, QUAD, cam)
    # The outline projects to x in [fx X0 / Z + cx, fx X1 / Z + cx], likewise y.
    x_lo, x_hi = (100 * corners[[0, 1], 0] / depth + cam.K[0, 2]).tolist()
    y_lo, y_hi = (100 * corners[[0, 2], 1] / depth + cam.K[1, 2]).tolist()
    ys, xs = torch.meshgrid(torch.arange(40) + 0.5, torch.arange(50) + 0.5, indexing="ij")
    expected = (xs > x_lo) & (xs < x_hi) & (ys > y_lo) & (ys < y_hi)
    covered = frags.face_id >= 0
    assert torch.equal(covered, expected)
    assert torch.allclose(frags.depth[covered], torch.tensor(depth))
    assert (frags.depth[~covered] == 0).all() and (frags.bary[~covered] == 0).all()


def test_tilted_plane_depth_and_attributes_are_perspective_correct():
    cam = camera(48, 64)
    # A quad on the plane z = 300 + 0.8 x + 0.5 y, whose corners lie at very different depths.
    xy = torch.tensor([[-150.0, -110.0], [150.0, -110.0], [150.0, 110.0], [-150.0, 110.0]])
    z = 300 + 0.8 * xy[:, 0] + 0.5 * xy[:, 1]
    verts = torch.cat((xy, z[:, None]), 1).double()
    frags = rasterize_camera(verts, QUAD, cam)
    covered = frags.face_id >= 0
    assert covered.sum() > 1000
    # Ray X = s d with d_z = 1 meets the plane where s (1 - 0.8 d_x - 0.5 d_y) = 300; depth is s.
    rays = ray_directions(cam)
    analytic = 300 / (1 - 0.8 * rays[..., 0] - 0.5 * rays[..., 1])
    assert torch.allclose(frags.depth[covered], analytic[covered], rtol=1e-9)
    points = interpolate(verts, QUAD, frags)  # the 3-D point seen at each pixel
    assert torch.allclose(points[covered], (analytic[..., None] * rays)[covered], rtol=1e-9)
    # The test can tell: depth blended linearly in screen space is far off.
    pixels, depths = project(verts, cam)
    linear = rasterize(torch.cat((pixels, depths[:, None]), 1), QUAD, 48, 64, perspective=False)
    assert (linear.depth - analytic)[covered].abs().max() > 1.0


def test_sphere_depth_matches_ray_sphere_intersection_and_silhouette_area():
    cam = camera(96, 96, focal=120.0)
    radius, distance, rings = 100.0, 400.0, 48
    mesh = uv_sphere(rings, 2 * rings, radius)
    verts = torch.as_tensor(mesh.verts, dtype=torch.float64) + torch.tensor([0.0, 0.0, distance])
    frags = rasterize_camera(verts, torch.as_tensor(mesh.faces), cam)
    covered = frags.face_id >= 0
    # |s d - c|^2 = r^2 -> nearest root s, the depth since d_z = 1.
    rays, centre = ray_directions(cam), verts.mean(0)
    a = (rays * rays).sum(-1)
    b = (rays * centre).sum(-1)
    disc = b * b - a * (centre @ centre - radius**2)
    hit = disc > 0
    analytic = (b - disc.clamp(min=0).sqrt()) / a
    # The inscribed mesh lies inside the sphere, at most r (1 - cos(pi / rings)) below it.
    sag = radius * (1 - math.cos(math.pi / rings))
    inner = hit & (disc > 0.2 * a * radius**2)  # away from grazing rays at the silhouette
    error = frags.depth[inner] - analytic[inner]
    assert covered[inner].all()
    assert error.min() > -1e-6 and error.max() < 2 * sag
    assert not (covered & ~hit).any()
    # The silhouette is a disc of radius f tan(asin(r / distance)) about the principal point.
    disc_radius = 120 * radius / math.sqrt(distance**2 - radius**2)
    assert covered.sum().item() == pytest.approx(math.pi * disc_radius**2, rel=0.02)


def test_zbuffer_keeps_the_nearer_of_overlapping_triangles():
    near = [[2.0, 2.0, 5.0], [30.0, 3.0, 5.0], [5.0, 30.0, 5.0]]
    far = [[0.0, 0.0, 9.0], [32.0, 0.0, 9.0], [0.0, 32.0, 9.0]]
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    for first, second, nearer_id in ((near, far, 0), (far, near, 1)):
        frags = rasterize(torch.tensor(first + second), faces, 32, 32)
        inside_near = rasterize(torch.tensor(near), faces[:1], 32, 32).face_id >= 0
        assert (frags.face_id[inside_near] == nearer_id).all()
        assert (frags.face_id[~inside_near & (frags.face_id >= 0)] == 1 - nearer_id).all()
        assert torch.allclose(frags.depth[inside_near], torch.tensor(5.0))


def test_zbuffer_switches_at_the_intersection_of_crossing_triangles():
    # Orthographic depth 10 + x / 4 against a wall at 14: the ramp is nearer where x < 16.
    ramp = [[0.0, 0.0, 10.0], [64.0, 0.0, 26.0], [0.0, 64.0, 10.0], [64.0, 64.0, 26.0]]
    wall = [[0.0, 0.0, 14.0], [64.0, 0.0, 14.0], [0.0, 64.0, 14.0], [64.0, 64.0, 14.0]]
    verts = torch.tensor(ramp + wall, dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [1, 3, 2], [4, 5, 6], [5, 7, 6]])
    frags = rasterize(verts, faces, 64, 64, perspective=False)
    columns = torch.arange(64) + 0.5
    ramp_wins = (frags.face_id < 2).all(0)
    assert torch.equal(ramp_wins, columns < 16)


def test_planar_mesh_covers_every_pixel_exactly_once():
    """No cracks and no double coverage between adjacent triangles, for either winding."""
    generator = torch.Generator().manual_seed(0)
    n = 7  # (n + 1)^2 grid vertices spanning [2, 42] x [3, 43], interior ones jittered
    grid = torch.stack(torch.meshgrid(torch.arange(n + 1.0), torch.arange(n + 1.0), indexing="xy"), -1)
    xy = torch.tensor([2.0, 3.0]) + grid * 40 / n  # xy[row, col]
    interior = (grid > 0).all(-1) & (grid < n).all(-1)
    jitter = (torch.rand(xy.shape, generator=generator) - 0.5) * 2
    xy = torch.where(interior[..., None], xy + jitter, xy)
    # Vertices on pixel centres, joined by a horizontal and a vertical edge through rows of centres.
    xy[2, 3] = torch.tensor([19.5, 14.5])
    xy[4, 4] = torch.tensor([24.5, 25.5])
    xy[4, 5] = torch.tensor([30.5, 25.5])
    xy[5, 4] = torch.tensor([24.5, 31.5])
    verts = torch.cat((xy.reshape(-1, 2), torch.full(((n + 1) ** 2, 1), 7.0)), 1)
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    a = (i * (n + 1) + j).reshape(-1)
    b, c, d = a + 1, a + n + 1, a + n + 2
    faces = torch.cat((torch.stack((a, b, d), 1), torch.stack((a, d, c), 1)))
    flip = torch.rand(len(faces), generator=generator) < 0.5
    faces[flip] = faces[flip].flip(1)
    counts = sum((rasterize(verts, faces[f : f + 1], 48, 48).face_id >= 0).int() for f in range(len(faces)))
    ys, xs = torch.meshgrid(torch.arange(48) + 0.5, torch.arange(48) + 0.5, indexing="ij")
    inside = (xs > 2) & (xs < 42) & (ys > 3) & (ys < 43)
    assert (counts[inside] == 1).all() and (counts[~inside] == 0).all()
    assert torch.equal(rasterize(verts, faces, 48, 48).face_id >= 0, inside)


def test_matches_plain_reference_on_random_triangles_in_any_chunking():
    generator = torch.Generator().manual_seed(1)
    height, width, num_faces = 40, 56, 60
    centres = torch.rand(num_faces, 1, 2, generator=generator) * torch.tensor([width, height])
    spread = torch.randn(num_faces, 3, 2, generator=generator) * 8
    depth = 5 + 20 * torch.rand(num_faces, 3, 1, generator=generator)
    verts = torch.cat((centres + spread, depth), -1).reshape(-1, 3).double()
    faces = torch.arange(3 * num_faces).reshape(-1, 3)
    expected = reference_front_faces(verts, faces, height, width)
    assert (expected >= 0).sum() > 500
    for chunk in (97, 1 << 21):
        frags = rasterize(verts, faces, height, width, chunk_size=chunk)
        assert torch.equal(frags.face_id, expected)
    assert torch.equal(rasterize(verts.float(), faces, height, width).face_id, expected)


def test_matches_plain_reference_on_large_and_sliver_triangles():
    generator = torch.Generator().manual_seed(2)
    height, width = 36, 52
    large = (torch.rand(12, 3, 2, generator=generator) - 0.5) * 400 + torch.tensor([26.0, 18.0])
    # Slivers: long edges a hair off horizontal or vertical.
    start = torch.rand(16, 1, 2, generator=generator) * torch.tensor([width, height])
    along = torch.tensor([[[60.0, 1e-3], [-45.0, 0.9]], [[2e-4, 50.0], [0.9, -40.0]]]).repeat(8, 1, 1)
    slivers = torch.cat((start, start + along), dim=1)
    xy = torch.cat((large, slivers))
    depth = (
        torch.rand(len(xy), 3, 1, generator=generator) + torch.tensor([3.0] * 12 + [1.0] * 16)[:, None, None]
    )
    verts = torch.cat((xy, depth), -1).reshape(-1, 3)
    faces = torch.arange(len(verts)).reshape(-1, 3)
    expected = reference_front_faces(verts, faces, height, width)
    assert (torch.unique(expected) >= 12).sum() >= 8  # slivers in front, seen
    assert torch.equal(rasterize(verts, faces, height, width).face_id, expected)


def test_quad_covering_the_image_in_small_chunks():
    verts = torch.tensor([[-5.0, -7.0, 3.0], [70.0, -7.0, 3.0], [70.0, 50.0, 3.0], [-5.0, 50.0, 3.0]])
    frags = rasterize(verts, QUAD, 48, 64, chunk_size=256)
    assert (frags.face_id >= 0).all()
    assert torch.equal(frags.face_id, rasterize(verts, QUAD, 48, 64).face_id)


def test_ties_go_to_the_lower_face_id_in_any_order():
    tri = [[1.0, 1.0, 4.0], [20.0, 2.0, 4.0], [3.0, 18.0, 4.0]]
    verts = torch.tensor(tri + tri)
    for faces in (torch.tensor([[0, 1, 2], [3, 4, 5]]), torch.tensor([[3, 4, 5], [0, 2, 1]])):
        frags = rasterize(verts, faces, 24, 24)
        covered = frags.face_id >= 0
        assert covered.any() and (frags.face_id[covered] == 0).all()


def test_degenerate_faces_near_faces_and_empty_meshes_are_skipped():
    verts = torch.tensor(
        [[1.0, 1.0, 5.0], [9.0, 9.0, 5.0], [17.0, 17.0, 5.0], [2.0, 3.0, 5.0], [20.0, 4.0, -1.0]]
    )
    # Collinear, a repeated vertex, and a face with a vertex behind z = 0.
    faces = torch.tensor([[0, 1, 2], [0, 0, 3], [0, 3, 4]])
    frags = rasterize(verts, faces, 20, 20)
    assert (frags.face_id == -1).all() and torch.isfinite(frags.bary).all()
    empty = rasterize(verts, torch.zeros((0, 3), dtype=torch.int64), 20, 20)
    assert (empty.face_id == -1).all() and (empty.depth == 0).all()


def test_rasterize_camera_culls_near_faces_and_optionally_back_faces():
    cam = camera(32, 32)
    verts = torch.tensor([[-50.0, -50.0, 100.0], [50.0, -50.0, 100.0], [0.0, 50.0, 100.0], [0.0, 0.0, 0.5]])
    # Face 1 has a vertex 0.5 mm in front of the camera: culled by the 1 mm near limit.
    frags = rasterize_camera(verts, torch.tensor([[0, 1, 3], [0, 2, 1]]), cam)
    assert (frags.face_id != 0).all() and (frags.face_id == 1).any()
    # (0, 2, 1) has normal (0, 0, -1) by the right-hand rule: it faces the camera.
    toward, away = torch.tensor([[0, 2, 1]]), torch.tensor([[0, 1, 2]])
    assert (rasterize_camera(verts, toward, cam, cull_backfaces=True).face_id == 0).any()
    assert (rasterize_camera(verts, away, cam, cull_backfaces=True).face_id == -1).all()
    assert (rasterize_camera(verts, away, cam).face_id == 0).any()


def test_rasterize_camera_scales_intrinsics_to_the_requested_size():
    cam = camera(40, 60)
    verts = torch.tensor([[-20.0, -15.0, 200.0], [25.0, -15.0, 200.0], [0.0, 30.0, 200.0]])
    full = rasterize_camera(verts, QUAD[:1], cam).face_id >= 0
    half = rasterize_camera(verts, QUAD[:1], cam, 20, 30).face_id >= 0
    assert half.shape == (20, 30)
    assert half.sum().item() == pytest.approx(full.sum().item() / 4, rel=0.15)


def test_rasterize_uv_uses_texel_centres_with_row_zero_at_v_one():
    size = 16
    uvs = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # the lower-left half: u + v < 1
    frags = rasterize_uv(uvs, torch.tensor([[0, 1, 2]]), size)
    i, j = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    u, v = (j + 0.5) / size, 1 - (i + 0.5) / size
    assert torch.equal(frags.face_id >= 0, u + v < 1)
    assert frags.face_id[-1, 0] == 0 and frags.face_id[0, -1] == -1


@pytest.mark.parametrize("perspective", [True, False])
def test_gradients_of_interpolation_and_depth(perspective):
    verts = torch.tensor(
        [[1.3, 0.7, 4.0], [8.6, 1.9, 6.0], [2.2, 7.4, 5.0], [9.1, 8.3, 3.5]], dtype=torch.float64
    )
    attrs = torch.rand(4, 2, dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])

    def render(verts, attrs):
        frags = rasterize(verts, faces, 9, 10, perspective=perspective)
        return interpolate(attrs, faces, frags), frags.depth

    torch.autograd.gradcheck(render, (verts.requires_grad_(), attrs.requires_grad_()))


def test_gradients_reach_world_vertices_through_the_camera():
    cam = camera(12, 12, focal=20.0)
    verts = torch.tensor([[-30.0, -25.0, 80.0], [35.0, -20.0, 95.0], [-5.0, 40.0, 70.0]], dtype=torch.float64)
    torch.autograd.gradcheck(lambda v: rasterize_camera(v, QUAD[:1], cam).depth, (verts.requires_grad_(),))


def test_rasterization_is_deterministic():
    mesh = uv_sphere(12, 24, 50.0)
    verts = torch.as_tensor(mesh.verts) + torch.tensor([0.0, 0.0, 150.0])
    runs = [rasterize_camera(verts, torch.as_tensor(mesh.faces), camera(32, 32)) for _ in range(2)]
    assert torch.equal(runs[0].face_id, runs[1].face_id)
    assert torch.equal(runs[0].bary, runs[1].bary)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    mesh = uv_sphere(64, 128, 100.0)
    faces = torch.as_tensor(mesh.faces)
    cam = camera(256, 200, focal=300.0)
    verts = torch.as_tensor(mesh.verts) + torch.tensor([10.0, -5.0, 400.0])
    results = {}
    for device in ("cpu", "cuda"):
        v = verts.to(device).clone().requires_grad_()
        frags = rasterize_camera(v, faces.to(device), cam)
        colour = interpolate(v, faces.to(device), frags)
        (colour.sum() + frags.depth.sum()).backward()
        pos, mask = uv_position_map(v.detach(), faces, mesh.uvs, mesh.face_uvs, 128)
        results[device] = [
            t.detach().cpu() for t in (frags.face_id, frags.bary, frags.depth, colour, v.grad, pos, mask)
        ]
    cpu, cuda = results["cpu"], results["cuda"]
    assert (cpu[0] != cuda[0]).float().mean() < 1e-4  # exact up to rounding at edges
    same = cpu[0] == cuda[0]
    for a, b in zip(cpu[1:4], cuda[1:4], strict=True):
        assert torch.allclose(a[same], b[same], rtol=1e-5, atol=1e-4)
    assert torch.allclose(cpu[4], cuda[4], rtol=1e-3, atol=1e-2)
    assert torch.equal(cpu[6], cuda[6])
    assert torch.allclose(cpu[5], cuda[5], atol=1e-3)


def test_coverage_mask_is_the_zbuffer_coverage_plus_at_most_a_one_pixel_rim():
    import cv2

    from npva.geometry.raster import coverage_mask

    generator = torch.Generator().manual_seed(3)
    cam = camera(120, 80, focal=150.0)
    for trial in range(3):
        mesh = uv_sphere(10 + 4 * trial, 20 + 6 * trial, 60.0)
        wobble = 1 + 0.15 * torch.rand(len(mesh.verts), 1, generator=generator, dtype=torch.float64)
        verts = torch.as_tensor(mesh.verts, dtype=torch.float64) * wobble + torch.tensor([5.0, -8.0, 300.0])
        reference = (rasterize_camera(verts, torch.as_tensor(mesh.faces), cam).face_id >= 0).numpy()
        fast = coverage_mask(verts, torch.as_tensor(mesh.faces), cam)
        assert fast.shape == reference.shape and reference.sum() > 1000
        assert not (reference & ~fast).any()  # every covered pixel is in the fast mask
        rim = cv2.dilate(reference.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        assert not (fast & ~rim).any()  # and nothing beyond one pixel of the silhouette
