"""The Python API: load a trained run and render capture cameras and new cameras at any frame."""

from __future__ import annotations

import dataclasses

import torch

from npva.api import load_avatar_run
from npva.eval.loading import evaluation_dataset
from npva.eval.render import render_view
from npva.io.multiface import read_frame_list
from npva.io.subject import SubjectLayout


def test_a_loaded_run_renders_a_capture_camera_as_the_evaluation_does(
    tiny_checkpoint, tiny_subject, gendir, tmp_path
):
    run = load_avatar_run(tiny_checkpoint.parent.parent, gendir=gendir)  # the run directory
    assert run.subject.root == tiny_subject and not run.avatar.training
    seq, frame = read_frame_list(SubjectLayout(tiny_subject).split_list("test"))[0]
    view = run.render(seq, frame, "400029")
    camera = run.camera("400029")
    assert view.image.shape == (camera.height, camera.width, 3)
    assert 0.05 < view.covered.float().mean() < 0.95 and (view.depth[view.covered] > 0).float().mean() > 0.9

    list_file = tmp_path / "one_frame.txt"
    list_file.write_text(f"{seq} {frame}\n")
    sample = evaluation_dataset(run.context, list_file, ["400029"]).load(0)
    expected = render_view(run.avatar, sample.drive, sample.camera)
    torch.testing.assert_close(view.image, expected.image, rtol=0, atol=0)


def test_a_loaded_run_renders_a_new_camera_at_any_size(tiny_checkpoint, gendir):
    run = load_avatar_run(tiny_checkpoint, gendir=gendir)
    seq, frame = read_frame_list(run.subject.layout.frame_list)[0]  # a training frame
    base = run.camera("400029")
    small = dataclasses.replace(base.resized(base.height // 2, base.width // 2), name="mine")
    view = run.render(seq, frame, small, full=True)
    assert view.image.shape == (base.height // 2, base.width // 2, 3)
    assert view.covered.any() and view.image[view.covered].std() > 0.01  # a face, not a flat colour
