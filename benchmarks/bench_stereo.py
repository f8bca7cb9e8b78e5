"""Depth against the synthetic subject's true depth, per region, and the time of stereo per view.

    .venv/bin/python benchmarks/bench_stereo.py accuracy SUBJECT [--gendir NAME=DIR ...] [--stereo NAME]
        [--set field=value ...] [--every N] [--preset demo] [--seed 0]
    .venv/bin/python benchmarks/bench_stereo.py time [--device cpu|cuda] [--height 1024] [--width 667]

`accuracy` compares depth maps with the true depth of a subject written by `npva synth` (its preset and
seed): the true scene of each frame is rendered into each camera at the training size, its materials
give the regions (skin; mouth interior: teeth, tongue and cavity; hair). Sources: the depth maps of
preprocessed gendirs (`--gendir stereo=S/gendir_stereo`), or stereo computed here with settings changed
by `--set` (`--stereo NAME`, for comparing settings without writing a gendir). Per region: the median
absolute error in mm and the shares within 2 and 5 mm over the pixels that have a depth, the
completeness (the share of the region's pixels that have one), and the share within 2 mm of all the
region's pixels (a hole counts as a miss).

`time` renders one frame of the full synthetic subject at (height, width) from a frontal camera group
and times stereo per view (sweep, refinement and consistency check) on the device.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from npva.data import gendir as gd
from npva.data.prepared import training_camera
from npva.geometry.raster import rasterize_camera
from npva.io.multiface import load_world_verts, read_frame_list, read_image, read_krt, read_obj
from npva.io.subject import SubjectLayout
from npva.preprocess.stereo import StereoSettings, StereoView, frame_depths
from npva.synth.capture import SyntheticCapture
from npva.synth.parts import CAVITY, HAIR, SKIN, TEETH, TONGUE
from npva.synth.scene import FrameKey, capture_frames, get_preset

REGIONS = {"skin": (SKIN,), "mouth interior": (TEETH, TONGUE, CAVITY), "hair": (HAIR,)}
TIME_CAMERAS = ("400029", "400002", "400004", "400007", "400008")  # frontal ring and its neighbours


def _settings(pairs: list[str]) -> StereoSettings:
    """StereoSettings with `field=value` overrides (numbers; band as low,high)."""
    changes = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        changes[key] = tuple(float(v) for v in value.split(",")) if "," in value else float(value)
        if isinstance(getattr(StereoSettings(), key), int):
            changes[key] = int(changes[key])
    return dataclasses.replace(StereoSettings(), **changes)


class Tally:
    """Absolute errors and pixel counts of one depth source, per region."""

    def __init__(self) -> None:
        self.errors = {region: [] for region in REGIONS}
        self.pixels = dict.fromkeys(REGIONS, 0)

    def add(self, depth: np.ndarray, truth: np.ndarray, material: np.ndarray) -> None:
        for region, materials in REGIONS.items():
            inside = np.isin(material, materials) & (truth > 0)
            self.pixels[region] += int(inside.sum())
            known = inside & (depth > 0)
            self.errors[region].append(np.abs(depth[known] - truth[known]))

    def rows(self, name: str) -> list[str]:
        lines = []
        for region in REGIONS:
            errors = np.concatenate(self.errors[region])
            if len(errors) == 0:
                lines.append(f"| {name} | {region} | - | - | - | 0.0 % of {self.pixels[region]} | 0.0 % |")
                continue
            lines.append(
                f"| {name} | {region} | {np.median(errors):.2f} | {100 * np.mean(errors <= 2):.1f} % | "
                f"{100 * np.mean(errors <= 5):.1f} % | {100 * len(errors) / self.pixels[region]:.1f} % | "
                f"{100 * np.sum(errors <= 2) / self.pixels[region]:.1f} % |"
            )
        return lines


def accuracy(args: argparse.Namespace) -> None:
    subject = Path(args.subject)
    layout = SubjectLayout(subject)
    capture = SyntheticCapture(get_preset(args.preset), args.seed)
    krt = read_krt(layout.krt)
    cameras = {name: training_camera(cam, capture.preset.image_size, args.scale) for name, cam in krt.items()}
    listed = set(read_frame_list(layout.frame_list))
    keys = [k for k in capture_frames(capture.preset) if (k.sequence, k.frame) in listed][:: args.every]
    if args.frames:
        keys = [k for k in keys if f"{k.sequence}/{k.frame}" in args.frames]
    sources = dict(pair.split("=", 1) for pair in args.gendir)
    tallies = {name: Tally() for name in [*sources, *([args.stereo] if args.stereo else [])]}
    template = read_obj(
        next(layout.mesh_obj(s, f) for s, f in sorted(listed) if layout.mesh_obj(s, f).is_file())
    )
    faces = torch.as_tensor(template.faces)
    settings = _settings(args.set)
    seconds = 0.0
    for key in keys:
        scene = capture.scene(capture.expression(key), capture.pose(key))
        truths = {name: capture.render(scene, cam) for name, cam in cameras.items()}
        for name, folder in sources.items():
            for cam in cameras:
                depth = gd.read_depth_npz(gd.GenDir(Path(folder)).depth(key.sequence, cam, key.frame))
                tallies[name].add(depth, truths[cam].depth_ss, truths[cam].material_ss)
        if args.stereo:
            verts = torch.as_tensor(load_world_verts(layout, key.sequence, key.frame, len(template.verts)))
            views = {}
            for cam, camera in cameras.items():
                image = read_image(layout.image(key.sequence, cam, key.frame), (camera.height, camera.width))
                prior = rasterize_camera(verts, faces, camera).depth.numpy()
                views[cam] = StereoView(camera, image, prior)
            start = time.perf_counter()
            depths = frame_depths(views, verts.mean(0).numpy(), settings)
            seconds += time.perf_counter() - start
            for cam in cameras:
                tallies[args.stereo].add(depths[cam], truths[cam].depth_ss, truths[cam].material_ss)
        print(f"{key.sequence} {key.frame} done", flush=True)
    print(
        f"{len(keys)} frames x {len(cameras)} cameras" + (f"; stereo {seconds:.1f} s" if args.stereo else "")
    )
    print(
        "| depth | region | median abs error mm | within 2 mm | within 5 mm | completeness "
        "| within 2 mm, of all |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, tally in tallies.items():
        print("\n".join(tally.rows(name)))


def timing(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    capture = SyntheticCapture(get_preset("full"), 0)
    key: FrameKey = capture_frames(capture.preset)[0]
    scene = capture.scene(capture.expression(key), capture.pose(key))
    mesh = capture.tracker_output(key)
    verts, faces = torch.as_tensor(mesh.verts), torch.as_tensor(mesh.faces)
    views = {}
    for name in TIME_CAMERAS:
        camera = capture.cameras[name].resized(args.height, args.width)
        image = capture.render(scene, camera).image
        views[name] = StereoView(camera, image, rasterize_camera(verts, faces, camera).depth.numpy())
    settings = _settings(args.set)
    if device.type == "cuda":
        frame_depths(views, mesh.verts.mean(0), settings, device)  # warm-up: allocations, kernels
    times = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        frame_depths(views, mesh.verts.mean(0), settings, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / len(views))
    threads = torch.get_num_threads()
    print(
        f"stereo at {args.height}x{args.width} on {device} ({threads} CPU threads): "
        f"{np.median(times):.2f} s per view (median of {args.repeats} frames of {len(views)} views)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    acc = sub.add_parser("accuracy")
    acc.add_argument("subject")
    acc.add_argument("--gendir", nargs="*", default=[], metavar="NAME=DIR")
    acc.add_argument("--stereo", metavar="NAME", help="also compute stereo here, named NAME in the table")
    acc.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    acc.add_argument("--every", type=int, default=1, help="every N-th frame")
    acc.add_argument("--frames", nargs="*", default=[], metavar="SEQ/FRAME", help="only these frames")
    acc.add_argument("--preset", default="demo")
    acc.add_argument("--seed", type=int, default=0)
    acc.add_argument("--scale", type=float, default=0.5, help="training size / photo size")
    acc.set_defaults(run=accuracy)
    tim = sub.add_parser("time")
    tim.add_argument("--device", default="cpu")
    tim.add_argument("--height", type=int, default=1024)
    tim.add_argument("--width", type=int, default=667)
    tim.add_argument("--repeats", type=int, default=1)
    tim.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    tim.set_defaults(run=timing)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
