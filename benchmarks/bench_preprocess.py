"""Per-frame cost of preprocessing on one CPU thread: a position map and a coverage mask.

    .venv/bin/python benchmarks/bench_preprocess.py [--uv-size 256] [--height 1024] [--width 667]

Uses the tracked mesh of the tiny synthetic subject (written to a temporary folder). The position map
reuses the UV rasterization of the fixed layout (done once per run, timed separately); the mask is a
z-buffer pass of the tracked mesh in a camera at the training size.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from npva.geometry.mesh import to_face_frame
from npva.geometry.posmap import PositionMapSampler
from npva.geometry.raster import coverage_mask, rasterize_camera
from npva.io.multiface import read_frame_list, read_krt, read_obj, read_transform
from npva.io.subject import SubjectLayout
from npva.synth import write_subject


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uv-size", type=int, default=256)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=667)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        subject = Path(tmp) / "tiny"
        write_subject(subject, preset="tiny", seed=0)
        layout = SubjectLayout(subject)
        seq, frame = read_frame_list(layout.frame_list)[0]
        mesh = read_obj(layout.mesh_obj(seq, frame))
        R, t = read_transform(layout.transform(seq, frame))
        camera = next(iter(read_krt(layout.krt).values()))
    camera = camera.with_size(128, 84).resized(args.height, args.width)
    print(f"tracked mesh: {len(mesh.verts)} vertices, {len(mesh.faces)} faces; 1 CPU thread")
    start = time.perf_counter()
    sampler = PositionMapSampler(mesh, args.uv_size)
    print(f"UV layout rasterization (once per run)   {1000 * (time.perf_counter() - start):8.1f} ms")
    face = to_face_frame(mesh.verts, R, t)
    posmap = median_ms(lambda: sampler.position_map(face), args.repeats)
    print(f"position map {args.uv_size}x{args.uv_size} (per frame)        {posmap:8.1f} ms")
    verts = torch.as_tensor(mesh.verts)
    faces = torch.as_tensor(mesh.faces)
    mask = median_ms(lambda: coverage_mask(verts, faces, camera), args.repeats)
    print(f"mask {args.height}x{args.width} (per frame and camera)      {mask:8.1f} ms")
    zbuffer = median_ms(lambda: rasterize_camera(verts, faces, camera).face_id >= 0, args.repeats)
    print(f"z-buffer coverage {args.height}x{args.width} (reference)     {zbuffer:8.1f} ms")


if __name__ == "__main__":
    main()
