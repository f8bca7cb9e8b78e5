"""A subject as a capture ships it (no splits/, no MVS depth, gaps) through every command with the
defaults; the split protocols; optional packages named when missing."""

from __future__ import annotations

import logging
import shutil
import sys

import pytest

from npva.cli import main
from npva.errors import NpvaError
from npva.io.multiface import read_camera_split, read_frame_list, read_krt, write_frame_list
from npva.io.splits import PAPER_TEST_SEQUENCES, protocol_split, subject_split
from npva.io.subject import SubjectLayout

PAPER_HELD_OUT = "SEN_take_charge_of_choosing_her_bridesmaids_gowns"  # one of the synthetic sequences


def _as_shipped(tiny_subject, tmp_path):
    """A copy of the tiny subject without splits/, mvs_depth/ and preprocessing output."""
    subject = tmp_path / "subject"
    ignored = shutil.ignore_patterns("gendir", "splits", "mvs_depth", "image_cache")
    shutil.copytree(tiny_subject, subject, ignore=ignored)
    return subject


def test_capture_with_gaps_goes_through_every_command_with_the_defaults(
    tiny_subject, tmp_path, capsys, caplog, monkeypatch
):
    subject = _as_shipped(tiny_subject, tmp_path)
    layout = SubjectLayout(subject)
    frames = read_frame_list(layout.frame_list)
    camera = next(iter(read_krt(layout.krt)))
    for seq, frame in frames[:2]:  # a camera that missed frames
        layout.image(seq, camera, frame).unlink()
    layout.mesh_obj(*frames[4]).unlink()  # a frame without a tracked mesh
    layout.mesh_bin(*frames[4]).unlink()
    layout.mesh_obj(*frames[1]).unlink()  # a frame with its .bin alone

    assert main(["check", str(subject)]) == 0
    out = capsys.readouterr().out
    assert "gaps: missing 2 images, 1 tracked meshes (obj)" in out

    assert main(["preprocess", str(subject), "--preset", "tiny", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"depth: the tracked mesh rendered (no MVS depth folder {layout.mvs_depth_dir})" in out
    assert "1 frames without a tracked mesh, 2 views without a photo" in out
    assert "failed:" not in out

    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="npva"):
        assert main(["train", str(subject), "--out", str(run), "--set", "train.epochs=3"]) == 0
    assert "preset tiny: the one" in caplog.text
    assert "split npva-paper:" in caplog.text and f"held out: {PAPER_HELD_OUT}" in caplog.text
    assert "training finished at step 3 of 3" in capsys.readouterr().out
    assert (run / "split" / "protocol.txt").read_text().startswith("split npva-paper:")
    assert {seq for seq, _ in read_frame_list(run / "split" / "test_list.txt")} == {PAPER_HELD_OUT}
    assert PAPER_HELD_OUT not in {seq for seq, _ in read_frame_list(run / "split" / "train_list.txt")}

    assert main(["metrics", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "3 frames x 5 cameras" in out and (run / "metrics" / "standard" / "metrics.csv").is_file()

    pytest.importorskip("av")
    assert main(["video", str(run), "--no-progress"]) == 0
    assert f"{run / 'video' / PAPER_HELD_OUT}.mp4: 3 frames" in capsys.readouterr().out

    monkeypatch.setitem(sys.modules, "av", None)  # PyAV not installed
    assert main(["video", str(run), "--no-progress"]) == 3
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "PyAV" in err and "pip install 'av>=12'" in err


def test_preset_mismatch_and_missing_import_folder_say_what_to_run(tiny_subject, tmp_path, capsys):
    subject = _as_shipped(tiny_subject, tmp_path)
    assert main(["preprocess", str(subject), "--depth", "import", "--preset", "tiny", "--no-progress"]) == 3
    assert f"{subject / 'mvs_depth'}: missing MVS depth folder" in capsys.readouterr().err
    assert main(["preprocess", str(subject), "--preset", "tiny", "--uv-size", "32"]) == 3
    assert "--preset or --uv-size" in capsys.readouterr().err


def test_train_with_another_preset_names_the_preprocess_command(tiny_subject, gendir, tmp_path, capsys):
    args = ["train", str(tiny_subject), "--gendir", str(gendir), "--out", str(tmp_path / "run")]
    assert main([*args, "--preset", "demo"]) == 3
    assert f"npva preprocess {tiny_subject} --preset demo --gendir" in capsys.readouterr().err


def _subject_with(tmp_path, tiny_subject, sequences: list[str], frames_per_sequence: int = 9):
    """A subject folder with the tiny subject's KRT and a frame list of `sequences` (consecutive
    frame numbers), enough for the split protocols."""
    subject = tmp_path / "listed"
    subject.mkdir()
    shutil.copy(SubjectLayout(tiny_subject).krt, subject / "KRT")
    entries = [(seq, f"{n:06d}") for seq in sequences for n in range(frames_per_sequence)]
    write_frame_list(SubjectLayout(subject).frame_list, entries)
    return subject


def test_npva_paper_holds_out_the_authors_sequences_every_third_frame(tiny_subject, tmp_path):
    held_out = [PAPER_TEST_SEQUENCES[0], "GAZ_G2_Wide_eyes_Full-led_22"]
    subject = _subject_with(tmp_path, tiny_subject, ["E001_Neutral_Eyes_Open", *held_out])
    split = protocol_split(subject)  # the default: npva-paper, as the subject has those sequences
    assert split.protocol == "npva-paper"
    assert split.test == [(seq, f"{n:06d}") for seq in held_out for n in (0, 3, 6)]
    assert split.train == [("E001_Neutral_Eyes_Open", f"{n:06d}") for n in (0, 3, 6)]
    assert split.train_cameras == split.test_cameras == list(read_krt(subject / "KRT"))
    assert subject_split(subject) == split  # without splits/, the default protocol


def test_generic_protocol_holds_out_a_fraction_or_named_sequences_and_cameras(tiny_subject, tmp_path):
    sequences = [f"SEQ_{i:02d}" for i in range(20)]
    subject = _subject_with(tmp_path, tiny_subject, sequences, frames_per_sequence=2)
    split = protocol_split(subject)  # no npva-paper sequence: generic, 10 % of the sequences
    assert split.protocol == "generic"
    assert sorted({seq for seq, _ in split.test}) == ["SEQ_05", "SEQ_15"]
    assert len(split.train) + len(split.test) == 40
    cameras = list(read_krt(subject / "KRT"))
    named = protocol_split(subject, "generic", test_sequences=["SEQ_03"], test_cameras=cameras[:1], every=2)
    assert named.test == [("SEQ_03", "000000")] and len(named.train) == 19
    assert named.test_cameras == cameras[:1] and named.train_cameras == cameras[1:]


def test_split_command_writes_splits_and_refuses_to_overwrite(tiny_subject, tmp_path, capsys):
    subject = _subject_with(tmp_path, tiny_subject, ["A_one", "B_two", "C_three"])
    camera = next(iter(read_krt(subject / "KRT")))
    args = ["split", str(subject), "--protocol", "generic", "--test-sequences", "B_two"]
    assert main([*args, "--test-cameras", camera]) == 0
    assert "split generic: 18 train and 9 test frames (held out: B_two)" in capsys.readouterr().out
    layout = SubjectLayout(subject)
    assert {seq for seq, _ in read_frame_list(layout.split_list("test"))} == {"B_two"}
    assert read_camera_split(layout.camera_split)["test"] == [camera]
    assert main(args) == 3
    assert "exists already" in capsys.readouterr().err
    with pytest.raises(NpvaError, match="none of the npva-paper held-out sequences"):
        protocol_split(subject, "npva-paper")
