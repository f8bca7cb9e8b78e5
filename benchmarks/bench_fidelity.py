"""Fidelity of a training preset on several synthetic subjects against the textured-mesh floor.

    python benchmarks/bench_fidelity.py --preset demo --subjects 4 --out bench_fidelity_out
        [--variant capture] [--cameras preset|dome] [--set KEY=VALUE ...] [--json results.json]
        [--workers N]

For each subject (seeds 0 .. N-1 of `npva synth --variant VARIANT --cameras LAYOUT` at the preset's
size): synth,
preprocess, then per protocol a training run of the same-named training preset and `npva metrics`
with the baseline (the tracked mesh textured with its frame's average texture, the floor), on the
subject's test frames (held-out sequences: novel expressions and a novel sentence):

- "authors": trained on every camera, scored from the training cameras (novel expressions seen from
  cameras training saw, the authors' protocol);
- "held-out": trained with data.camera_split=true, scored from the test cameras, which training did
  not see.

Printed per protocol and region (image, mask, mouth): the mean over subjects of PSNR / SSIM of the
avatar and of the floor, the mean margin (avatar - floor, PSNR dB) and the worst subject's margin.
A re-run with the same --out continues: a subject already written, preprocessed or trained is kept
(runs resume), the scores are measured again. docs/fidelity.md has what it measures and results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROTOCOLS = {
    # name: (train with the camera split, the cameras scored)
    "authors": (False, "train"),
    "held-out": (True, "test"),
}
REGIONS = ("image", "mask", "mouth")


@dataclass
class SubjectScores:
    """One subject's summaries per protocol: summary[protocol][avatar|baseline][region][psnr|ssim]."""

    seed: int
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def value(self, protocol: str, who: str, region: str, metric: str) -> float:
        """A mean score; NaN where the region was empty in every image."""
        value = self.summary[protocol][who][region].get(metric)
        return float("nan") if value is None else float(value)

    def margin(self, protocol: str, region: str) -> float:
        """Avatar PSNR minus floor PSNR (dB)."""
        return self.value(protocol, "avatar", region, "psnr") - self.value(
            protocol, "baseline", region, "psnr"
        )


def prepare_subject(out: Path, preset: str, seed: int, variant: str, cameras: str, workers: int) -> Path:
    """Write and preprocess subject `seed` under out/subject_<seed> (kept when done before)."""
    from npva.config import PreprocessConfig
    from npva.preprocess import preprocess_subject
    from npva.synth import write_subject
    from npva.train.presets import preset_config

    subject, written = out / f"subject_{seed}", out / f"subject_{seed}.written"
    if not written.is_file():
        summary = write_subject(
            subject, preset=preset, seed=seed, variant=variant, cameras=cameras, workers=workers
        )
        print(summary, flush=True)
        written.touch()
    config = PreprocessConfig(uv_size=preset_config(preset).model.posmap_size)
    summary = preprocess_subject(subject, config, workers=workers, progress=False)
    if summary.failed:
        raise RuntimeError(f"preprocessing {subject} failed for {summary.failed} outputs")
    return subject


def train_and_score(subject: Path, run_dir: Path, preset: str, protocol: str, overrides: list[str]) -> dict:
    """Train (or resume) the run of one protocol and score its test frames with the floor beside;
    returns the metrics summary."""
    from npva.eval.loading import evaluation_dataset, open_checkpoint
    from npva.eval.metrics import evaluate_checkpoint
    from npva.train import build_config, train

    camera_split, cameras = PROTOCOLS[protocol]
    settings = [f"data.camera_split={str(camera_split).lower()}", "train.progress=false", *overrides]
    train(subject, run_dir, build_config(preset, overrides=settings))
    ctx = open_checkpoint(run_dir, subject=subject)
    dataset = evaluation_dataset(ctx, "test", [cameras])
    report = evaluate_checkpoint(
        ctx, dataset, "standard", baseline=True, out_dir=run_dir / "metrics", progress=False
    )
    return report.to_json()["summary"]


def run_subject(out: Path, args: argparse.Namespace, seed: int) -> SubjectScores:
    """Write, preprocess, train and score subject `seed` of the command line's settings."""
    preset, overrides = args.preset, args.set
    scores = SubjectScores(seed)
    start = time.perf_counter()
    subject = prepare_subject(out, preset, seed, args.variant, args.cameras, args.workers)
    scores.seconds["data"] = time.perf_counter() - start
    for protocol in PROTOCOLS:
        start = time.perf_counter()
        run_dir = out / f"run_{seed}_{protocol}"
        scores.summary[protocol] = train_and_score(subject, run_dir, preset, protocol, overrides)
        scores.seconds[protocol] = time.perf_counter() - start
    return scores


def table(subjects: list[SubjectScores]) -> str:
    """Per protocol and region: mean avatar and floor PSNR / SSIM, mean margin, worst subject's margin
    (n/a: the region was empty in every image, e.g. a mouth of too few texels)."""
    lines = [
        f"{'protocol':10} {'region':7} {'avatar PSNR/SSIM':>18} {'floor PSNR/SSIM':>18} {'margin dB':>10} "
        f"{'worst (seed)':>14}"
    ]
    for protocol in PROTOCOLS:
        for region in REGIONS:
            cells = []
            for who in ("avatar", "baseline"):
                psnr = statistics.mean(s.value(protocol, who, region, "psnr") for s in subjects)
                ssim = statistics.mean(s.value(protocol, who, region, "ssim") for s in subjects)
                cells.append(f"{psnr:.2f} / {ssim:.3f}")
            scored = [s for s in subjects if not math.isnan(s.margin(protocol, region))]
            worst = f"{'n/a':>14}"
            if scored:
                low = min(scored, key=lambda s: s.margin(protocol, region))
                worst = f"{low.margin(protocol, region):>+8.2f} ({low.seed})"
            mean_margin = statistics.mean(s.margin(protocol, region) for s in subjects)
            margin = f"{'n/a':>10}" if math.isnan(mean_margin) else f"{mean_margin:>+10.2f}"
            lines.append(f"{protocol:10} {region:7} {cells[0]:>18} {cells[1]:>18} {margin} {worst}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset", default="demo", choices=("tiny", "demo", "full"), help="synth and training"
    )
    parser.add_argument("--subjects", type=int, default=3, help="seeds 0 .. N-1")
    parser.add_argument("--variant", default="capture", help="npva synth variant of the subjects")
    parser.add_argument(
        "--cameras", default="preset", choices=("preset", "dome"), help="npva synth camera layout"
    )
    parser.add_argument("--out", required=True, help="working directory (subjects, runs); a re-run continues")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training setting")
    parser.add_argument("--json", help="also write the scores here")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="synth, preprocess")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    subjects = []
    for seed in range(args.subjects):
        subjects.append(run_subject(out, args, seed))
        print(
            f"subject {seed}: " + ", ".join(f"{k} {v:.0f} s" for k, v in subjects[-1].seconds.items()),
            flush=True,
        )
    settings = " ".join(args.set) or "the preset's"
    print(
        f"preset {args.preset}, variant {args.variant}, cameras {args.cameras}, {len(subjects)} subjects, "
        f"settings: {settings}"
    )
    print(table(subjects))
    if args.json:
        record = {
            "preset": args.preset,
            "variant": args.variant,
            "cameras": args.cameras,
            "settings": args.set,
            "subjects": [{"seed": s.seed, "seconds": s.seconds, "summary": s.summary} for s in subjects],
        }
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
