"""Training step time: the median step, the peak GPU memory and where the time goes, per stage.

    python benchmarks/bench_train.py SUBJECT [--preset full] [--steps 200] [--set key=value ...]

Trains a fresh run of the preset on a preprocessed subject (into a temporary directory unless --out is
given) with train.profile_stages on, then prints the stage split: data (waiting for the loader, moving the
sample, drawing the GEP pixels), networks (encoder and map decoders), rasterization (the coarse UV mesh),
sampling_query (depth-guided candidates, occupancy, neighbour index and query), decoding (neighbour
aggregation, radiance MLPs, compositing), losses and backward (backward pass and optimizer step). Stage
boundaries synchronize the GPU, which costs a little: the median step is also measured in the same run.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import torch

from npva.timing import STAGES
from npva.train import build_config, train


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("subject", help="preprocessed subject directory")
    parser.add_argument("--preset", default="full", choices=("tiny", "demo", "full"))
    parser.add_argument("--steps", type=int, default=200, help="steps to train (from scratch)")
    parser.add_argument("--out", help="run directory (default: a temporary one, removed afterwards)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra settings")
    args = parser.parse_args()

    overrides = [
        f"train.stop_after={args.steps}",
        "train.profile_stages=true",
        "train.val_every=0",
        "train.progress=false",
        *args.set,
    ]
    config = build_config(args.preset, overrides=overrides)
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(args.out) if args.out else Path(scratch) / "run"
        result = train(Path(args.subject), run_dir, config)
    timing = result.timing
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "CPU"
    print(f"{args.preset} preset, {result.step} steps on {device} (torch {torch.__version__})")
    median, mean = timing["median_step_seconds"], timing["mean_step_seconds"]
    print(f"median step {median * 1e3:.1f} ms, mean {mean * 1e3:.1f} ms")
    if "peak_memory_gib" in timing:
        print(f"peak GPU memory {timing['peak_memory_gib']:.2f} GiB (allocated by torch)")
    stages = timing.get("stage_seconds", {})
    total = sum(stages.values()) or 1.0
    for name in STAGES:
        seconds = stages.get(name, 0.0)
        print(f"  {name:15} {seconds * 1e3:9.1f} ms  {100 * seconds / total:5.1f} %")
    last = result.log[-1] if result.log else {}
    if last:
        rays, per_ray = last.get("rays", 0.0), last.get("samples_per_ray", 0.0)
        print(f"last logged: rays {rays:.0f}, shading points per ray {per_ray:.1f}")


if __name__ == "__main__":
    main()
