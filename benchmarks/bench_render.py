"""Rendering time per frame: the evaluation render of a trained avatar, stage by stage.

    python benchmarks/bench_render.py CHECKPOINT [--frames 20] [--full] [--kernels auto torch]
        [--precision bf16 fp32] [--graphs on off] [--set render.KEY=VALUE ...] [--profile]

Renders (frame, camera) samples of the checkpoint's subject as `npva render` does (the covered pixels of
the coarse mesh, or every pixel with --full), in evaluation mode without gradient, once per combination
of render.kernels, network precision and CUDA graphs given (default: the Triton kernels, then the plain
PyTorch reference; the precision the run was trained with; the networks replayed from CUDA graphs, as
`npva render` does, or "off": op by op). For each it prints the median milliseconds per
frame (warm, the sample already on the device), the mean seconds per stage (a second pass with stage
boundaries synchronized), the peak GPU memory allocated, the PSNR against the photos inside the coverage
mask, and the speed-up and PSNR change of each combination against the last one. Each --set is one
more combination, compared with the first: its kernels and precision with that render setting
changed. --profile adds the operations taking the most GPU time and the most host time.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time

import torch
from profiling import profiled

from npva.config import apply_overrides
from npva.eval.loading import evaluation_dataset, open_checkpoint
from npva.eval.render import render_view
from npva.model.avatar import PRECISIONS
from npva.timing import STAGES, StageTimer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="checkpoint file or run directory")
    parser.add_argument("--subject", help="subject directory (default: the one trained on)")
    parser.add_argument("--frames", type=int, default=20, help="samples to render per setting")
    parser.add_argument("--full", action="store_true", help="every pixel, not only the covered ones")
    parser.add_argument("--kernels", nargs="+", default=["auto", "torch"], help="render.kernels settings")
    parser.add_argument("--precision", nargs="+", help="network precision(s): bf16, fp32 (default: trained)")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="render.KEY=VALUE",
        help="also render with these render settings changed, separated by spaces (repeatable; e.g. "
        "'render.chunk_rays=400000 render.query.cell_fraction=1.0')",
    )
    parser.add_argument(
        "--graphs", nargs="+", default=["on"], choices=("on", "off"), help="networks from CUDA graphs or not"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--profile", action="store_true", help="print the top GPU and host operations of each setting"
    )
    args = parser.parse_args()

    contexts = {
        graphs: open_checkpoint(args.checkpoint, args.subject, device=args.device, cuda_graphs=graphs == "on")
        for graphs in args.graphs
    }
    ctx = contexts[args.graphs[0]]
    dataset = evaluation_dataset(ctx, "all")
    step = max(1, len(dataset) // args.frames)
    samples = [dataset[i].to(ctx.device) for i in range(0, len(dataset), step)][: args.frames]
    height, width = samples[0].camera.height, samples[0].camera.width
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{len(samples)} frames of {width}x{height}, {'every pixel' if args.full else 'covered pixels'}")
    print(f"device {name}, torch {torch.__version__}, checkpoint step {ctx.step}")
    precisions = args.precision or [ctx.config.train.precision]
    combinations = [(k, p, g, None) for g in args.graphs for p in precisions for k in args.kernels]
    combinations += [(args.kernels[0], precisions[0], args.graphs[0], setting) for setting in args.settings]
    results = []
    for kernels, precision, graphs, setting in combinations:
        avatar = contexts[graphs].avatar
        avatar.autocast_dtype = PRECISIONS[precision] if device.type == "cuda" else None
        config = apply_overrides(ctx.config, setting.split() if setting else [])
        avatar.render_config = dataclasses.replace(config.render, kernels=kernels)
        label = f"render.kernels={kernels}, networks in {precision}, graphs {graphs}"
        label += f", {setting}" if setting else ""
        with profiled(args.profile) as profiler:
            results.append((label, measure(avatar, samples, args.full, device)))
        report(*results[-1])
        if profiler is not None:
            averages = profiler.key_averages()
            print(averages.table(sort_by="self_device_time_total", row_limit=25))
            print(averages.table(sort_by="self_cpu_time_total", row_limit=25))  # the host's launch costs
    base, changed = results[: len(results) - len(args.settings)], results[len(results) - len(args.settings) :]
    compare(base[:-1], base[-1])
    compare(changed, base[0])


def compare(results: list[tuple[str, dict]], reference: tuple[str, dict]) -> None:
    """Print each result's speed-up and PSNR change against the reference result."""
    ref_label, ref = reference
    for label, result in results:
        speedup = ref["median"] / result["median"]
        change = result["psnr"] - ref["psnr"]
        print(f"{label} against {ref_label}: {speedup:.2f}x the speed, PSNR {change:+.3f} dB")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(avatar, samples, full: bool, device: torch.device) -> dict:
    """Median ms per frame, mean ms per stage, peak memory, rays and shading points per frame."""
    for sample in samples[:2]:  # warm-up: compilation, caches, allocator
        render_view(avatar, sample.drive, sample.camera, full)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, rays, shading, squared_errors = [], [], [], []
    for sample in samples:
        synchronize(device)
        start = time.perf_counter()
        view = render_view(avatar, sample.drive, sample.camera, full)
        synchronize(device)
        times.append(time.perf_counter() - start)
        rays.append(view.output.rays.num_samples.shape[0])
        shading.append(int(view.output.rays.num_samples.sum()))
        inside = sample.targets.mask.to(device)
        photo = sample.targets.image.permute(1, 2, 0)
        squared_errors.append(((view.image - photo)[inside] ** 2).mean().item())
    timer = StageTimer(lambda: synchronize(device))
    with timer.active():
        for sample in samples:
            render_view(avatar, sample.drive, sample.camera, full)
    stages = {name: seconds / len(samples) for name, seconds in timer.take().items()}
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {
        "median": statistics.median(times),
        "stages": stages,
        "peak_gib": peak,
        "rays": statistics.mean(rays),
        "shading": statistics.mean(shading),
        "psnr": statistics.mean(-10 * math.log10(max(e, 1e-12)) for e in squared_errors),
    }


def report(label: str, result: dict) -> None:
    print(f"\n{label}: median {result['median'] * 1e3:.1f} ms per frame, PSNR {result['psnr']:.3f} dB")
    print(f"  rays {result['rays']:.0f}, shading points {result['shading']:.0f} per frame")
    print(f"  peak GPU memory {result['peak_gib']:.2f} GiB (allocated by torch)")
    for name in STAGES:
        if name in result["stages"]:
            print(f"  {name:15} {result['stages'][name] * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
