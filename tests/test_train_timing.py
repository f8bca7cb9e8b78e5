"""Per-stage step timing: the stage marks, and a profiled training run's records."""

from __future__ import annotations

import json
import time
from pathlib import Path

from npva.timing import STAGES, StageTimer, stage
from npva.train import build_config, train


def test_stages_count_only_under_an_active_timer():
    timer = StageTimer()
    with stage("decoding"):
        time.sleep(0.01)
    assert timer.take() == {}
    with timer.active():
        with stage("decoding"):
            time.sleep(0.02)
        with stage("decoding"):
            time.sleep(0.01)
        with stage("backward"):
            pass
    taken = timer.take()
    assert set(taken) == {"decoding", "backward"}
    assert 0.03 <= taken["decoding"] < 0.5
    assert timer.take() == {}


def test_profiled_run_records_every_stage_and_the_median_step(tiny_subject: Path, gendir: Path, tmp_path):
    config = build_config(
        "tiny",
        overrides=["train.epochs=4", "train.val_every=0", "train.profile_stages=true", "train.log_every=2"],
    )
    result = train(tiny_subject, tmp_path / "run", config, gendir=gendir)
    timing = result.timing
    assert timing["steps"] == 4
    assert set(timing["stage_seconds"]) == set(STAGES)
    assert all(seconds > 0 for seconds in timing["stage_seconds"].values())
    assert sum(timing["stage_seconds"].values()) <= timing["mean_step_seconds"]  # disjoint stages
    assert all(f"time_{name}" in result.log[-1] for name in STAGES)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["timing"]["median_step_seconds"] == timing["median_step_seconds"] > 0
