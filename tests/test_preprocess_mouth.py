"""The derived mouth mask checks itself: it must sit between the lips below the nose, even on a tracked
mesh whose crown is a pole of slivers (whose cells stretch, as the mouth's do, from vertex noise)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from npva.config import PreprocessConfig
from npva.data import gendir as gd
from npva.geometry.mesh import to_face_frame, to_world
from npva.io.multiface import (
    read_bin,
    read_frame_list,
    read_krt,
    read_obj,
    read_transform,
    write_bin,
    write_obj,
)
from npva.io.subject import SubjectLayout
from npva.preprocess import preprocess_subject
from npva.preprocess.uvlayout import check_mouth, face_axes


def _preprocess(subject: Path, out: Path, **settings) -> tuple[np.ndarray, str]:
    config = PreprocessConfig(uv_size=32, depth="none", **settings)
    summary = preprocess_subject(subject, config, out, progress=False)
    _, _, mouth = gd.read_uv_layout(gd.GenDir(out))
    return mouth.astype(bool), str(summary)


@pytest.fixture(scope="module")
def clean(tiny_subject, tmp_path_factory) -> tuple[np.ndarray, str]:
    return _preprocess(tiny_subject, tmp_path_factory.mktemp("clean") / "gendir")


def _pole_at_the_crown(subject: Path, jitter_mm: float) -> None:
    """Move the tracked mesh's vertices within 20 mm of the top of the head (face frame, y up) onto one
    point, jittered per frame and vertex by `jitter_mm`: a pole of slivers."""
    layout = SubjectLayout(subject)
    rng = np.random.default_rng(0)
    for seq, frame in read_frame_list(layout.frame_list):
        R, t = read_transform(layout.transform(seq, frame))
        mesh = read_obj(layout.mesh_obj(seq, frame))
        face = to_face_frame(mesh.verts.astype(np.float64), R, t)
        crown = face[:, 1] > face[:, 1].max() - 20.0
        pole = face[crown].mean(0)
        face[crown] = pole + jitter_mm * rng.standard_normal((int(crown.sum()), 3))
        verts = to_world(face, R, t).astype(np.float32)
        write_obj(layout.mesh_obj(seq, frame), dataclasses.replace(mesh, verts=verts))
        if layout.mesh_bin(seq, frame).is_file():
            assert read_bin(layout.mesh_bin(seq, frame)).shape == verts.shape
            write_bin(layout.mesh_bin(seq, frame), verts)


@pytest.mark.parametrize("jitter_mm", [0.02, 1.0])  # sub-millimetre slivers; a pole that wobbles
def test_mouth_mask_stays_at_the_mouth_beside_a_pole_of_slivers(clean, tiny_subject, tmp_path, jitter_mm):
    subject = tmp_path / "subject"
    shutil.copytree(tiny_subject, subject, ignore=shutil.ignore_patterns("gendir"))
    _pole_at_the_crown(subject, jitter_mm)
    clean_mouth, _ = clean
    mouth, printed = _preprocess(subject, tmp_path / "gendir")
    assert clean_mouth.any() and mouth.any()
    overlap = (mouth & clean_mouth).sum() / (mouth | clean_mouth).sum()
    assert overlap > 0.7, f"mouth texels moved: IoU {overlap:.2f}"
    assert "warning" not in printed


def test_mouth_check_names_what_is_wrong(clean, tiny_subject, tmp_path):
    out = tmp_path / "gendir"
    _preprocess(tiny_subject, out)
    mean, _ = gd.read_stats(gd.GenDir(out))
    coverage, _, mouth = gd.read_uv_layout(gd.GenDir(out))
    coverage, mouth = coverage.astype(bool), mouth.astype(bool)
    layout = SubjectLayout(tiny_subject)
    poses = [read_transform(layout.transform(*f)) for f in read_frame_list(layout.frame_list)]
    axes = face_axes(read_krt(layout.krt).values(), poses)
    assert check_mouth(mouth, mean, coverage, axes) is None
    top = np.zeros_like(coverage)
    top[np.unravel_index(np.argmax(np.where(coverage, mean @ axes.up, -np.inf)), top.shape)] = True
    assert "below the nose tip" in check_mouth(top, mean, coverage, axes)
    assert "no texel" in check_mouth(np.zeros_like(coverage), mean, coverage, axes)
    # A stretch threshold no cell reaches: the summary says so instead of writing a mask silently.
    _, printed = _preprocess(tiny_subject, tmp_path / "strict", mouth_stretch=1e9)
    assert "warning: no texel stretches like a mouth" in printed
