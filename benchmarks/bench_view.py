"""Frame rates of `npva view`: the viewer's pictures of a trained avatar, by mode and progressive level.

    python benchmarks/bench_view.py CHECKPOINT [--height H] [--aspect A] [--device cpu|cuda]
        [--frames 6] [--modes colour depth normals opacity mesh]

Renders what the viewer renders for a browser (npva.view.render.render_image): the frames of the
subject's first sequence in turn, from a free camera 20 degrees beside the default capture camera (a view
no camera had), at the height H (default: the capture camera's at the training size) and each
progressive level below it (H/4, H/2, H on CPU). Prints the median frames per second per mode and level,
warm (the first picture of each is not counted). The GPU figure of docs/viewer.md:

    python benchmarks/bench_view.py RUN --device cuda --height 1024 --aspect 0.6514
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from npva.eval.loading import open_checkpoint
from npva.eval.video import orbit_cameras
from npva.view import open_subject
from npva.view.render import IMAGE_MODES, render_image
from npva.view.scene import scene_point, view_camera
from npva.view.server import CPU_LEVELS, CUDA_LEVELS


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="checkpoint file or run directory")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--height", type=int, help="picture height (default: the capture camera's)")
    parser.add_argument("--aspect", type=float, help="width / height (default: the capture camera's)")
    parser.add_argument("--frames", type=int, default=6, help="pictures per mode and level (one more warms)")
    parser.add_argument("--modes", nargs="+", default=list(IMAGE_MODES), choices=IMAGE_MODES)
    args = parser.parse_args()

    ctx = open_checkpoint(args.checkpoint, device=args.device)
    subject = open_subject(ctx)
    capture = subject.cameras[subject.default_camera]
    height = args.height or capture.height
    aspect = args.aspect or capture.width / capture.height
    beside = orbit_cameras(capture, subject.centre, 4, 20.0)[1]  # 20 degrees to the side
    fov = 2 * np.arctan(0.5 * capture.height / capture.K[1, 1])
    seq, frames = next(iter(subject.sequences.items()))
    levels = CUDA_LEVELS if args.device == "cuda" else CPU_LEVELS
    print(
        f"{ctx.checkpoint} (step {ctx.step}) on {args.device}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f}; {seq}, {len(frames)} frames"
    )
    print(f"{'mode':10s} {'size':>11s} {'fps':>7s} {'ms':>8s}")
    for mode in args.modes:
        for divisor in levels:
            h = max(height // divisor, 8)
            camera = view_camera(
                subject, scene_point(subject, beside.centre), beside.R.T, fov, h, max(round(h * aspect), 8)
            )
            seconds = []
            for index in range(args.frames + 1):
                started = time.perf_counter()
                render_image(subject, seq, frames[index % len(frames)], camera, mode)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                seconds.append(time.perf_counter() - started)
            median = statistics.median(seconds[1:])
            print(
                f"{mode:10s} {camera.width:>5d} x {camera.height:<4d} {1 / median:7.2f} {1000 * median:8.1f}"
            )


if __name__ == "__main__":
    main()
