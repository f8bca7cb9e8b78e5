"""benchmarks/bench_train.py: its checks of the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"


def test_an_out_directory_that_holds_a_run_is_refused(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "step_00000105.pt").write_bytes(b"")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "subject"), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert f"--out {tmp_path / 'run'} already holds a run" in done.stderr
