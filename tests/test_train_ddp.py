"""Two training processes under torchrun (gloo on the CPU) keep identical parameters and error maps."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from npva.train import checkpoint as ckpt
from npva.train.distributed import StepOrder

STEPS = 6


@pytest.mark.parametrize("images_per_step", [1, 2])
def test_two_gloo_processes_keep_identical_parameters(tiny_subject, gendir, tmp_path, images_per_step):
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "npva",
        "train",
        str(tiny_subject),
        "--gendir",
        str(gendir),
        "--out",
        str(run_dir),
        "--preset",
        "tiny",
        "--set",
        f"train.epochs={STEPS}",
        "--set",
        "gep.error_start=2",  # grid, error and patch phases within the six steps
        "--set",
        "gep.patch_start=4",
        "--set",
        "train.device=cpu",
        "--set",
        f"train.images_per_step={images_per_step}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("training finished at step 6 of 6") == 1  # rank 0 reports

    state = ckpt.load_checkpoint(ckpt.list_checkpoints(run_dir)[-1])
    assert state["step"] == STEPS and state["data"]["world_size"] == 2
    digests = state["rank_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    avatar, _ = ckpt.load_avatar(ckpt.list_checkpoints(run_dir)[-1])
    assert digests[0]["parameters"] == ckpt.parameter_digest(avatar)
    # rank 0's error maps hold the errors of the images both processes trained on
    num_samples, seed = len(state["data"]["keys"]), state["data"]["seed"]
    orders = [StepOrder(num_samples, rank, 2, seed, 0, STEPS, images_per_step) for rank in (0, 1)]
    seen = {i for order in orders for step in order for i in step}
    counted = state["gep"]["error_count"].sum(dim=(1, 2)) > 0
    assert set(counted.nonzero().flatten().tolist()) == seen and len(seen) > STEPS * images_per_step
    assert len(state["rng"]) == 2 and not state["rng"][0]["torch"].equal(state["rng"][1]["torch"])
