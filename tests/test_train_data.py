"""Training samples from the tiny synthetic subject: shapes, scaled cameras, skipping, the image cache."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from npva.config import DataConfig
from npva.data.frames import FrameInputs
from npva.data.gendir import GenDir
from npva.data.prepared import PreparedSubject
from npva.data.samples import AvatarDataset, TrainSample, select_samples
from npva.errors import FormatError, NpvaError
from npva.geometry.camera import project
from npva.geometry.posmap import PositionMapSampler
from npva.io.multiface import read_frame_list, read_image, read_krt, read_obj, write_image
from npva.io.subject import SubjectLayout

CONFIG = DataConfig(image_cache="none")
INPUTS = FrameInputs(texture_size=32, posmap_size=32)


def _dataset(subject, gendir, frames, cameras, config=CONFIG, **inputs) -> AvatarDataset:
    """AvatarDataset of the prepared subject; `inputs` replace fields of INPUTS."""
    return AvatarDataset(PreparedSubject(subject, gendir), frames, cameras, config, replace(INPUTS, **inputs))


@pytest.fixture(scope="module")
def frames(tiny_subject: Path) -> list[tuple[str, str]]:
    return read_frame_list(SubjectLayout(tiny_subject).split_list("train"))


def _copy(gendir: Path, tmp_path: Path) -> Path:
    """A private copy of the gendir (without its image cache) that a test may damage."""
    copy = tmp_path / "gendir"
    shutil.copytree(gendir, copy, ignore=shutil.ignore_patterns("image_cache"))
    return copy


def test_samples_have_training_shapes_and_scaled_cameras(tiny_subject, gendir, frames):
    cameras = ["400029", "400012"]
    dataset = _dataset(tiny_subject, gendir, frames, cameras, CONFIG)
    assert len(dataset) == len(frames) * len(cameras) and dataset.skipped == []
    sample = dataset[len(dataset) - 1]
    assert isinstance(sample, TrainSample) and sample.index == len(dataset) - 1
    assert (sample.seq, sample.frame, sample.cam) == (*frames[-1], cameras[-1])
    full = read_image(SubjectLayout(tiny_subject).image(sample.seq, sample.cam, sample.frame))
    h, w = round(full.shape[0] * 0.5), round(full.shape[1] * 0.5)  # the manifest's image_scale
    assert (sample.camera.height, sample.camera.width) == (h, w)
    assert sample.targets.image.shape == (3, h, w) and sample.targets.image.dtype == torch.float32
    assert 0 <= float(sample.targets.image.min()) and float(sample.targets.image.max()) <= 1
    assert (
        sample.targets.mask.shape == (h, w)
        and sample.targets.mask.dtype == torch.bool
        and sample.targets.mask.any()
    )
    assert sample.targets.depth.shape == (h, w) and float(sample.targets.depth.max()) > 100  # mm
    assert sample.drive.texture.shape == (3, 32, 32) and sample.drive.posmap.shape == (3, 32, 32)
    assert sample.drive.R.shape == (3, 3) and sample.drive.t.shape == (3,)

    K = read_krt(SubjectLayout(tiny_subject).krt)[sample.cam].K
    np.testing.assert_allclose(sample.camera.K[0], K[0] * w / full.shape[1])
    np.testing.assert_allclose(sample.camera.K[1], K[1] * h / full.shape[0])

    # The tracked mesh projects onto its own mask (within a pixel: the mask is coverage of pixel
    # centres) with the scaled camera, and mostly off it with the full-size intrinsics.
    verts = torch.from_numpy(read_obj(SubjectLayout(tiny_subject).mesh_obj(sample.seq, sample.frame)).verts)
    near_mask = F.max_pool2d(sample.targets.mask[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0

    def on_mask(camera) -> float:
        uv, z = project(verts, camera)
        pixel = uv.floor().long()
        inside = (z > 0) & (pixel[:, 0] >= 0) & (pixel[:, 0] < w) & (pixel[:, 1] >= 0) & (pixel[:, 1] < h)
        hits = torch.zeros(len(verts), dtype=torch.bool)
        hits[inside] = near_mask[pixel[inside, 1], pixel[inside, 0]]
        return float(hits.float().mean())

    assert on_mask(sample.camera) > 0.95
    assert on_mask(replace(sample.camera, K=K)) < 0.5


def test_missing_files_are_skipped_and_reported_once(tiny_subject, gendir, frames, tmp_path, caplog):
    damaged = _copy(gendir, tmp_path)
    seq, frame = frames[0]
    GenDir(damaged).mask(seq, "400012", frame).unlink()
    listed = [*frames, (seq, "999999")]  # a frame with no files at all
    with caplog.at_level(logging.WARNING, logger="npva.data.samples"):
        dataset = _dataset(tiny_subject, damaged, listed, ["400029", "400012"], CONFIG)
        for index in range(len(dataset)):
            dataset[index]
    assert len(dataset) == 2 * len(frames) - 1
    assert (seq, frame, "400012") not in dataset.keys and (seq, frame, "400029") in dataset.keys
    assert any(
        "missing mask" in reason and f"{seq} {frame} camera 400012" in reason for reason in dataset.skipped
    )
    for what in ("position map", "average texture", "head pose", "image", "depth map"):
        assert any(f"{seq} 999999" in reason and f"missing {what}" in reason for reason in dataset.skipped)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "3 of" in warnings[0].getMessage()  # 1 view + the frame's 2 views


def test_samples_carry_the_full_texture_and_the_tracked_point_map_when_asked(tiny_subject, gendir, frames):
    plain = _dataset(tiny_subject, gendir, frames[:1], ["400029"], CONFIG)[0]
    assert plain.drive.full_texture is None and plain.targets.point_posmap is None
    dataset = _dataset(
        tiny_subject, gendir, frames[:1], ["400029"], CONFIG, full_texture=True, point_map_size=24
    )
    sample = dataset[0]
    layout = SubjectLayout(tiny_subject)
    texture = read_image(layout.average_texture(sample.seq, sample.frame))  # at its own size
    assert sample.drive.full_texture.shape == (3, *texture.shape[:2])
    torch.testing.assert_close(
        sample.drive.full_texture, torch.from_numpy(texture).permute(2, 0, 1).float() / 255
    )
    # The tracked mesh at 24 x 24 texels, in the face frame: posed, it is the world mesh's position map.
    mesh = read_obj(layout.mesh_obj(sample.seq, sample.frame))
    sampler = PositionMapSampler(mesh, 24)
    world = torch.from_numpy(sampler.position_map(mesh.verts))  # (24, 24, 3)
    surface = torch.from_numpy(sampler.coverage)
    assert sample.targets.point_posmap.shape == (3, 24, 24)
    assert torch.isfinite(sample.targets.point_posmap[:, surface]).all()
    assert torch.isnan(sample.targets.point_posmap[:, ~surface]).all()
    posed = sample.drive.R @ sample.targets.point_posmap[:, surface] + sample.drive.t[:, None]
    torch.testing.assert_close(posed, world[surface].T, atol=1e-3, rtol=0)
    # The texture mode "ray" drives the avatar with the tracked mesh itself too, in the face frame.
    assert sample.drive.tracked_mesh is None
    driven = _dataset(tiny_subject, gendir, frames[:1], ["400029"], CONFIG, tracked_mesh=True)[0]
    tracked = driven.drive.tracked_mesh
    assert torch.equal(tracked.faces, torch.as_tensor(mesh.faces))
    assert torch.equal(tracked.face_uvs, torch.as_tensor(mesh.face_uvs))
    torch.testing.assert_close(tracked.uvs, torch.as_tensor(mesh.uvs, dtype=torch.float32))
    posed = tracked.verts @ driven.drive.R.T + driven.drive.t
    torch.testing.assert_close(posed, torch.as_tensor(mesh.verts, dtype=torch.float32), atol=1e-3, rtol=0)


def test_the_tracked_point_map_needs_the_tracked_mesh(tiny_subject, gendir, frames, tmp_path):
    subject = tmp_path / "subject"
    shutil.copytree(tiny_subject, subject)
    seq, frame = frames[0]
    SubjectLayout(subject).mesh_obj(seq, frame).unlink()
    assert len(_dataset(subject, gendir, frames[:2], ["400029"], CONFIG)) == 2  # not needed here
    dataset = _dataset(subject, gendir, frames[:2], ["400029"], CONFIG, point_map_size=8)
    assert [(key.seq, key.frame) for key in dataset.keys] == [frames[1]]
    assert any(f"{seq} {frame}: missing tracked mesh" in reason for reason in dataset.skipped)


def test_depth_none_needs_no_depth_files(tiny_subject, gendir, frames, tmp_path):
    # A gendir made with depth "none": its manifest says so and it has no depth maps.
    copy = _copy(gendir, tmp_path)
    manifest = json.loads(GenDir(copy).manifest.read_text())
    manifest["settings"]["depth"] = "none"
    GenDir(copy).manifest.write_text(json.dumps(manifest))
    shutil.rmtree(copy / "depths")
    dataset = _dataset(tiny_subject, copy, frames[:1], ["400029"], CONFIG)
    assert len(dataset) == 1 and dataset.skipped == []
    assert float(dataset[0].targets.depth.abs().max()) == 0


@pytest.mark.parametrize("fmt", ["png", "npy"])
def test_image_cache_gives_the_direct_tensors(tiny_subject, gendir, frames, tmp_path, fmt):
    cameras = ["400029", "400048"]
    direct = _dataset(tiny_subject, gendir, frames[:2], cameras, CONFIG)
    cached_config = DataConfig(image_cache=fmt, cache_dir=str(tmp_path / "cache"))
    first = _dataset(tiny_subject, gendir, frames[:2], cameras, cached_config)
    for index in range(len(direct)):
        expected = direct[index]
        written = first[index]  # decodes the photo and writes the cache
        path = first.cache.path(first.keys[index])
        assert path.is_file()
        again = _dataset(tiny_subject, gendir, frames[:2], cameras, cached_config)[index]  # reads it
        for sample in (written, again):
            assert torch.equal(sample.targets.image, expected.targets.image)
            np.testing.assert_array_equal(sample.camera.K, expected.camera.K)
    # A cached file of another size (say, an older training scale) is replaced, not used.
    key = first.keys[0]
    path = first.cache.path(key)
    wrong = np.zeros((5, 7, 3), np.uint8)
    if fmt == "png":
        write_image(path, wrong)
    else:
        np.save(path, wrong)
    assert torch.equal(first[0].targets.image, direct[0].targets.image)
    photo = SubjectLayout(tiny_subject).image(key.seq, key.cam, key.frame)
    size = tuple(direct[0].targets.image.shape[1:])
    assert first.cache.load(key, size, photo) is not None
    # A cached file older than its photo (the photo was replaced) is not used either.
    older = photo.stat().st_mtime - 10
    os.utime(path, (older, older))
    assert first.cache.load(key, size, photo) is None


def test_unreadable_sample_is_replaced_by_the_next(tiny_subject, gendir, frames, tmp_path, caplog):
    damaged = _copy(gendir, tmp_path)
    seq, frame = frames[0]
    GenDir(damaged).posmap(seq, frame).write_bytes(b"not a numpy file")
    dataset = _dataset(tiny_subject, damaged, frames[:2], ["400029"], CONFIG)
    with caplog.at_level(logging.WARNING, logger="npva.data.samples"):
        assert dataset[0].index == 1  # frame 0 cannot be read: frame 1 stands in, under its own index
        assert dataset[0].index == 1
    assert len([r for r in caplog.records if "unreadable" in r.getMessage()]) == 1
    strict = _dataset(tiny_subject, damaged, frames[:2], ["400029"], replace(CONFIG, skip_unreadable=False))
    with pytest.raises(FormatError, match="posMap"):
        strict[0]


def test_select_samples_and_loader(tiny_subject, gendir, frames):
    chosen, cameras = select_samples(PreparedSubject(tiny_subject, gendir), DataConfig())
    assert chosen == frames and cameras == list(read_krt(SubjectLayout(tiny_subject).krt))
    _, single = select_samples(PreparedSubject(tiny_subject, gendir), DataConfig(cameras=("400029",)))
    assert single == ["400029"]
    _, split = select_samples(PreparedSubject(tiny_subject, gendir), DataConfig(camera_split=True))
    assert "400029" not in split and len(split) == len(cameras) - 1  # 400029 is the tiny test camera
    with pytest.raises(NpvaError, match="no camera named 123"):
        select_samples(PreparedSubject(tiny_subject, gendir), DataConfig(cameras=("123",)))
    all_frames, _ = select_samples(PreparedSubject(tiny_subject, gendir), DataConfig(frames="all"))
    assert len(all_frames) > len(frames)

    dataset = _dataset(tiny_subject, gendir, frames[:2], single, CONFIG)
    batches = list(DataLoader(dataset, batch_size=None, shuffle=False))
    assert [b.index for b in batches] == [0, 1] and isinstance(batches[0], TrainSample)
    moved = batches[0].to("cpu")
    assert moved.targets.image.shape == batches[0].targets.image.shape and moved.camera is batches[0].camera
