"""npva render: rendered images, depth and normal images, arrays, coarse mesh, point cloud."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from npva.cli import main
from npva.eval.loading import evaluation_dataset, open_checkpoint
from npva.eval.render import (
    PLY_VERTEX,
    camera_points,
    coarse_mesh,
    depth_image,
    displacement_image,
    normal_image,
    normal_map,
    render_samples,
    render_view,
    write_ply,
)
from npva.geometry.mesh import to_world, uv_grid_faces
from npva.geometry.raster import rasterize_camera
from npva.io.multiface import read_frame_list, read_image, read_obj, write_frame_list
from npva.model.points import point_texel_mask

CAMERA = "400029"


@pytest.fixture(scope="module")
def ctx(tiny_checkpoint: Path, tiny_subject: Path, gendir: Path):
    return open_checkpoint(tiny_checkpoint, subject=tiny_subject, gendir=gendir)


@pytest.fixture(scope="module")
def two_frames(tiny_subject: Path, tmp_path_factory) -> Path:
    """A list of two held-out frames."""
    path = tmp_path_factory.mktemp("lists") / "two.txt"
    write_frame_list(path, read_frame_list(tiny_subject / "splits" / "test_list.txt")[:2])
    return path


@pytest.fixture(scope="module")
def rendered(ctx, two_frames: Path, tmp_path_factory):
    """render_samples of two frames from one camera, every file kind."""
    out = tmp_path_factory.mktemp("render")
    dataset = evaluation_dataset(ctx, two_frames, [CAMERA])
    return out, dataset, render_samples(ctx, dataset, out, progress=False)


def read_ply(path: Path) -> tuple[list[str], np.ndarray]:
    """Header lines and the vertex records of a binary PLY written by write_ply."""
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    count = int(next(line.split()[2] for line in header if line.startswith("element vertex")))
    vertices = np.frombuffer(data[end:], PLY_VERTEX)
    assert len(vertices) == count
    return header, vertices


def test_render_samples_writes_files_that_decode(rendered, ctx):
    out, dataset, records = rendered
    assert [(r.seq, r.frame, r.cam) for r in records] == [tuple(key) for key in dataset.keys]
    height, width = dataset.load(0).camera.height, dataset.load(0).camera.width
    avatar = ctx.avatar
    size = ctx.config.model.point_map_size
    for record in records:
        files = record.files
        assert files["image"].parent == out / record.seq / record.frame
        assert read_image(files["image"]).shape == (height, width, 3)
        assert read_image(files["compare"]).shape == (height, 2 * width, 3)
        assert read_image(files["depth_png"]).shape == (height, width, 3)
        assert read_image(files["normal_png"]).shape == (height, width, 3)
        depth = np.load(files["depth_npy"])
        assert depth.shape == (height, width) and depth.dtype == np.float32
        near, far = record.depth_range_mm
        assert 0 < near <= far == depth.max()
        header, vertices = read_ply(files["points"])
        assert header[:2] == ["ply", "format binary_little_endian 1.0"]
        assert len(vertices) == int(point_texel_mask(avatar.coverage, size).sum())
        assert np.isfinite(vertices["x"]).all()
        mesh = read_obj(files["coarse_mesh"])
        assert len(mesh.verts) == int(avatar.coverage.sum())
        assert len(mesh.faces) == len(avatar.grid_faces)
        displacement = np.load(files["displacement_npy"])
        assert displacement.shape == (size, size, 3)
        assert read_image(files["displacement_png"]).shape == (size, size, 3)
        scale = json.loads(files["displacement_json"].read_text())["scale_mm"]
        assert scale == pytest.approx(np.abs(displacement).max())
    index = json.loads((out / "render.json").read_text())
    assert len(index["samples"]) == len(records) and index["full"] is False
    assert (out / index["samples"][0]["files"]["image"]).is_file()


def test_coarse_mesh_rasterizes_to_the_guide_depth(rendered, ctx):
    """The OBJ mesh, rasterized in the sample's camera, gives the depth that guided the render."""
    _, dataset, records = rendered
    sample = dataset.load(0)
    mesh = read_obj(records[0].files["coarse_mesh"])
    depth = rasterize_camera(torch.from_numpy(mesh.verts), torch.from_numpy(mesh.faces), sample.camera).depth
    view = render_view(ctx.avatar, sample.drive, sample.camera)
    torch.testing.assert_close(depth, view.output.scene.guide_depth, rtol=0, atol=1e-3)


def test_preview_writes_only_images(ctx, tiny_checkpoint, tiny_subject, gendir, two_frames, tmp_path):
    out = tmp_path / "preview"
    args = ["render", str(tiny_checkpoint), "--img-list", str(two_frames), "--cameras", CAMERA]
    args += ["--subject", str(tiny_subject), "--gendir", str(gendir), "--out", str(out), "--preview"]
    assert main([*args, "--no-progress"]) == 0
    written = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    frames = read_frame_list(two_frames)
    expected = [Path("render.json")] + [
        Path(seq) / frame / f"{CAMERA}{kind}.png"
        for seq, frame in frames
        for kind in ("", "_compare", "_depth", "_normal")
    ]
    assert written == sorted(expected)


def test_uncovered_pixels_show_the_background_and_covered_ones_match_a_full_render(ctx, rendered):
    _, dataset, _ = rendered
    sample = dataset.load(0)
    full = render_view(ctx.avatar, sample.drive, sample.camera, full=True)
    covered_only = render_view(ctx.avatar, sample.drive, sample.camera, full=False)
    covered = covered_only.covered
    assert 0 < covered.sum() < covered.numel()
    assert torch.equal(full.output.scene.guide_depth > 0, covered)
    assert torch.equal(covered_only.output.scene.guide_depth, full.output.scene.guide_depth)
    assert len(covered_only.output.pixels) == int(covered.sum())  # only covered pixels were rendered
    background = ctx.avatar.background_colour(CAMERA).detach()
    assert torch.equal(covered_only.image[~covered], background.expand(int((~covered).sum()), 3))
    assert (covered_only.depth[~covered] == 0).all()
    torch.testing.assert_close(covered_only.image[covered], full.image[covered], rtol=0, atol=1e-6)
    torch.testing.assert_close(covered_only.depth[covered], full.depth[covered], rtol=0, atol=1e-3)


def plane_depth(normal: np.ndarray, offset: float, K: np.ndarray, height: int, width: int) -> np.ndarray:
    """Camera z (H, W) of the plane n . X = offset seen through the pixel centres."""
    rays = camera_points(torch.ones(height, width, dtype=torch.float64), K).numpy()  # (x, y, 1) per pixel
    return offset / (rays @ normal)


@pytest.mark.parametrize("seed", range(4))
def test_normals_of_a_plane_equal_its_normal(seed):
    rng = np.random.default_rng(seed)
    K = np.array(
        [[rng.uniform(80, 200), rng.uniform(-2, 2), 20.5], [0, rng.uniform(80, 200), 31.0], [0, 0, 1]]
    )
    normal = rng.normal(size=3) * (0.4, 0.4, 1)
    normal[2] = -abs(normal[2])  # facing the camera
    normal /= np.linalg.norm(normal)
    offset = normal[2] * rng.uniform(500, 1500)  # n . X for a point on the optical axis
    depth = plane_depth(normal, offset, K, 64, 42)
    assert (depth > 0).all()
    depth[5:9, 10:14] = 0  # a hole: its pixels and their neighbours have no normal
    normals = normal_map(torch.from_numpy(depth), K).numpy()
    known = np.linalg.norm(normals, axis=-1) > 0
    assert not known[0].any() and not known[:, -1].any() and not known[6, 12] and not known[4, 11]
    assert known.sum() == 62 * 40 - (16 + 4 * 4)  # the hole and the 4 pixels beside each of its sides
    np.testing.assert_allclose(normals[known], np.broadcast_to(normal, normals[known].shape), atol=1e-6)
    image = normal_image(normals)
    np.testing.assert_allclose(image[known][0] / 255.0, (normal + 1) / 2, atol=1 / 255)
    assert (image[~known] == 0).all()


def test_depth_image_maps_near_to_red_far_to_blue_and_unknown_to_black():
    depth = np.linspace(500, 900, 20, dtype=np.float32).reshape(4, 5)
    depth[0, 0] = 0
    image = depth_image(depth)
    assert (image[0, 0] == 0).all()
    nearest, farthest = image[0, 1].astype(int), image[-1, -1].astype(int)
    assert nearest[0] > nearest[2] and farthest[2] > farthest[0]
    clipped = depth_image(depth, near=600.0, far=700.0)
    assert (clipped[0, 1] == clipped[0, 2]).all()  # both nearer than near: the same colour


def test_coarse_mesh_reference():
    """Each face of the OBJ mesh joins the world positions of the texels its grid face names."""
    gen = torch.Generator().manual_seed(0)
    size = 6
    coverage = torch.zeros(size, size, dtype=torch.bool)
    coverage[1:5, 0:4] = True
    coverage[2, 5] = True  # an isolated texel: a vertex in no face
    grid_faces = uv_grid_faces(coverage)
    coarse = torch.randn(3, size, size, generator=gen) * 50
    angle = 0.3
    R = torch.tensor(
        [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    ).float()
    t = torch.tensor([1.0, -20.0, 900.0])
    mesh = coarse_mesh(coarse, coverage, grid_faces, R, t)
    assert len(mesh.verts) == int(coverage.sum())
    flat = coarse.reshape(3, -1).T
    for face, face_uvs, texels in zip(mesh.faces, mesh.face_uvs, grid_faces, strict=True):
        expected = to_world(flat[texels], R, t).numpy()
        np.testing.assert_allclose(mesh.verts[face], expected, rtol=1e-6, atol=1e-3)
        rows, cols = (texels // size).numpy(), (texels % size).numpy()
        uv = np.stack(((cols + 0.5) / size, 1 - (rows + 0.5) / size), 1)
        np.testing.assert_allclose(mesh.uvs[face_uvs], uv, atol=1e-7)


def test_write_ply_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    positions = rng.normal(size=(7, 3)).astype(np.float32) * 100
    colours = rng.uniform(size=(7, 3))
    write_ply(tmp_path / "p.ply", positions, colours, comment="two\nlines")
    header, vertices = read_ply(tmp_path / "p.ply")
    assert header.count("comment two") == 1 and "element vertex 7" in header
    np.testing.assert_array_equal(np.stack([vertices[a] for a in "xyz"], 1), positions)
    np.testing.assert_array_equal(
        np.stack([vertices[c] for c in ("red", "green", "blue")], 1), np.round(colours * 255)
    )


def test_displacement_image_decodes_within_a_quantization_step():
    rng = np.random.default_rng(2)
    displacement = rng.normal(size=(8, 8, 3)).astype(np.float32)
    image, scale = displacement_image(displacement)
    decoded = (image / 255.0 - 0.5) * 2 * scale
    np.testing.assert_allclose(decoded, displacement, atol=scale / 255 + 1e-6)


def test_bad_checkpoint_exits_3_naming_it(tmp_path, capsys):
    missing = tmp_path / "nothing.pt"
    assert main(["render", str(missing), "--img-list", "test"]) == 3
    assert str(missing) in capsys.readouterr().err
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a checkpoint")
    assert main(["render", str(damaged), "--img-list", "test"]) == 3
    assert str(damaged) in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_render_on_cuda_matches_cpu(tiny_checkpoint, tiny_subject, gendir, two_frames, tmp_path):
    views = {}
    for device in ("cpu", "cuda"):
        context = open_checkpoint(tiny_checkpoint, subject=tiny_subject, gendir=gendir, device=device)
        dataset = evaluation_dataset(context, two_frames, [CAMERA])
        records = render_samples(context, dataset, tmp_path / device, progress=False)
        views[device] = [read_image(record.files["image"]) for record in records]
        assert all(record.files["points"].stat().st_size > 0 for record in records)
    for cpu, cuda in zip(views["cpu"], views["cuda"], strict=True):
        assert np.abs(cpu.astype(np.float32) - cuda.astype(np.float32)).mean() < 1.0  # 8-bit levels


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_evaluation_renders_in_the_training_precision_within_005_db(
    tiny_checkpoint, tiny_subject, gendir
):
    context = open_checkpoint(tiny_checkpoint, subject=tiny_subject, gendir=gendir, device="cuda")
    assert context.config.train.precision == "bf16" and context.avatar.autocast_dtype == torch.bfloat16
    dataset = evaluation_dataset(context, "test")
    psnr = {}
    for precision in (torch.bfloat16, None):
        context.avatar.autocast_dtype = precision
        errors = []
        for index in range(0, len(dataset), max(1, len(dataset) // 6)):
            sample = dataset[index].to("cuda")
            image = render_view(context.avatar, sample.drive, sample.camera).image
            inside = sample.targets.mask
            errors.append(((image - sample.targets.image.permute(1, 2, 0))[inside] ** 2).mean())
        psnr[precision] = float(-10 * torch.log10(torch.stack(errors)).mean())
    assert abs(psnr[torch.bfloat16] - psnr[None]) < 0.05, psnr
