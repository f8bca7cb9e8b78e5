"""The subject of the GPU benchmarks: the full synthetic preset (2048x1334 images, 1024² textures) cut to
fewer cameras, so that writing it takes about a minute on 16 cores.

    python benchmarks/bench_subject.py OUT [--cameras 12] [--seed 0]

The cameras kept are the full preset's test cameras and then the first of the others, in order. The
training step and the rendered frame cost the same as on the whole preset (one image per step); only
the number of images differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from npva.synth import scene, write_subject

CAMERAS_VARIABLE = "NPVA_BENCH_CAMERAS"


def register_preset(cameras: int) -> None:
    """The "bench" preset: the full one with its test cameras and then the first others, `cameras` in
    all."""
    full = scene.get_preset("full")
    others = [name for name in full.cameras if name not in full.test_cameras]
    kept = (*full.test_cameras, *others[: max(0, cameras - len(full.test_cameras))])
    scene.PRESETS["bench"] = dataclasses.replace(full, name="bench", cameras=kept)


# The worker processes (spawned) import this module again and look the preset up by name: the camera
# count reaches them through the environment.
register_preset(int(os.environ.get(CAMERAS_VARIABLE, "12")))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--cameras", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ[CAMERAS_VARIABLE] = str(args.cameras)
    register_preset(args.cameras)
    print(write_subject(args.out, preset="bench", seed=args.seed))


if __name__ == "__main__":
    main()
