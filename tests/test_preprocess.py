"""`npva preprocess` on the tiny synthetic subject: every output, resume, shards, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from npva.cli import main
from npva.config import PreprocessConfig
from npva.data import gendir as gd
from npva.geometry.mesh import Mesh
from npva.geometry.posmap import PositionMapSampler
from npva.io.multiface import read_frame_list, read_krt
from npva.io.subject import SubjectLayout
from npva.preprocess import parse_shard, preprocess_subject


def _gendir_arrays(root: Path) -> dict[str, np.ndarray]:
    """Every output array of a gendir, keyed by relative path (manifest excluded)."""
    arrays = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.startswith(".") or path.name == "manifest.json":
            continue
        key = str(path.relative_to(root))
        if path.suffix == ".npy":
            arrays[key] = np.load(path)
        elif path.suffix == ".png":
            arrays[key] = gd.read_mask(path)
        elif path.name.endswith(".npz"):
            with np.load(path) as data:
                for name in data.files:
                    arrays[f"{key}:{name}"] = data[name]
        else:
            arrays[key] = np.array(path.read_text())
    return arrays


def _assert_same_gendir(a: Path, b: Path) -> None:
    left, right = _gendir_arrays(a), _gendir_arrays(b)
    assert sorted(left) == sorted(right)
    for key in left:
        np.testing.assert_array_equal(left[key], right[key], err_msg=key)


@pytest.fixture(scope="module")
def processed(tiny_subject: Path, tmp_path_factory) -> Path:
    gendir = tmp_path_factory.mktemp("prep") / "gendir"
    summary = preprocess_subject(tiny_subject, PreprocessConfig(uv_size=64), gendir, progress=False)
    assert not summary.failed, summary
    return gendir


def test_flat_mesh_position_map_is_bilinear_in_its_corners():
    # A 2-triangle quad whose UVs span the unit square: the position map is the bilinear interpolation
    # of its corner positions, which for a planar parallelogram is exact at every texel centre.
    corners = np.array([[0, 0, 5], [40, 0, 5], [40, 30, 5], [0, 30, 5]], np.float32)
    mesh = Mesh(
        verts=corners,
        faces=np.array([[0, 1, 2], [0, 2, 3]]),
        uvs=np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32),
        face_uvs=np.array([[0, 1, 2], [0, 2, 3]]),
    )
    size = 16
    sampler = PositionMapSampler(mesh, size)
    posmap = sampler.position_map(corners)
    assert sampler.coverage.all()
    u = (np.arange(size) + 0.5) / size
    v = 1 - (np.arange(size) + 0.5) / size  # row 0 is v = 1
    expected_x = np.broadcast_to(40 * u[None, :], (size, size))
    expected_y = np.broadcast_to(30 * v[:, None], (size, size))
    np.testing.assert_allclose(posmap[..., 0], expected_x, atol=1e-4)
    np.testing.assert_allclose(posmap[..., 1], expected_y, atol=1e-4)
    np.testing.assert_allclose(posmap[..., 2], 5, atol=1e-5)


def test_every_output_is_made(tiny_subject: Path, processed: Path):
    layout, out = SubjectLayout(tiny_subject), gd.GenDir(processed)
    frames = read_frame_list(layout.frame_list)
    cameras = read_krt(layout.krt)
    mean, std = gd.read_stats(out)
    coverage, faces, mouth = gd.read_uv_layout(out)
    assert mean.shape == (64, 64, 3) and std > 0
    assert coverage.any() and mouth.any() and not mouth[~coverage].any()
    assert faces.min() >= 0 and coverage.reshape(-1)[faces].all()
    for seq, frame in frames:
        posmap = gd.read_posmap(out.posmap(seq, frame), 64)
        assert np.all(posmap[~coverage] == 0) and np.abs(posmap[coverage]).max() > 10
        for cam in cameras:
            mask = gd.read_mask(out.mask(seq, cam, frame))
            depth = gd.read_depth_npz(out.depth(seq, cam, frame))
            assert mask.shape == depth.shape
            assert 0.02 < mask.mean() < 0.95
            # imported MVS depth (metres -> mm) lies near the tracked surface where both exist
            both = mask & (depth > 0)
            assert both.sum() > 0.3 * mask.sum()
            assert 300 < np.median(depth[both]) < 3000
    manifest = json.loads(out.manifest.read_text())
    assert manifest["format_version"] == gd.FORMAT_VERSION
    assert manifest["settings"]["uv_size"] == 64
    assert manifest["produced"]["posmaps"] == len(frames)
    assert manifest["produced"]["masks"] == len(frames) * len(cameras)


def test_mask_is_half_the_image_size(tiny_subject: Path, processed: Path):
    layout = SubjectLayout(tiny_subject)
    seq, frame = read_frame_list(layout.frame_list)[0]
    cam = next(iter(read_krt(layout.krt)))
    from npva.io.multiface import read_image_size

    height, width = read_image_size(layout.image(seq, cam, frame))
    mask = gd.read_mask(gd.GenDir(processed).mask(seq, cam, frame))
    assert mask.shape == (round(height / 2), round(width / 2))


def test_mesh_depth_matches_mask(tiny_subject: Path, tmp_path: Path):
    gendir = tmp_path / "g"
    config = PreprocessConfig(uv_size=32, depth="mesh")
    summary = preprocess_subject(tiny_subject, config, gendir, progress=False)
    assert not summary.failed
    out = gd.GenDir(gendir)
    seq, frame = read_frame_list(SubjectLayout(tiny_subject).frame_list)[0]
    cam = next(iter(read_krt(SubjectLayout(tiny_subject).krt)))
    mask, depth = gd.read_mask(out.mask(seq, cam, frame)), gd.read_depth_npz(out.depth(seq, cam, frame))
    # the mask is the silhouette (with at most a one-pixel rim); the mesh depth covers pixel centres
    assert (depth > 0).sum() > 100 and not ((depth > 0) & ~mask).any()
    assert (mask & ~(depth > 0)).sum() < 0.2 * mask.sum()


def test_interrupted_run_resumes_to_the_same_result(tiny_subject, processed, tmp_path, monkeypatch):
    gendir = tmp_path / "g"
    real_write = gd.write_mask
    calls = {"n": 0}

    def interrupted_write(path, mask):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        real_write(path, mask)

    monkeypatch.setattr(gd, "write_mask", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        preprocess_subject(tiny_subject, PreprocessConfig(uv_size=64), gendir, progress=False)
    monkeypatch.setattr(gd, "write_mask", real_write)
    assert not gd.GenDir(gendir).pos_mean.exists()
    summary = preprocess_subject(tiny_subject, PreprocessConfig(uv_size=64), gendir, progress=False)
    assert summary.skipped >= 4 and summary.made > 0 and not summary.failed
    _assert_same_gendir(processed, gendir)


def test_rerun_redoes_only_missing_or_damaged_outputs(tiny_subject, processed, tmp_path):
    gendir = tmp_path / "g"
    shutil.copytree(processed, gendir)
    out = gd.GenDir(gendir)
    seq, frame = read_frame_list(SubjectLayout(tiny_subject).frame_list)[1]
    cam = next(iter(read_krt(SubjectLayout(tiny_subject).krt)))
    out.posmap(seq, frame).unlink()
    out.mask(seq, cam, frame).write_bytes(b"\x89PNG truncated")
    summary = preprocess_subject(tiny_subject, PreprocessConfig(uv_size=64), gendir, progress=False)
    assert summary.made == 2 and not summary.failed
    _assert_same_gendir(processed, gendir)


def test_two_shards_equal_one_run(tiny_subject, processed, tmp_path, monkeypatch):
    gendir = tmp_path / "g"
    args = ["preprocess", str(tiny_subject), "--gendir", str(gendir), "--uv-size", "64", "--no-progress"]
    assert main([*args, "--shard", "0/2"]) == 0
    assert not gd.GenDir(gendir).pos_mean.exists()  # statistics wait for the other shard
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([*args, "--workers", "2"]) == 0
    _assert_same_gendir(processed, gendir)


def test_parse_shard():
    assert parse_shard("2/4", {}) == (2, 4)
    assert parse_shard(None, {"RANK": "1", "WORLD_SIZE": "3"}) == (1, 3)
    assert parse_shard(None, {}) == (0, 1)
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(Exception, match="shard"):
            parse_shard(bad, {})


def test_missing_image_is_reported_and_skipped(tiny_subject, tmp_path, capsys):
    subject = tmp_path / "subject"
    shutil.copytree(tiny_subject, subject, ignore=shutil.ignore_patterns("gendir"))
    layout = SubjectLayout(subject)
    seq, frame = read_frame_list(layout.frame_list)[0]
    cam = next(iter(read_krt(layout.krt)))
    layout.image(seq, cam, frame).unlink()
    code = main(["preprocess", str(subject), "--uv-size", "32", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0  # a gap of the capture, not a failure
    assert "missing in the capture (left out, not failures): 1 views without a photo" in printed
    assert gd.GenDir(subject / "gendir").posmap(seq, frame).is_file()


def test_other_settings_in_the_same_gendir_are_refused(tiny_subject, processed, tmp_path):
    gendir = tmp_path / "g"
    shutil.copytree(processed, gendir)
    with pytest.raises(Exception, match="other settings"):
        preprocess_subject(tiny_subject, PreprocessConfig(uv_size=32), gendir, progress=False)


def test_position_maps_follow_the_head_pose(tiny_subject, processed):
    """Posed world meshes map back to the face frame: the mean position map is centred on the head."""
    mean, _ = gd.read_stats(gd.GenDir(processed))
    coverage, _, _ = gd.read_uv_layout(gd.GenDir(processed))
    centre = torch.as_tensor(mean[coverage]).mean(0)
    assert torch.linalg.norm(centre) < 150  # face frame: origin within the head


def test_derived_mouth_mask_is_one_region_below_the_eyes(processed):
    import cv2

    coverage, _, mouth = gd.read_uv_layout(gd.GenDir(processed))
    count, _ = cv2.connectedComponents(mouth.astype(np.uint8), connectivity=8)
    assert count == 2  # background + one region
    rows, cols = np.nonzero(mouth)
    covered_rows, covered_cols = np.nonzero(coverage)
    assert rows.mean() > np.median(covered_rows)  # lower part of the face in the image-layout UV map
    assert abs(cols.mean() - covered_cols.mean()) < 0.1 * mouth.shape[1]  # centred left to right
    assert mouth.sum() < 0.1 * coverage.sum()
    # The synthetic lips span about 8 of the 64 texel columns. A lip stretch widens the band around them
    # by 2-3x, which a 1.8x threshold took in (24 columns, to the cheeks); the mouth is the lips.
    assert cols.max() - cols.min() + 1 < 0.2 * mouth.shape[1]
