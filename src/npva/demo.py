"""`npva demo`: the whole pipeline on the embedded synthetic subject, in one command.

synth -> preprocess -> train -> metrics (with the textured-mesh baseline) -> render -> video, into
one output directory:

    OUT/subject/            the synthetic subject (gendir/ inside: the preprocessing output)
    OUT/run/                the training run (checkpoints, TensorBoard, metrics/, render/, video/)
    OUT/demo.json           the stages finished, their seconds, and the table's numbers

Running it again continues: a finished synth is kept (when its preset and seed match), preprocessing
and training resume from what they wrote, and the evaluation stages run again. The held-out samples
are the test frames (novel expressions and a novel sentence) from the test cameras of the subject's
camera split.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npva.config import PreprocessConfig
from npva.errors import NpvaError
from npva.fileio import atomic_open

log = logging.getLogger(__name__)

PRESETS = ("demo", "tiny")
STATE = "demo.json"
HELD_OUT = "test"  # the frames (split list) and cameras (camera split side) evaluated
TABLE_REGIONS = (("image", "all pixels"), ("mask", "in the mask"), ("mouth", "mouth region"))


@dataclass
class DemoResult:
    """What the demo made: the seconds per stage, the metrics summary and the files to look at."""

    out: Path
    preset: str
    seconds: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    images: list[Path] = field(default_factory=list)
    video: Path | None = None
    metrics_dir: Path | None = None
    protocol: str = ""  # what the table measures (see protocol_line)

    def table(self) -> str:
        """What is measured, PSNR / SSIM of the avatar and of the textured-mesh baseline per region, then
        the times."""
        header = f"{'':22}" + "".join(f"{name:>24}" for _, name in TABLE_REGIONS)
        lines = [f"protocol: {self.protocol}"] if self.protocol else []
        lines += [header, f"{'':22}" + "".join(f"{'PSNR dB / SSIM':>24}" for _ in TABLE_REGIONS)]
        for key, label in (("avatar", "avatar (npva)"), ("baseline", "tracked mesh, avg tex")):
            cells = []
            for region, _ in TABLE_REGIONS:
                scores = self.summary.get(key, {}).get(region, {})
                psnr, ssim = scores.get("psnr"), scores.get("ssim")
                cells.append(f"{_number(psnr, 2)} / {_number(ssim, 4)}")
            lines.append(f"{label:22}" + "".join(f"{cell:>24}" for cell in cells))
        stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.seconds.items())
        lines.append(f"time: {stages}; total {sum(self.seconds.values()) / 60:.1f} min")
        return "\n".join(lines)

    def report(self) -> str:
        lines = [self.table()]
        if self.metrics_dir is not None:
            lines.append(f"metrics: {self.metrics_dir / 'metrics.csv'}, {self.metrics_dir / 'metrics.json'}")
        lines.extend(f"image: {path}" for path in self.images)
        if self.video is not None:
            lines.append(f"video: {self.video}")
        return "\n".join(lines)


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def run_demo(
    out: Path,
    preset: str = "demo",
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Run every stage of the demo into `out` (see the module docstring); `say` reports each stage."""
    if preset not in PRESETS:
        raise NpvaError(f"npva demo runs preset {' or '.join(PRESETS)}, not {preset!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = _read_state(out / STATE)
    if state.get("preset") not in (None, preset) or state.get("seed") not in (None, seed):
        raise NpvaError(
            f"{out / STATE}: this directory holds the demo of preset {state.get('preset')} seed "
            f"{state.get('seed')}; choose another --out"
        )
    state.update(preset=preset, seed=seed)
    state.setdefault("seconds", {})
    result = DemoResult(out=out, preset=preset)
    subject, run_dir = out / "subject", out / "run"
    workers = workers or len(os.sched_getaffinity(0))

    def stage(name: str, work: Callable[[], Any], keep: bool = False) -> Any:
        """Run `work` unless a kept stage (`keep`) finished before; record its seconds."""
        if keep and name in state.get("done", []):
            say(f"npva demo: {name}: done before, kept")
            return None
        say(f"npva demo: {name} ...")
        start = time.perf_counter()
        value = work()
        state["seconds"][name] = time.perf_counter() - start
        if keep:
            state.setdefault("done", []).append(name)
        _write_state(out / STATE, state)
        return value

    stage("synth", lambda: _synth(subject, preset, seed, workers, say), keep=True)
    stage("preprocess", lambda: _preprocess(subject, preset, workers, progress, say))
    stage("train", lambda: _train(subject, run_dir, preset, progress, say))

    from npva.eval.loading import evaluation_dataset, open_checkpoint
    from npva.eval.metrics import default_out_dir

    ctx = open_checkpoint(run_dir, subject=subject)
    dataset = evaluation_dataset(ctx, HELD_OUT, [HELD_OUT])
    result.protocol = protocol_line(ctx.config.data.camera_split, sorted({key.cam for key in dataset.keys}))
    result.metrics_dir = default_out_dir(ctx, "standard")
    report = stage("metrics", lambda: _metrics(ctx, dataset, result.metrics_dir, progress))
    result.summary = report.summary
    result.images = stage("render", lambda: _render(ctx, run_dir, progress))
    if importlib.util.find_spec("av") is None:
        say("npva demo: video: left out, PyAV is not installed (pip install av, or npva[video])")
    else:
        result.video = stage("video", lambda: _video(ctx, run_dir, progress))
    result.seconds = dict(state["seconds"])
    state["summary"] = report.to_json()["summary"]
    _write_state(out / STATE, state)
    return result


def protocol_line(cameras_held_out: bool, cameras: list[str]) -> str:
    """The demo's evaluation protocol in words: the held-out frames, from `cameras`, which training saw
    (the authors' protocol: novel expressions from training cameras) unless `cameras_held_out`."""
    seen = (
        "held out of training"
        if cameras_held_out
        else "which training also saw (novel expressions from training cameras, the authors' protocol)"
    )
    return f"held-out frames (novel expressions, a novel sentence) from cameras {', '.join(cameras)}, {seen}"


def _synth(subject: Path, preset: str, seed: int, workers: int, say: Callable[[str], None]) -> None:
    from npva.synth import write_subject

    say(str(write_subject(subject, preset=preset, seed=seed, workers=workers)))


def _preprocess(subject: Path, preset: str, workers: int, progress: bool, say: Callable[[str], None]) -> None:
    from npva.preprocess import preprocess_subject
    from npva.train.presets import preset_config

    config = PreprocessConfig(uv_size=preset_config(preset).model.posmap_size)
    summary = preprocess_subject(subject, config, workers=workers, progress=progress)
    say(str(summary))
    if summary.failed:
        raise NpvaError(f"preprocessing {subject} failed for {summary.failed} outputs; see the log above")


def _train(subject: Path, run_dir: Path, preset: str, progress: bool, say: Callable[[str], None]) -> None:
    from npva.train import build_config, train

    config = build_config(preset, overrides=[f"train.progress={str(progress).lower()}"])
    say(train(subject, run_dir, config).summary())


def _metrics(ctx, dataset, out_dir: Path, progress: bool):
    from npva.eval.metrics import evaluate_checkpoint

    return evaluate_checkpoint(ctx, dataset, "standard", baseline=True, out_dir=out_dir, progress=progress)


def _render(ctx, run_dir: Path, progress: bool) -> list[Path]:
    """Preview renders of the first held-out frame of each test sequence from the test cameras;
    the paths of their render-beside-photo images."""
    from npva.eval.loading import evaluation_dataset
    from npva.eval.render import render_samples

    frames = _first_frame_per_sequence(ctx)
    list_file = run_dir / "render" / "frames.txt"
    list_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(list_file, "w") as f:
        f.writelines(f"{seq} {frame}\n" for seq, frame in frames)
    dataset = evaluation_dataset(ctx, list_file, [HELD_OUT])
    records = render_samples(ctx, dataset, run_dir / "render", preview=True, progress=progress)
    return [record.files["compare"] for record in records]


def _video(ctx, run_dir: Path, progress: bool) -> Path:
    """An orbit around the replayed held-out frames, the shaded tracked mesh beside the render."""
    from npva.eval.video import make_video

    out_path = run_dir / "video" / "held_out_orbit.mp4"
    return make_video(ctx, HELD_OUT, out_path, orbit=True, prmesh=True, fps=6, progress=progress)


def _first_frame_per_sequence(ctx) -> list[tuple[str, str]]:
    from npva.eval.loading import read_img_list

    first: dict[str, str] = {}
    for seq, frame in read_img_list(ctx, HELD_OUT):
        first.setdefault(seq, frame)
    return list(first.items())


def _read_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise NpvaError(
            f"{path}: not a demo state file ({exc.msg}); remove it or choose another --out"
        ) from None


def _write_state(path: Path, state: dict[str, Any]) -> None:
    with atomic_open(path, "w") as f:
        json.dump(state, f, indent=2)
        f.write("\n")
