"""Writing the frames of a synthetic capture, in this process or in worker processes (one frame per
task; every frame's files depend only on the seed, so the result does not depend on the workers)."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from npva.io import SubjectLayout, write_bin, write_depth, write_image, write_obj, write_transform
from npva.synth.capture import SyntheticCapture
from npva.synth.scene import FrameKey, get_preset
from npva.synth.sheet import TEXTURE, Tile, to_tile


class FrameWriter:
    """Writes every file of one frame: mesh (obj, bin), head pose, images, depth maps, texture."""

    def __init__(self, preset: str, seed: int, root: Path, wanted: set[Tile]):
        self.capture = SyntheticCapture(get_preset(preset), seed)
        self.layout = SubjectLayout(root)
        self.wanted = wanted

    def write(self, key: FrameKey) -> dict[Tile, np.ndarray]:
        """Write the frame; return the images among `wanted` as contact sheet tiles."""
        capture, layout = self.capture, self.layout
        seq, frame = key.sequence, key.frame
        expr, pose = capture.expression(key), capture.pose(key)
        mesh = capture.tracked_mesh(expr, pose)
        write_obj(layout.mesh_obj(seq, frame), mesh)
        write_bin(layout.mesh_bin(seq, frame), mesh.verts)
        write_transform(layout.transform(seq, frame), *pose)
        scene = capture.scene(expr, pose)
        images = {}
        for name, camera in capture.cameras.items():
            view = capture.render(scene, camera)
            write_image(layout.image(seq, name, frame), view.image)
            write_depth(layout.mvs_depth(seq, name, frame), capture.depth(view, key, name))
            images[name] = view.image
        images[TEXTURE] = capture.average_texture(expr, pose, scene, mesh)
        write_image(layout.average_texture(seq, frame), images[TEXTURE])
        return {
            (seq, frame, name): to_tile(image)
            for name, image in images.items()
            if (seq, frame, name) in self.wanted
        }


def write_frames(
    preset: str, seed: int, root: Path, frames: list[FrameKey], wanted: set[Tile], workers: int
) -> dict[Tile, np.ndarray]:
    """Write all frames with `workers` processes (1: in this process); return the wanted images."""
    progress = dict(desc=f"npva synth {preset}", unit="frame", total=len(frames), disable=None)
    tiles: dict[Tile, np.ndarray] = {}
    if workers <= 1:
        with torch_threads(1):
            writer = FrameWriter(preset, seed, root, wanted)
            for key in tqdm(frames, **progress):
                tiles.update(writer.write(key))
        return tiles
    # Fresh interpreters (spawn): forking a process whose torch thread pool is running can hang.
    context = multiprocessing.get_context("spawn")
    init = (preset, seed, root, wanted)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=init) as pool:
        for frame_tiles in tqdm(pool.map(_write_in_worker, frames), **progress):
            tiles.update(frame_tiles)
    return tiles


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run torch with `count` intra-op threads, then restore the setting. The synth's tensors are
    small (one image of a few thousand faces at a time): extra threads cost more than they bring,
    several times more on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


_worker: FrameWriter | None = None  # the FrameWriter of a worker process


def _start_worker(preset: str, seed: int, root: Path, wanted: set[Tile]) -> None:
    global _worker
    torch.set_num_threads(1)
    _worker = FrameWriter(preset, seed, root, wanted)


def _write_in_worker(key: FrameKey) -> dict[Tile, np.ndarray]:
    assert _worker is not None, "worker process not initialized"
    return _worker.write(key)
