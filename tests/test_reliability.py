"""Reliability on the tiny subject: names that would leave their folder, damaged checkpoints and pruning,
the run lock, operating-system errors at the command line, writes that check what they wrote."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from npva.cli import main
from npva.data import gendir as gd
from npva.errors import FormatError
from npva.fileio import atomic_open, atomic_path, remove_temporaries
from npva.io.multiface import read_camera_split, read_frame_list, read_krt
from npva.io.subject import SubjectLayout
from npva.train import checkpoint as ckpt
from npva.train.engine import run_lock


@pytest.fixture
def subject(tiny_subject: Path, tmp_path: Path) -> Path:
    """A copy of the tiny subject without its preprocessing output, to damage."""
    copy = tmp_path / "subject"
    shutil.copytree(tiny_subject, copy, ignore=shutil.ignore_patterns("gendir"))
    return copy


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- names read from a subject ---------------------------------------------------------------------


def test_absolute_camera_name_is_refused_and_its_folder_untouched(subject, tmp_path, capsys):
    layout = SubjectLayout(subject)
    seq, frame = read_frame_list(layout.frame_list)[0]
    victim = tmp_path / "victim"
    victim.mkdir()
    shutil.copy(layout.image(seq, "400029", frame), victim / f"{frame}.png")
    before = _files(victim)
    krt = layout.krt.read_text().splitlines()
    line = krt.index("400008") + 1
    krt[line - 1] = str(victim)
    layout.krt.write_text("\n".join(krt) + "\n")

    assert main(["preprocess", str(subject), "--uv-size", "32", "--no-progress"]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{layout.krt}:{line}: expected a camera name that is a plain file name" in err
    assert _files(victim) == before and not (subject / "gendir").exists()
    assert main(["check", str(subject)]) == 1
    assert "NOT usable" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "text", "reader", "line"),
    [
        ("KRT", "../../x\n", read_krt, 1),
        ("frame_list.txt", "E001 000001\n../evil 000002\n", read_frame_list, 2),
        ("list.txt", "E001\u200b 000001\n", read_frame_list, 1),
        ("list.txt", "C:evil 000001\n", read_frame_list, 1),
        ("split.json", '{"train": ["400029", "/abs"], "test": []}', read_camera_split, 1),
    ],
)
def test_names_that_are_not_plain_file_names_are_refused(tmp_path, name, text, reader, line):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(FormatError, match="plain file name") as caught:
        reader(path)
    assert caught.value.line == line and caught.value.path == path


def test_byte_order_mark_is_not_part_of_a_sequence_name(tmp_path):
    path = tmp_path / "frame_list.txt"
    path.write_bytes("\ufeffE001_Neutral_Eyes_Open 000001\n".encode())
    assert read_frame_list(path) == [("E001_Neutral_Eyes_Open", "000001")]


def test_symbolic_link_inside_the_gendir_is_refused(tiny_subject, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "g"
    out.mkdir()
    (out / "rast_mask").symlink_to(outside, target_is_directory=True)
    args = ["preprocess", str(tiny_subject), "--uv-size", "32", "--gendir", str(out), "--no-progress"]
    assert main(args) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "symbolic link inside the output folder" in err
    assert not any(outside.iterdir())


# ---- checkpoints -----------------------------------------------------------------------------------


def _tiny_run_arguments(subject: Path, gendir: Path, run_dir: Path) -> list[str]:
    """`npva train` arguments with the settings of the tiny_checkpoint fixture's run."""
    settings = ["train.epochs=10", "train.val_every=0", "train.keep_checkpoints=1"]
    args = ["train", str(subject), "--out", str(run_dir), "--gendir", str(gendir), "--preset", "tiny"]
    return args + [f"--set={setting}" for setting in settings]


def test_damaged_only_checkpoint_is_set_aside_not_counted(tiny_subject, gendir, tiny_checkpoint, tmp_path):
    run_dir = tmp_path / "run"
    damaged = ckpt.checkpoint_path(run_dir, 10)
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(tiny_checkpoint.read_bytes()[:100000])

    assert main([*_tiny_run_arguments(tiny_subject, gendir, run_dir), "--set", "train.stop_after=3"]) == 0
    names = sorted(p.name for p in ckpt.checkpoint_dir(run_dir).iterdir())
    assert names == ["step_00000003.pt", "step_00000010.pt.damaged"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert Path(summary["checkpoint"]).is_file() and summary["step"] == 3
    assert not (run_dir / "train.lock").exists()


def test_pruning_keeps_the_newest_good_checkpoint(tmp_path):
    paths = {step: ckpt.checkpoint_path(tmp_path, step) for step in (10, 15, 20, 30)}
    paths[10].parent.mkdir()
    for path in paths.values():
        path.write_bytes(b"checkpoint")
    ckpt.prune_checkpoints(tmp_path, paths[15], keep=1)  # 20 and 30: skipped as damaged on resume
    names = sorted(p.name for p in ckpt.checkpoint_dir(tmp_path).iterdir())
    assert names == ["step_00000015.pt", "step_00000020.pt.damaged", "step_00000030.pt.damaged"]


def test_bit_rot_in_a_checkpoint_is_detected(tiny_checkpoint, tmp_path):
    state = ckpt.load_checkpoint(tiny_checkpoint)
    data = bytearray(tiny_checkpoint.read_bytes())
    tensors = [value for value in state["model"].values() if isinstance(value, torch.Tensor)]
    offset = bytes(data).find(max(tensors, key=torch.Tensor.numel).numpy().tobytes())
    assert offset > 0
    data[offset + 17] ^= 0x10
    rotten = ckpt.checkpoint_path(tmp_path, 10)
    rotten.parent.mkdir()
    rotten.write_bytes(data)
    with pytest.raises(FormatError, match="SHA-256"):
        ckpt.load_checkpoint(rotten)
    assert ckpt.latest_checkpoint(tmp_path) is None


def test_a_second_training_of_one_run_directory_is_refused(tiny_subject, gendir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    with run_lock(run_dir, main_process=True):
        assert main(_tiny_run_arguments(tiny_subject, gendir, run_dir)) == 3
    err = capsys.readouterr().err
    assert f"{run_dir / 'train.lock'}: another training (pid {os.getpid()})" in err
    assert not ckpt.checkpoint_dir(run_dir).exists()


def test_run_lock_removes_temporary_checkpoint_files(tmp_path):
    leftover = ckpt.checkpoint_dir(tmp_path) / ".step_00000010.1a2b3c4d.npva-tmp.pt"
    leftover.parent.mkdir()
    leftover.write_bytes(b"partial")
    with run_lock(tmp_path, main_process=True):
        assert not leftover.exists()


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("posmap_size", "many", "checkpoint settings this npva cannot use"),
        ("posmap_size", 16, "its model does not fit its settings"),
    ],
)
def test_checkpoint_whose_settings_do_not_fit_is_named(tiny_checkpoint, tmp_path, setting, value, message):
    state = ckpt.load_checkpoint(tiny_checkpoint)
    state["config"]["model"][setting] = value
    crafted = tmp_path / "crafted.pt"
    ckpt.save_checkpoint(crafted, state)
    with pytest.raises(FormatError, match=message) as caught:
        ckpt.load_avatar(crafted)
    assert caught.value.path == crafted


@pytest.mark.parametrize(
    "device",
    [
        "cpu",  # checked before the optimizer's step
        pytest.param(  # the fused optimizer skips the step on the device; checked when the step is read
            "cuda",
            marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")],
        ),
    ],
)
def test_divergence_is_the_non_finite_error(tiny_subject, gendir, tmp_path, capsys, device):
    args = _tiny_run_arguments(tiny_subject, gendir, tmp_path / "run")
    settings = ["train.lr=1e3", "train.stop_after=4", f"train.device={device}"]
    assert main([*args, *(f"--set={setting}" for setting in settings)]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "non-finite" in err and "lower train.lr" in err


# ---- operating-system errors and checked writes ----------------------------------------------------


def test_full_disk_is_one_line_with_its_own_exit_status(subject, monkeypatch, capsys):
    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(gd, "write_json", full)
    assert main(["preprocess", str(subject), "--uv-size", "32", "--no-progress"]) == 4
    err = capsys.readouterr().err.strip()
    assert err == f"npva preprocess: error: {subject / 'gendir' / 'manifest.json'}: No space left on device"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs permissions that bind")
def test_read_only_output_folder_is_one_line(subject, tmp_path, capsys):
    out = tmp_path / "read_only"
    out.mkdir()
    out.chmod(0o500)
    try:
        args = ["preprocess", str(subject), "--uv-size", "32", "--gendir", str(out / "g"), "--no-progress"]
        assert main(args) == 4
    finally:
        out.chmod(0o700)
    assert "Permission denied" in capsys.readouterr().err


def test_a_writer_that_writes_nothing_leaves_no_file(tmp_path):
    target = tmp_path / "mask.png"
    with pytest.raises(OSError, match="nothing was written"), atomic_path(target):
        pass  # as cv2.imwrite does on a full disk, reporting success
    assert list(tmp_path.iterdir()) == []


def test_written_files_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        with atomic_open(tmp_path / "a.txt") as f:
            f.write("text")
        gd.write_mask(tmp_path / "m.png", np.ones((4, 4), dtype=bool))
    finally:
        os.umask(previous)
    assert {(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {0o640}


def test_stale_temporary_files_are_removed(tmp_path):
    fresh = tmp_path / "a" / ".0001.deadbeef.npva-tmp.npy"
    stale = tmp_path / "b" / ".0002.deadbeef.npva-tmp.npy"
    for path in (fresh, stale):
        path.parent.mkdir()
        path.write_bytes(b"partial")
    os.utime(stale, (0, 0))
    assert remove_temporaries(tmp_path, min_age_s=3600) == 1
    assert fresh.exists() and not stale.exists()


# ---- bad inputs are skipped and counted -----------------------------------------------------------


def test_truncated_exr_is_malformed_for_check_and_skipped_by_preprocess(subject, capsys):
    layout = SubjectLayout(subject)
    seq, frame = read_frame_list(layout.frame_list)[0]
    depth = layout.mvs_depth(seq, "400029", frame)
    depth.write_bytes(depth.read_bytes()[: depth.stat().st_size // 2])

    assert main(["check", str(subject)]) == 0  # MVS depth is optional
    out = capsys.readouterr().out
    assert f"mvs_depth/{seq}/400029/{frame}.exr: malformed: expected an OpenEXR image" in out
    assert main(["preprocess", str(subject), "--uv-size", "32", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert f"failed: {seq} {frame} camera 400029: {depth}: expected an OpenEXR image" in captured.out
    assert "Traceback" not in captured.err and gd.GenDir(subject / "gendir").pos_mean.is_file()


def test_split_entry_without_frame_leaves_statistics_of_the_others(subject, tmp_path, capsys):
    train_list = SubjectLayout(subject).split_list("train")
    with open(train_list, "a") as f:
        f.write("E001_Neutral_Eyes_Open 999999\n")
    out = tmp_path / "g"
    args = ["preprocess", str(subject), "--uv-size", "32", "--gendir", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert (
        "1 statistics frames left out (not in the frame list), e.g. E001_Neutral_Eyes_Open 999999" in printed
    )
    assert gd.GenDir(out).pos_mean.is_file() and gd.GenDir(out).uv_layout.is_file()


# ---- position maps ---------------------------------------------------------------------------------


def test_non_finite_position_map_is_named(tmp_path):
    path = tmp_path / "000001.npy"
    posmap = np.zeros((4, 4, 3), dtype=np.float32)
    posmap[1, 2, 0] = np.nan
    np.save(path, posmap)
    with pytest.raises(FormatError, match="finite"):
        gd.read_posmap(path, 4)


# ---- photos of the wrong size and split entries beside the frame list ------------------------------


def test_photo_of_another_size_is_reported_and_left_out_of_training(subject, tmp_path, capsys):
    import cv2

    from npva.config import DataConfig
    from npva.data.frames import FrameInputs
    from npva.data.prepared import PreparedSubject
    from npva.data.samples import AvatarDataset, select_samples

    layout = SubjectLayout(subject)
    seq, frame = read_frame_list(layout.split_list("train"))[0]
    photo = layout.image(seq, "400008", frame)
    cv2.imwrite(str(photo), cv2.resize(cv2.imread(str(photo)), (100, 150)))

    assert main(["check", str(subject)]) == 1
    assert "size 150x100 (HxW) differs from" in capsys.readouterr().out
    assert main(["preprocess", str(subject), "--uv-size", "32", "--no-progress"]) == 1
    printed = capsys.readouterr().out
    assert f"failed: {seq} {frame} camera 400008: {photo}: size 150x100 (HxW) differs from 128x84" in printed
    data = DataConfig(image_cache="none")
    prepared = PreparedSubject(subject)
    frames, cameras = select_samples(prepared, data)
    dataset = AvatarDataset(prepared, frames, cameras, data, FrameInputs(texture_size=32, posmap_size=32))
    pairs = {(key[0], key[1], key[2]) for key in dataset.keys}
    assert (seq, frame, "400008") not in pairs and (seq, frame, "400029") in pairs
    assert {dataset[i].targets.image.shape for i in range(len(dataset))} == {(3, 64, 42)}


def test_split_entry_outside_the_frame_list_is_reported_by_check(subject, capsys):
    layout = SubjectLayout(subject)
    listed = read_frame_list(layout.frame_list)
    layout.frame_list.write_text("".join(f"{s} {f}\n" for s, f in listed[1:]))
    assert main(["check", str(subject)]) == 0  # the splits are optional
    seq, frame = listed[0]
    assert f"{seq} {frame}: not in the frame list (preprocessing and training leave it out)" in (
        capsys.readouterr().out
    )


WORKER_PARENT = """
import multiprocessing, os, signal, sys, time
from npva.processes import exit_with_parent

def work():
    exit_with_parent(poll_seconds=0.1)
    time.sleep(60)

if __name__ == "__main__":
    child = multiprocessing.get_context("spawn").Process(target=work)
    child.start()
    time.sleep(3)  # the child has started its watcher
    with open(sys.argv[1], "w") as f:
        f.write(str(child.pid))
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_worker_ends_when_its_parent_is_killed(tmp_path):
    script, pid_file = tmp_path / "parent.py", tmp_path / "child.pid"
    script.write_text(WORKER_PARENT)
    quiet = subprocess.DEVNULL  # the orphan must not hold a pipe this test waits on
    subprocess.run([sys.executable, str(script), str(pid_file)], stdout=quiet, stderr=quiet, timeout=60)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = Path(f"/proc/{child}").exists()
    if alive:
        os.kill(child, 9)
    assert not alive, "the worker outlived its killed parent"


def test_render_refuses_a_symbolic_link_inside_its_output_folder(
    tiny_checkpoint, tiny_subject, gendir, tmp_path, capsys
):
    frames = tmp_path / "frames.txt"
    seq, frame = read_frame_list(SubjectLayout(tiny_subject).split_list("test"))[0]
    frames.write_text(f"{seq} {frame}\n")
    out, elsewhere = tmp_path / "render", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / seq).symlink_to(elsewhere, target_is_directory=True)
    args = ["render", str(tiny_checkpoint), "--img-list", str(frames), "--cameras", "400029", "--preview"]
    args += ["--subject", str(tiny_subject), "--gendir", str(gendir), "--out", str(out), "--no-progress"]
    assert main(args) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "a symbolic link inside the output folder" in err
    assert not any(elsewhere.iterdir())
