"""Timings of the rasterizer (npva.geometry.raster) on head-like meshes at the training image size.

    .venv/bin/python benchmarks/bench_raster.py [--device cpu|cuda] [--repeats N]

Cases: a 7k-vertex / 14k-face head-like mesh (an ellipsoid with a nose, the size of a tracked mesh) in a
1024x667 camera and its 256x256 UV position map; the 130k-face UV grid mesh of that position map (the mesh
the model rasterizes every step) in the same camera, with interpolation of 32 feature channels and a
backward pass. Each line gives the median and the minimum wall time over the repeats, after two warm-up
runs; on CPU also the minimum process CPU time (all threads), on CUDA (with torch.cuda.synchronize around
each run) the peak memory allocated during one run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from npva.geometry.camera import Camera, look_at
from npva.geometry.mesh import Mesh, uv_grid_faces, uv_position_map, uv_sphere
from npva.geometry.raster import interpolate, rasterize_camera

HEIGHT, WIDTH = 1024, 667
UV_SIZE = 256


def head_mesh(rings: int = 60, segments: int = 120) -> Mesh:
    """An ellipsoid head (mm, radii 80 x 110 x 95, up = +y) with a nose towards -z."""
    mesh = uv_sphere(rings, segments)
    x, y, z = mesh.verts[:, 0], mesh.verts[:, 2], -mesh.verts[:, 1]  # poles on y, seam at the back
    nose = 0.25 * np.exp(-(x**2 + (y + 0.1) ** 2) / 0.02) * (z < 0)
    unit = np.stack((x, y, z), axis=1)
    verts = unit * (1 + nose[:, None]) * np.array([80.0, 110.0, 95.0])
    return Mesh(verts.astype(np.float32), mesh.faces, mesh.uvs, mesh.face_uvs)


def training_camera() -> Camera:
    """A Multiface-like view at 1024x667: 1 m in front of the head, focal length 3500 px."""
    K = np.array([[3500.0, 0, WIDTH / 2], [0, 3500.0, HEIGHT / 2], [0, 0, 1]])
    return look_at("front", np.array([0, 0, -1000.0]), np.zeros(3), np.array([0, 1.0, 0]), K, HEIGHT, WIDTH)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> dict[str, float]:
    """Milliseconds of fn over `repeats` runs: median and minimum wall time, and minimum process CPU time
    (all threads; on a shared machine less disturbed by other work than wall time); on CUDA also the peak
    memory of one run, MiB."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        sync()
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        walls.append(1e3 * (time.perf_counter() - wall))
        cpus.append(1e3 * (time.process_time() - cpu))
    result = {"median": statistics.median(walls), "min": min(walls), "cpu": min(cpus)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync()
        result["peak"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return result


def report(name: str, result: dict[str, float]) -> None:
    line = f"{name:<50} median {result['median']:8.2f} ms  min {result['min']:8.2f} ms"
    if "peak" in result:
        line += f"  peak {result['peak']:7.1f} MiB"
    else:
        line += f"  cpu time {result['cpu']:8.2f} ms"
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"device {device} ({name or platform.machine()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
    )

    camera = training_camera()
    head = head_mesh()
    verts = torch.as_tensor(head.verts, device=device)
    faces = torch.as_tensor(head.faces, device=device)
    frags = rasterize_camera(verts, faces, camera)
    covered = int((frags.face_id >= 0).sum())
    print(f"head mesh: {len(verts)} vertices, {len(faces)} faces, {covered} pixels covered")
    report(
        f"head rasterize_camera {HEIGHT}x{WIDTH}",
        timed(lambda: rasterize_camera(verts, faces, camera), device, args.repeats),
    )
    report(
        "head interpolate 3 channels", timed(lambda: interpolate(verts, faces, frags), device, args.repeats)
    )
    report(
        f"head uv_position_map {UV_SIZE}x{UV_SIZE}",
        timed(lambda: uv_position_map(verts, faces, head.uvs, head.face_uvs, UV_SIZE), device, args.repeats),
    )

    posmap, mask = uv_position_map(verts, faces, head.uvs, head.face_uvs, UV_SIZE)
    grid_verts = posmap.reshape(-1, 3).contiguous()
    grid_faces = uv_grid_faces(mask).to(device)
    grid_frags = rasterize_camera(grid_verts, grid_faces, camera)
    covered = int((grid_frags.face_id >= 0).sum())
    print(f"UV grid mesh: {len(grid_faces)} faces, {covered} pixels covered")
    report(
        f"grid rasterize_camera {HEIGHT}x{WIDTH}",
        timed(lambda: rasterize_camera(grid_verts, grid_faces, camera), device, args.repeats),
    )
    features = torch.randn(len(grid_verts), 32, device=device)
    report(
        "grid interpolate 32 channels",
        timed(lambda: interpolate(features, grid_faces, grid_frags), device, args.repeats),
    )
    leaf = grid_verts.clone().requires_grad_()

    def forward_backward() -> None:
        out = rasterize_camera(leaf, grid_faces, camera)
        out.depth.sum().backward()
        leaf.grad = None

    report("grid rasterize_camera, depth forward + backward", timed(forward_backward, device, args.repeats))


if __name__ == "__main__":
    main()
