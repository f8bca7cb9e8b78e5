"""Stereo depth from calibrated photos, COLMAP's depth format, and both in `npva preprocess`/`check`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from npva.cli import main
from npva.data import gendir as gd
from npva.errors import FormatError
from npva.geometry.camera import Camera, look_at, pixel_rays
from npva.io.colmap import (
    find_colmap_depth,
    image_camera,
    read_colmap_array,
    read_colmap_depth,
    write_colmap_array,
)
from npva.io.multiface import read_frame_list, read_krt
from npva.preprocess import run
from npva.preprocess.stereo import (
    StereoSettings,
    StereoView,
    choose_sources,
    fill_holes,
    frame_depths,
    grey_contrast,
)

SIZE = 72  # pixels per side of the synthetic views
DISTANCE = 500.0  # mm from the cameras to the scene's centre


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one thread is faster than several on a busy machine, and keeps the tests light."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cameras() -> list[Camera]:
    """A centre camera and four around it, 12 degrees off, all aimed at the origin (about 1 mm/px)."""
    K = np.array([[500.0, 0.0, SIZE / 2], [0.0, 500.0, SIZE / 2], [0.0, 0.0, 1.0]])
    cameras = []
    for i, (elevation, azimuth) in enumerate(((0, 0), (0, -12), (0, 12), (-12, 0), (12, 0))):
        el, az = np.radians(elevation), np.radians(azimuth)
        direction = np.array([np.sin(az) * np.cos(el), np.sin(el), -np.cos(az) * np.cos(el)])
        centre = DISTANCE * direction
        cameras.append(look_at(f"40000{i}", centre, np.zeros(3), np.array([0.0, -1.0, 0.0]), K, SIZE, SIZE))
    return cameras


def _texture(points: torch.Tensor, amplitude: float = 0.08) -> torch.Tensor:
    """(..., 3) world points (mm) -> (...,) grey in [0, 1]: waves of 5-12 mm in several directions,
    each of the given amplitude."""
    generator = torch.Generator().manual_seed(3)
    directions = torch.nn.functional.normalize(torch.randn(6, 3, generator=generator), dim=-1)
    periods = torch.linspace(5.0, 12.0, 6)
    phases = torch.rand(6, generator=generator) * 6.28
    waves = torch.sin(points @ directions.T * (6.283 / periods) + phases)
    return 0.5 + amplitude * waves.sum(-1)


def _render(camera: Camera, hit, amplitude: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) float, camera depth (H, W) in mm, 0 where the ray misses) of a surface whose
    `hit(origin (3,), directions (H, W, 3))` gives the ray distance (nan on a miss), textured by
    `_texture` of the given amplitude."""
    origin, directions = pixel_rays(camera)
    origin = torch.as_tensor(origin, dtype=torch.float32)
    distance = hit(origin, directions)
    points = origin + distance[..., None] * directions
    z_axis = torch.as_tensor(camera.R[2], dtype=torch.float32)
    depth = torch.nan_to_num(distance * (directions @ z_axis), nan=0.0)
    grey = torch.where(torch.isnan(distance), torch.full_like(distance, 0.3), _texture(points, amplitude))
    return grey[..., None].expand(-1, -1, 3).numpy().copy(), depth.numpy()


def _plane_hit(origin: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """A plane through the origin tilted 25 degrees about the x axis and 15 about y."""
    a, b = np.radians(25.0), np.radians(15.0)
    normal = torch.tensor([np.sin(b), np.sin(a) * np.cos(b), -np.cos(a) * np.cos(b)], dtype=torch.float32)
    return -(origin @ normal) / (directions @ normal)


def _sphere_hit(origin: torch.Tensor, directions: torch.Tensor, radius: float = 25.0) -> torch.Tensor:
    b = directions @ origin
    disc = b**2 - (origin @ origin - radius**2)
    return torch.where(disc > 0, -b - disc.clamp(min=0).sqrt(), torch.full_like(b, float("nan")))


def _stereo_errors(
    hit, prior_offset_mm: float, amplitude: float = 0.08, settings: StereoSettings | None = None
) -> tuple[np.ndarray, float]:
    """Absolute errors (mm) of the centre view's stereo depth where it has one, and its completeness
    over the surface's pixels away from the silhouette; the prior is the truth moved back."""
    cameras = _cameras()
    views, truths = {}, {}
    for camera in cameras:
        image, depth = _render(camera, hit, amplitude)
        prior = np.where(depth > 0, depth + prior_offset_mm, 0.0).astype(np.float32)
        views[camera.name], truths[camera.name] = StereoView(camera, image, prior), depth
    depths = frame_depths(views, np.zeros(3), settings or StereoSettings(min_consistent=1))
    name = cameras[0].name
    depth, truth = depths[name], truths[name]
    interior = (
        torch.nn.functional.max_pool2d(torch.as_tensor(truth <= 0).float()[None], 9, 1, 4)[0].numpy() == 0
    )
    known = (depth > 0) & interior
    return np.abs(depth[known] - truth[known]), known.sum() / interior.sum()


@pytest.mark.parametrize(
    ("hit", "offset"),
    [(_plane_hit, -7.3), (_sphere_hit, 9.7)],
    ids=["plane", "sphere"],
)
def test_stereo_finds_the_true_depth_to_a_fraction_of_a_millimetre(hit, offset):
    errors, completeness = _stereo_errors(hit, offset)
    assert completeness > 0.8
    assert np.median(errors) < 0.2
    assert np.percentile(errors, 95) < 1.0


def test_faintly_textured_surface_is_found_where_an_unfiltered_match_leaves_holes():
    # Skin at a training size: grey varies by a few thousandths within a window. Each source window
    # still scores (a gate on the source windows' contrast made the true hypothesis unscorable) and
    # the guided filter pools the weak evidence of each pixel's neighbourhood.
    faint = 0.003
    image, depth = _render(_cameras()[0], _plane_hit, faint)
    contrast = grey_contrast(torch.as_tensor(image[..., 0]), 5)[torch.as_tensor(depth) > 0]
    assert float((contrast < 0.004).float().mean()) > 0.6  # most windows below the former gate
    errors, completeness = _stereo_errors(_plane_hit, -7.3, faint, StereoSettings())
    assert completeness > 0.8
    assert np.median(errors) < 0.2
    assert np.percentile(errors, 95) < 0.5


def _slanted_plane_with_a_hole() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(truth, depth with a 10x10 hole, faintly textured guide), (40, 40) each."""
    truth = 500.0 + torch.linspace(0, 20, 40)[None].expand(40, 40)
    depth = truth.clone()
    depth[15:25, 15:25] = 0
    guide = 0.5 + 0.01 * torch.sin(torch.arange(40.0))[None].expand(40, 40)
    return truth, depth, guide


def test_holes_are_filled_with_the_prior_plus_the_offset_of_neighbours():
    truth, depth, guide = _slanted_plane_with_a_hole()
    prior = truth + 1.5  # the tracked mesh 1.5 mm behind the surface
    filled = fill_holes(depth, guide, prior, StereoSettings())
    torch.testing.assert_close(filled, truth, atol=1e-3, rtol=0)


def test_holes_are_filled_from_neighbours_of_similar_grey_across_a_depth_step():
    truth, depth, guide = _slanted_plane_with_a_hole()
    step = torch.where(torch.arange(40) >= 20, 30.0, 0.0)[None]  # the right half 30 mm deeper ...
    truth, depth, guide = truth + step, torch.where(depth > 0, depth + step, 0.0), guide + step / 100
    filled = fill_holes(depth, guide, truth - step - 1.0, StereoSettings())  # ... and darker
    torch.testing.assert_close(filled, truth, atol=1e-3, rtol=0)


def test_holes_stay_where_neighbours_disagree():
    truth, depth, guide = _slanted_plane_with_a_hole()
    checker = 3.0 * (-1.0) ** (torch.arange(40)[:, None] + torch.arange(40)[None])
    noisy = torch.where(depth > 0, depth + checker, 0.0)
    filled = fill_holes(noisy, guide, truth, StereoSettings())
    assert bool((filled[15:25, 15:25] == 0).all())


def test_sources_are_the_nearest_cameras_with_enough_baseline():
    cameras = _cameras()
    twin = look_at(
        "499999", cameras[0].centre + [1.0, 0, 0], np.zeros(3), [0, -1.0, 0], cameras[0].K, SIZE, SIZE
    )
    chosen = choose_sources([*cameras, twin], np.zeros(3), StereoSettings(sources=2))
    assert len(chosen[0]) == 2 and 5 not in chosen[0]  # the twin is too close to add depth
    assert set(chosen[0]) <= {1, 2, 3, 4}


def test_settings_reject_an_even_window_and_more_best_sources_than_sources():
    with pytest.raises(ValueError):
        StereoSettings(window=4)
    with pytest.raises(ValueError):
        StereoSettings(sources=2, best_sources=3)


# ---- COLMAP's binary arrays ---------------------------------------------------------------------


def test_colmap_array_round_trips_and_is_laid_out_as_colmap_writes_it(tmp_path):
    depth = np.arange(12, dtype=np.float32).reshape(3, 4)  # H 3, W 4
    path = tmp_path / "a.png.geometric.bin"
    write_colmap_array(path, depth)
    data = path.read_bytes()
    assert data.startswith(b"4&3&1&")
    # Width runs fastest, then height, then channel: the first row comes first.
    np.testing.assert_array_equal(np.frombuffer(data[6:], "<f4")[:4], [0, 1, 2, 3])
    np.testing.assert_array_equal(read_colmap_array(path)[..., 0], depth)
    normals = np.random.default_rng(0).normal(size=(5, 2, 3)).astype(np.float32)
    write_colmap_array(tmp_path / "n.bin", normals)
    np.testing.assert_array_equal(read_colmap_array(tmp_path / "n.bin"), normals)


def test_colmap_depth_is_scaled_with_unknown_values_zero(tmp_path):
    path = tmp_path / "d.bin"
    write_colmap_array(path, np.array([[1.5, 0.0], [-2.0, np.nan]], np.float32))
    np.testing.assert_array_equal(read_colmap_depth(path, scale=1000.0), [[1500.0, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"4&3&", "header"), (b"4&3&1&" + b"\0" * 40, "expected 48 bytes"), (b"0&3&1&", "non-empty")],
)
def test_malformed_colmap_arrays_are_reported_with_their_path(tmp_path, data, message):
    path = tmp_path / "bad.geometric.bin"
    path.write_bytes(data)
    with pytest.raises(FormatError, match=message) as info:
        read_colmap_array(path)
    assert str(path) in str(info.value)


def test_colmap_image_names_map_to_cameras(tmp_path):
    cameras = {"400029", "400008"}
    assert image_camera("400029.png", cameras) == "400029"
    assert image_camera("E001/400008/000102.jpg", cameras) == "400008"
    assert image_camera("000102.png", cameras) is None
    maps = tmp_path / "stereo" / "depth_maps"
    write_colmap_array(maps / "400029.png.geometric.bin", np.ones((2, 2)))
    write_colmap_array(maps / "400029.png.photometric.bin", np.ones((2, 2)))
    assert find_colmap_depth(maps, "400029") == maps / "400029.png.geometric.bin"
    assert find_colmap_depth(maps, "400008") is None
    write_colmap_array(maps / "400029" / "000102.png.geometric.bin", np.ones((2, 2)))
    with pytest.raises(FormatError, match="several depth maps name camera 400029"):
        find_colmap_depth(maps, "400029")


# ---- preprocessing and check --------------------------------------------------------------------


def test_preprocess_stereo_writes_depth_per_view_and_resumes(
    tiny_subject: Path, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "gendir"
    args = ["preprocess", str(tiny_subject), "--preset", "tiny", "--depth", "stereo"]
    assert main([*args, "--gendir", str(out), "--no-progress", "--shard", "0/4"]) == 0
    printed = capsys.readouterr().out
    assert "multi-view stereo" in printed and "depth made per view:" in printed and " stereo" in printed
    seq, frame = read_frame_list(tiny_subject / "frame_list.txt")[0]
    cam = next(iter(read_krt(tiny_subject / "KRT")))
    depth = gd.read_depth_npz(gd.GenDir(out).depth(seq, cam, frame))
    assert depth.shape == (64, 42) and (depth > 0).any()
    assert main([*args, "--gendir", str(out), "--no-progress", "--shard", "0/4"]) == 0
    assert "0 outputs made" in capsys.readouterr().out
    # The stereo settings are part of what the gendir was made with: other ones are refused.
    assert gd.read_manifest(gd.GenDir(out))["settings"]["stereo"]["window"] == StereoSettings().window
    monkeypatch.setattr(run, "StereoSettings", lambda: StereoSettings(window=7))
    assert main([*args, "--gendir", str(out), "--no-progress", "--shard", "0/4"]) == 3
    assert "made with other settings" in capsys.readouterr().err


def test_preprocess_imports_colmap_depth_maps_named_by_camera(tiny_subject: Path, tmp_path, capsys):
    seq, frame = read_frame_list(tiny_subject / "frame_list.txt")[0]
    cam = next(iter(read_krt(tiny_subject / "KRT")))
    folder = tmp_path / "colmap"
    maps = folder / seq / frame / "stereo" / "depth_maps"
    write_colmap_array(maps / f"{cam}.png.geometric.bin", np.full((128, 84), 987.5, np.float32))
    out = tmp_path / "gendir"
    args = ["preprocess", str(tiny_subject), "--preset", "tiny", "--depth", "import", str(folder)]
    assert main([*args, "--depth-scale", "1", "--gendir", str(out), "--no-progress", "--shard", "0/4"]) == 0
    printed = capsys.readouterr().out
    assert "1 imported COLMAP" in printed and "unknown (no MVS depth file)" in printed
    np.testing.assert_array_equal(gd.read_depth_npz(gd.GenDir(out).depth(seq, cam, frame)), 987.5)


def test_check_says_which_depth_each_view_gets(tiny_subject: Path, capsys):
    main(["check", str(tiny_subject)])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("depth per view")]
    cameras, frames = (
        len(read_krt(tiny_subject / "KRT")),
        len(read_frame_list(tiny_subject / "frame_list.txt")),
    )
    assert lines == [f"depth per view (preprocess --depth auto imports mvs_depth/): {cameras * frames} EXR"]
