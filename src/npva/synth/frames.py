"""Writing the frames of a synthetic capture, in this process or in worker processes.

The work is split into tasks of one frame and a group of its views (cameras, and the frame's own
files as one more view, TEXTURE), enough tasks that every worker has several: a full capture has
fewer frames than a machine has cores. Every file depends only on the seed, its frame and its
camera, so the result does not depend on the workers or the split."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from npva.io import SubjectLayout, write_bin, write_depth, write_image, write_obj, write_transform
from npva.synth.capture import SyntheticCapture
from npva.synth.render import Scene
from npva.synth.scene import FrameKey, get_preset
from npva.synth.sheet import TEXTURE, Tile, to_tile

# Tasks per worker process: more tasks even out the workers' loads at the end of the run, but each
# rebuilds its frame's scene (about 3% of rendering one camera in the full preset, 15% in the demo).
TASKS_PER_WORKER = 4


@dataclass(frozen=True)
class FrameTask:
    """Views of one frame to write: camera names, and TEXTURE for the files of the frame that no
    camera sees (tracked mesh obj and bin, head pose, average texture)."""

    key: FrameKey
    views: tuple[str, ...]


def plan_tasks(frames: list[FrameKey], cameras: tuple[str, ...], workers: int) -> list[FrameTask]:
    """Every frame's views (TEXTURE, then the cameras) in consecutive groups of near equal size, as
    many groups per frame as make TASKS_PER_WORKER tasks per worker (one for a single worker; at most
    one group per view)."""
    views = (TEXTURE, *cameras)
    groups = 1 if workers <= 1 else min(len(views), -(-TASKS_PER_WORKER * workers // len(frames)))
    bounds = [len(views) * i // groups for i in range(groups + 1)]
    return [
        FrameTask(key, views[start:stop])
        for key in frames
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True)
    ]


class FrameWriter:
    """Writes the files of frame tasks: images (photos) and depth maps per camera; tracked mesh (obj,
    bin), head pose and average texture for TEXTURE."""

    def __init__(
        self,
        preset: str,
        seed: int,
        root: Path,
        wanted: set[Tile],
        variant: str = "clean",
        cameras: str = "preset",
    ):
        self.capture = SyntheticCapture(get_preset(preset, cameras), seed, variant)
        self.layout = SubjectLayout(root)
        self.wanted = wanted

    def write(self, task: FrameTask) -> dict[Tile, np.ndarray]:
        """Write the task's views; return those among `wanted` as contact sheet tiles."""
        key = task.key
        expr, pose = self.capture.expression(key), self.capture.pose(key)
        scene = self.capture.scene(expr, pose)
        tiles = {}
        for name in task.views:
            if name == TEXTURE:
                image = self._write_frame_files(key, pose, scene)
            else:
                image = self._write_camera(key, scene, name)
            if (key.sequence, key.frame, name) in self.wanted:
                tiles[key.sequence, key.frame, name] = to_tile(image)
        return tiles

    def _write_frame_files(
        self, key: FrameKey, pose: tuple[np.ndarray, np.ndarray], scene: Scene
    ) -> np.ndarray:
        """Write the tracked mesh (obj, bin), head pose and average texture; return the texture (S, S, 3)."""
        capture, layout = self.capture, self.layout
        seq, frame = key.sequence, key.frame
        mesh = capture.tracker_output(key)
        write_obj(layout.mesh_obj(seq, frame), mesh)
        write_bin(layout.mesh_bin(seq, frame), mesh.verts)
        write_transform(layout.transform(seq, frame), *pose)
        texture = capture.frame_texture(key, scene, mesh)
        write_image(layout.average_texture(seq, frame), texture)
        return texture

    def _write_camera(self, key: FrameKey, scene: Scene, name: str) -> np.ndarray:
        """Write the image and MVS depth map of camera `name`; return the image (H, W, 3)."""
        capture, layout = self.capture, self.layout
        view = capture.render(scene, capture.cameras[name])
        image = capture.photo(view.image, key, name)
        write_image(layout.image(key.sequence, name, key.frame), image)
        write_depth(layout.mvs_depth(key.sequence, name, key.frame), capture.depth(view, key, name))
        return image


def write_frames(
    preset: str,
    seed: int,
    root: Path,
    frames: list[FrameKey],
    wanted: set[Tile],
    workers: int,
    variant: str = "clean",
    cameras: str = "preset",
) -> dict[Tile, np.ndarray]:
    """Write all frames of the subject (seed, variant) seen by the camera layout `cameras` with
    `workers` processes (1: in this process); return the wanted images."""
    tasks = plan_tasks(frames, get_preset(preset, cameras).cameras, workers)
    total = sum(len(task.views) for task in tasks)
    tiles: dict[Tile, np.ndarray] = {}
    with tqdm(desc=f"npva synth {preset}", unit="image", total=total, disable=None) as progress:
        for task, task_tiles in zip(
            tasks, _run(tasks, (preset, seed, root, wanted, variant, cameras), workers), strict=True
        ):
            tiles.update(task_tiles)
            progress.update(len(task.views))
    return tiles


def _run(tasks: list[FrameTask], writer_args: tuple, workers: int) -> Iterator[dict[Tile, np.ndarray]]:
    """The tiles of each task, in order, written in this process (workers <= 1) or by a pool of at
    most `workers` processes, by FrameWriters of `writer_args`."""
    if workers <= 1:
        with torch_threads(1):
            writer = FrameWriter(*writer_args)
            for task in tasks:
                yield writer.write(task)
        return
    # Fresh interpreters (spawn): forking a process whose torch thread pool is running can hang.
    context = multiprocessing.get_context("spawn")
    workers = min(workers, len(tasks))
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker, initargs=writer_args
    ) as pool:
        yield from pool.map(_write_in_worker, tasks)


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


def _start_worker(*writer_args) -> None:
    global _worker
    torch.set_num_threads(1)
    _worker = FrameWriter(*writer_args)


def _write_in_worker(task: FrameTask) -> dict[Tile, np.ndarray]:
    assert _worker is not None, "worker process not initialized"
    return _worker.write(task)
