"""benchmarks/bench_fidelity.py: the table of means and worst subjects, and a run end to end (tiny)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_fidelity.py"
_SPEC = importlib.util.spec_from_file_location("bench_fidelity", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = bench  # dataclasses look their module up
_SPEC.loader.exec_module(bench)


def _scores(seed: int, avatar: float, floor: float) -> object:
    """A subject whose avatar and floor score `avatar` and `floor` dB (SSIM a hundredth of that) in
    every region and protocol, but no mouth pixels in the held-out protocol."""
    summary = {}
    for protocol in bench.PROTOCOLS:
        summary[protocol] = {
            who: {region: {"psnr": value, "ssim": value / 100} for region in bench.REGIONS}
            for who, value in (("avatar", avatar), ("baseline", floor))
        }
        if protocol == "held-out":
            for who in ("avatar", "baseline"):
                summary[protocol][who]["mouth"] = {"images": 0, "psnr": None, "ssim": None}
    return bench.SubjectScores(seed, summary)


def test_table_gives_means_and_the_worst_subject():
    subjects = [_scores(0, 26.0, 25.0), _scores(1, 24.0, 25.5), _scores(2, 27.0, 26.0)]
    lines = bench.table(subjects).splitlines()
    assert len(lines) == 1 + len(bench.PROTOCOLS) * len(bench.REGIONS)
    mask = next(line for line in lines if line.startswith("authors") and " mask " in line)
    # means: avatar 25.67, floor 25.5, margin (1 - 1.5 + 1) / 3; worst: seed 1 at -1.5 dB
    assert "25.67 / 0.257" in mask and "25.50 / 0.255" in mask
    assert "+0.17" in mask and "-1.50 (1)" in mask
    mouth = next(line for line in lines if line.startswith("held-out") and " mouth " in line)
    assert mouth.split()[-2:] == ["n/a", "n/a"] and math.isnan(subjects[0].margin("held-out", "mouth"))


@pytest.mark.slow
def test_runs_end_to_end_on_the_tiny_preset(tmp_path, capsys):
    """One tiny subject, one training step per protocol: both protocols scored with the floor."""
    out, record = tmp_path / "bench", tmp_path / "scores.json"
    args = ["--preset", "tiny", "--subjects", "1", "--out", str(out), "--json", str(record), "--workers", "1"]
    assert bench.main([*args, "--set", "train.epochs=1", "--set", "train.val_every=0"]) == 0
    printed = capsys.readouterr().out
    assert "preset tiny, variant capture, cameras preset, 1 subjects" in printed
    assert sum(line.startswith(("authors", "held-out")) for line in printed.splitlines()) == 6
    scores = json.loads(record.read_text())["subjects"][0]["summary"]
    for protocol in bench.PROTOCOLS:
        for who in ("avatar", "baseline"):
            for region in ("image", "mask"):
                assert 5.0 < scores[protocol][who][region]["psnr"] < 60.0
    assert scores["authors"]["avatar"]["image"]["images"] != scores["held-out"]["avatar"]["image"]["images"]
