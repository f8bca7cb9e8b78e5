"""Training step time: the median step, the peak GPU memory and where the time goes, per stage.

    python benchmarks/bench_train.py SUBJECT [--preset full] [--steps 200] [--set key=value ...]
    torchrun --standalone --nproc_per_node 2 benchmarks/bench_train.py SUBJECT --out RUN_DIR [...]

Trains a fresh run of the preset on a preprocessed subject (into a temporary directory unless --out is
given) with train.profile_stages on, then prints the stage split: data (waiting for the loader, moving the
sample, drawing the GEP pixels), networks (encoder and map decoders), rasterization (the coarse UV mesh),
sampling_query (depth-guided candidates, occupancy, neighbour index and query), decoding (neighbour
aggregation, radiance MLPs, compositing), losses and backward (backward pass, gradient exchange and
optimizer step). Stage boundaries synchronize the GPU, which costs some time: the step times of such a
run include it. --no-stages trains without the stage timing (and prints no split): the step time of a
user's run, where the host prepares the next step while the GPU still works on this one.

--kernels takes one or more settings of render.kernels ("auto": the Triton kernels on CUDA; "torch": the
plain PyTorch reference), --graphs one or more of train.cuda_graphs ("on": the networks replay CUDA
graphs; "off": op by op) and --compile one or more of render.compile ("on": the radiance decoder and the
compositing compiled by torch.compile; "off": op by op); each combination trains its own fresh run of
the same steps, and the speed-up of each over the last one is printed at the end.

Under torchrun (one process per GPU, each training on its own image every step) it also prints every
process's step times and peak memory, the images per second of all processes together, and whether the
processes' parameters were identical at the end (the digests each one wrote into the last checkpoint).
--json writes the same numbers; --baseline JSON (a one-process run's --json) adds the scaling efficiency:
images per second of this run / (processes x those of the baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch
from profiling import profiled

from npva.fileio import atomic_open
from npva.timing import STAGES
from npva.train import build_config, train
from npva.train import checkpoint as ckpt
from npva.train.distributed import gather_objects, init_distributed, shutdown


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("subject", help="preprocessed subject directory")
    parser.add_argument("--preset", default="full", choices=("tiny", "demo", "full"))
    parser.add_argument("--steps", type=int, default=200, help="steps to train (from scratch), per process")
    parser.add_argument("--out", help="run directory (default: a temporary one, removed afterwards)")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    parser.add_argument("--baseline", help="a one-process run's --json, for the scaling efficiency")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra settings")
    parser.add_argument("--kernels", nargs="+", default=["auto"], help="render.kernels settings to compare")
    parser.add_argument(
        "--graphs", nargs="+", default=["on"], choices=("on", "off"), help="train.cuda_graphs settings"
    )
    parser.add_argument(
        "--compile", nargs="+", default=["off"], choices=("on", "off"), help="render.compile settings"
    )
    parser.add_argument(
        "--no-stages", action="store_true", help="no stage split: the step time without its synchronization"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also print the operations taking the most GPU time (slower)"
    )
    args = parser.parse_args()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not args.out:
        parser.error("under torchrun give --out: the processes must share one run directory")
    settings = [(k, g, c) for k in args.kernels for g in args.graphs for c in args.compile]
    if args.out and len(settings) > 1:
        parser.error("--out holds one run: compare --kernels, --graphs or --compile settings without it")
    if args.out and any(ckpt.checkpoint_dir(Path(args.out)).glob("*.pt")):
        parser.error(f"--out {args.out} already holds a run: the benchmark trains from scratch in a new one")

    baseline = read_baseline(Path(args.baseline)) if args.baseline else None  # before the run, not after
    reports = []
    for kernels, graphs, compiled in settings:
        overrides = [
            f"train.stop_after={args.steps}",
            f"train.profile_stages={str(not args.no_stages).lower()}",
            "train.val_every=0",
            "train.progress=false",
            f"render.kernels={kernels}",
            f"train.cuda_graphs={str(graphs == 'on').lower()}",
            f"render.compile={str(compiled == 'on').lower()}",
            *args.set,
        ]
        config = build_config(args.preset, overrides=overrides)
        report = run_once(args, config, baseline)
        if report is not None:
            reports.append((f"kernels={kernels} graphs={graphs} compile={compiled}", report))
    for label, report in reports[:-1]:
        last_label, last = reports[-1]
        speedup = (
            last["per_process"][0]["median_step_seconds"] / report["per_process"][0]["median_step_seconds"]
        )
        print(f"median step speed-up of {label} over {last_label}: {speedup:.2f}x")


def run_once(args: argparse.Namespace, config: Any, baseline: dict[str, Any] | None) -> dict[str, Any] | None:
    """Train one fresh run; the report on the main process (printed, and written to --json), else None."""
    # joined here so that the group outlives train() for the exchange of timings below
    ctx = init_distributed(config.train.device)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            run_dir = Path(args.out) if args.out else Path(scratch) / "run"
            with profiled(args.profile) as profiler:
                result = train(Path(args.subject), run_dir, config)
            if profiler is not None and ctx.is_main:
                averages = profiler.key_averages()
                print(averages.table(sort_by="self_device_time_total", row_limit=30))
                print(averages.table(sort_by="self_cpu_time_total", row_limit=30))  # the host's launch costs
            timings = gather_objects(result.timing, ctx)
            if not ctx.is_main:
                return None
            report = summarize(args.preset, result, timings)
            report["kernels"] = config.render.kernels
            report["cuda_graphs"] = config.train.cuda_graphs
            report["compile"] = config.render.compile
            if baseline is not None:
                report["scaling_efficiency"] = report["images_per_second"] / (
                    report["processes"] * baseline["images_per_second"]
                )
            print_report(report)
            if args.json:
                with atomic_open(args.json) as f:
                    json.dump(report, f, indent=2)
            return report
    finally:
        shutdown(ctx)


def summarize(preset: str, result: Any, timings: list[dict[str, Any]]) -> dict[str, Any]:
    """The numbers of a run: rank 0's stage split, every process's step times and peak memory, and the
    images per second of all processes together (one image per process and step)."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "CPU"
    processes = len(timings)
    slowest_mean = max(t["mean_step_seconds"] for t in timings)
    report: dict[str, Any] = {
        "preset": preset,
        "device": device,
        "torch": torch.__version__,
        "processes": processes,
        "steps": result.step,
        "per_process": timings,
        "images_per_second": processes / slowest_mean,
        "images_per_second_median": processes / max(t["median_step_seconds"] for t in timings),
    }
    last = result.log[-1] if result.log else {}
    report["rays"], report["shading_points_per_ray"] = last.get("rays"), last.get("samples_per_ray")
    if processes > 1:
        digests = ckpt.load_checkpoint(result.checkpoint)["rank_digests"]
        report["parameters_identical"] = all(d["parameters"] == digests[0]["parameters"] for d in digests)
        report["error_maps_identical"] = all(d["error_maps"] == digests[0]["error_maps"] for d in digests)
    return report


def read_baseline(path: Path) -> dict[str, Any]:
    """A one-process run's --json, the reference of the scaling efficiency: images per second of this
    run over (processes x those of the baseline)."""
    baseline = json.loads(path.read_text())
    if baseline.get("processes") != 1:
        raise SystemExit(f"{path}: the baseline must be a one-process run's --json")
    return baseline


def print_report(report: dict[str, Any]) -> None:
    timing = report["per_process"][0]
    print(
        f"{report['preset']} preset, {report['steps']} steps on {report['processes']} x {report['device']} "
        f"(torch {report['torch']}, render.kernels={report['kernels']}, "
        f"train.cuda_graphs={str(report['cuda_graphs']).lower()}, "
        f"render.compile={str(report['compile']).lower()})"
    )
    print(
        f"median step {timing['median_step_seconds'] * 1e3:.1f} ms, "
        f"mean {timing['mean_step_seconds'] * 1e3:.1f} ms"
    )
    if "peak_memory_gib" in timing:
        print(f"peak GPU memory {timing['peak_memory_gib']:.2f} GiB (allocated by torch)")
    phases = timing.get("phase_median_step_seconds", {})
    print("median step by phase: " + ", ".join(f"{p} {s * 1e3:.1f} ms" for p, s in phases.items()))
    stages = timing.get("stage_seconds", {})
    medians = timing.get("stage_median_seconds", {})
    total = sum(stages.values()) or 1.0
    if stages:
        print(f"  {'stage':15} {'mean':>9}     {'share':>5}   {'median':>8}")
    for name in STAGES if stages else ():
        seconds = stages.get(name, 0.0)
        median = medians.get(name, 0.0)
        print(f"  {name:15} {seconds * 1e3:9.1f} ms  {100 * seconds / total:5.1f} %  {median * 1e3:7.1f} ms")
    if report["rays"] is not None:
        print(
            f"last logged: rays {report['rays']:.0f}, "
            f"shading points per ray {report['shading_points_per_ray']:.1f}"
        )
    if report["processes"] > 1:
        for rank, other in enumerate(report["per_process"]):
            memory = f", peak {other['peak_memory_gib']:.2f} GiB" if "peak_memory_gib" in other else ""
            print(
                f"process {rank}: median step {other['median_step_seconds'] * 1e3:.1f} ms, "
                f"mean {other['mean_step_seconds'] * 1e3:.1f} ms{memory}"
            )
        print(f"parameters identical across processes: {report['parameters_identical']}")
        print(f"error maps identical across processes: {report['error_maps_identical']}")
    print(
        f"images per second, all processes: {report['images_per_second']:.2f} "
        f"(by the median step: {report['images_per_second_median']:.2f})"
    )
    if "scaling_efficiency" in report:
        print(f"scaling efficiency against the one-process baseline: {report['scaling_efficiency']:.1%}")


if __name__ == "__main__":
    main()
