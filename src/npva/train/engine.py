"""The training loop (method.md section 8).

train.images_per_step (K) (frame, camera) images per step and process. Step s (counted from 0) belongs
to epoch s / steps_per_epoch: its GEP phase (grid, error, patch) and its learning rate (Adam, multiplied
by lr_decay at each of lr_decay_epochs) follow that epoch, so a short run with few steps per epoch passes
through every phase. Each step renders the GEP pixels of each of its images, computes their losses and
gradients one image after another (averaged over the K images), updates the parameters once, and folds
the per-pixel colour errors into each image's error map. With several processes (torchrun) the
gradients are also averaged over the processes by DDP and every image's error-map statistics are
exchanged, so every process holds the same maps; logging, validation and checkpoint files come from
rank 0.

Randomness. Image j of step s fills slot s * K + j. What an image draws (its GEP pixels, the latent
sample, the jitter of the sampling bins) comes from generators seeded with (seed, slot, rank), and the
data order is a function of (seed, step, rank, number of processes, K) (distributed.StepOrder). A
resumed run continues exactly where the checkpoint left off; the global generator states are saved and
restored as well, for anything that draws from them.

A run directory holds config.yaml (the settings), checkpoints/step_<n>.pt (the newest
train.keep_checkpoints of them), tensorboard/ (scalars and validation images), split/ (the frames and
cameras trained on, the held-out ones and the split protocol, npva.io.splits), train.lock while a
training writes it and, once the run ends, summary.json. Running again with the same directory resumes
from its newest good checkpoint (checkpoint.py says what happens to damaged ones).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from npva import __version__
from npva.config import ExperimentConfig, resumable_settings, save_config, to_dict
from npva.data.gendir import GenDir
from npva.data.prepared import PreparedSubject, read_settings
from npva.data.samples import AvatarDataset, TrainSample, select_samples
from npva.errors import MissingFileError, NonFiniteError, NpvaError
from npva.fileio import atomic_open, remove_temporaries
from npva.io.splits import subject_split
from npva.model.avatar import PRECISIONS, Avatar, frame_inputs
from npva.model.fast.graphs import capture_network_graphs, own_gradients
from npva.model.losses import LossTerms, colour_error
from npva.quality.perceptual import make_perceptual_loss
from npva.quality.psnr import psnr
from npva.timing import STAGES, StageTimer, stage
from npva.train import checkpoint as ckpt
from npva.train.distributed import (
    DistributedContext,
    StepOrder,
    all_gather_rows,
    all_reduce_sum,
    derived_seed,
    gather_objects,
    init_distributed,
    shard_length,
    shutdown,
    wrap_model,
)
from npva.train.gep import PHASES, GEPSampler
from npva.train.presets import presets_of_size

log = logging.getLogger(__name__)

RUN_CONFIG = "config.yaml"
LOCK = "train.lock"
SUMMARY = "summary.json"
TENSORBOARD = "tensorboard"
RUN_SPLIT = "split"  # the split trained with: npva.io.splits files
LOG_KEYS = (
    "loss",
    "psnr",
    *(f.name for f in dataclasses.fields(LossTerms)),
    "grad_norm",
    "rays",
    "samples_per_ray",
    "step_seconds",
    *(f"time_{name}" for name in STAGES),
)


@dataclass
class Validation:
    """Full-image renders of held-out (frame, camera) pairs at one step: PSNR (dB) over the image and
    inside the mask, averaged over the pairs; `samples` has the per-pair values."""

    step: int
    psnr_image: float
    psnr_mask: float
    samples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainResult:
    """What one invocation of `train` did (validation and log records are rank 0's)."""

    run_dir: Path
    step: int
    total_steps: int
    phase: str
    lr: float
    seconds: float
    resumed_from: int | None
    checkpoint: Path | None
    log: list[dict[str, float]] = field(default_factory=list)
    validation: list[Validation] = field(default_factory=list)
    timing: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps

    def summary(self) -> str:
        state = "finished" if self.finished else "stopped"
        start = f"resumed at step {self.resumed_from}" if self.resumed_from is not None else "from scratch"
        lines = [
            f"training {state} at step {self.step} of {self.total_steps} ({start}, {self.seconds:.1f} s); "
            f"phase {self.phase}, lr {self.lr:.3g}"
        ]
        if self.log:
            last = self.log[-1]
            lines.append(
                f"last logged loss {last['loss']:.4f}, PSNR on the sampled rays {last['psnr']:.2f} dB"
            )
        if self.validation:
            val = self.validation[-1]
            lines.append(
                f"held-out PSNR at step {val.step}: {val.psnr_image:.2f} dB image, "
                f"{val.psnr_mask:.2f} dB inside the mask ({len(val.samples)} renders)"
            )
        if self.timing.get("median_step_seconds") is not None:
            lines.append(f"median step {self.timing['median_step_seconds']:.3f} s")
        if self.checkpoint is not None:
            lines.append(f"checkpoint {self.checkpoint}")
        return "\n".join(lines)


def train(
    subject: Path,
    run_dir: Path,
    config: ExperimentConfig,
    gendir: Path | None = None,
    on_step: Callable[[int, Avatar], None] | None = None,
) -> TrainResult:
    """Train (or resume) an avatar of a preprocessed subject in `run_dir`.

    gendir: the preprocessing output, default SUBJECT/gendir. Under torchrun, every process calls this
    with the same arguments. on_step(step, avatar) is called after every step (a live viewer).
    Returns when the run is complete or train.stop_after steps are done.
    """
    ctx = init_distributed(config.train.device)
    try:
        with run_lock(Path(run_dir), ctx.is_main):
            return Trainer(Path(subject), Path(run_dir), config, gendir, ctx, on_step).run()
    finally:
        shutdown(ctx)


@contextlib.contextmanager
def run_lock(run_dir: Path, main_process: bool) -> Iterator[None]:
    """Hold RUN_DIR/train.lock (it records the holder's pid) while the main process trains, after
    removing what killed trainings left behind (temporary checkpoint files); NpvaError while another
    training holds it. A lock whose holder died is taken over."""
    if not main_process:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = filelock.SoftFileLock(run_dir / LOCK, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise NpvaError(
            f"{run_dir / LOCK}: another training (pid {lock.pid}) is writing this run directory; "
            f"wait for it to end or train into another --out"
        ) from None
    try:
        remove_temporaries(ckpt.checkpoint_dir(run_dir))
        yield
    finally:
        lock.release()


def saved_run_config(run_dir: Path) -> ExperimentConfig | None:
    """The settings of the newest checkpoint in `run_dir` (None when it has none), without its
    train.stop_after: that one applies to the invocation that set it, so a resumed run goes on."""
    found = ckpt.latest_checkpoint(Path(run_dir))
    if found is None:
        return None
    config = ckpt.checkpoint_config(found[1])
    return dataclasses.replace(config, train=dataclasses.replace(config.train, stop_after=None))


@dataclass
class PreparedImage:
    """One image of a step: the sample as the loader gave it, its GEP pixels (R, 2) long and the sample
    on the training device (copies possibly still running)."""

    sample: TrainSample
    pixels: torch.Tensor
    on_device: TrainSample


def with_next(items: Iterable[Any]) -> Iterator[tuple[Any, Any | None]]:
    """Each item with the one after it (None with the last)."""
    iterator = iter(items)
    done = object()
    current = next(iterator, done)
    while current is not done:
        upcoming = next(iterator, done)
        yield current, None if upcoming is done else upcoming
        current = upcoming


class RunTiming:
    """Step times of this invocation (with each step's GEP phase) and, when stages are profiled, their
    per-stage seconds."""

    def __init__(self) -> None:
        self.step_seconds: list[float] = []
        self.phases: list[str] = []
        self.stage_seconds: dict[str, list[float]] = {}

    def add(self, scalars: dict[str, float], phase: str) -> None:
        self.step_seconds.append(scalars["step_seconds"])
        self.phases.append(phase)
        for name in STAGES:
            if f"time_{name}" in scalars:
                self.stage_seconds.setdefault(name, []).append(scalars[f"time_{name}"])

    def summary(self, device: torch.device) -> dict[str, Any]:
        """Median and mean step seconds, the median step of each GEP phase, mean and median seconds per
        stage and step, peak CUDA memory (GiB)."""
        steps = len(self.step_seconds)
        timing: dict[str, Any] = {
            "steps": steps,
            "median_step_seconds": float(np.median(self.step_seconds)) if steps else None,
            "mean_step_seconds": float(np.mean(self.step_seconds)) if steps else None,
        }
        times = np.asarray(self.step_seconds)
        phases = np.asarray(self.phases)
        timing["phase_median_step_seconds"] = {
            phase: float(np.median(times[phases == phase])) for phase in PHASES if (phases == phase).any()
        }
        if self.stage_seconds:
            timing["stage_seconds"] = {name: float(np.mean(v)) for name, v in self.stage_seconds.items()}
            timing["stage_median_seconds"] = {
                name: float(np.median(v)) for name, v in self.stage_seconds.items()
            }
        if device.type == "cuda":
            timing["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        return timing


class Trainer:
    """The state of one training run in this process; `run()` trains."""

    def __init__(
        self,
        subject: Path,
        run_dir: Path,
        config: ExperimentConfig,
        gendir: Path | None,
        ctx: DistributedContext,
        on_step: Callable[[int, Avatar], None] | None = None,
    ):
        check_settings(config)
        tc = config.train
        self.config, self.ctx, self.run_dir = config, ctx, run_dir
        self.on_step = on_step
        self.device = ctx.device
        self.subject = Path(subject)
        self.gendir = Path(gendir) if gendir is not None else subject / "gendir"
        check_preprocessed(subject, self.gendir, config)
        if tc.deterministic != torch.are_deterministic_algorithms_enabled():  # the call costs an import
            torch.use_deterministic_algorithms(tc.deterministic, warn_only=True)
        # The convolutions' shapes are fixed for a run, so cuDNN's timing of its algorithms runs once; it
        # may pick ones whose sums vary from run to run, so not under train.deterministic.
        torch.backends.cudnn.benchmark = (
            self.device.type == "cuda" and tc.cudnn_autotune and not tc.deterministic
        )

        self.prepared = PreparedSubject(self.subject, self.gendir)
        frames, cameras = select_samples(self.prepared, config.data)
        self.frames = frames
        inputs = frame_inputs(config.model, config.loss)
        self.dataset = AvatarDataset(self.prepared, frames, cameras, config.data, inputs)
        self.cameras = list(cameras)
        self.val_dataset, self.val_indices = (
            validation_set(self.prepared, config, self.cameras) if ctx.is_main else (None, [])
        )
        first = self.dataset[0]
        self.height, self.width = first.camera.height, first.camera.width
        self.gep = GEPSampler(len(self.dataset), self.height, self.width, config.gep)
        self.images_per_step = tc.images_per_step
        self.steps_per_epoch = tc.steps_per_epoch or math.ceil(
            shard_length(len(self.dataset), ctx.world_size) / self.images_per_step
        )
        self.total_steps = tc.epochs * self.steps_per_epoch

        found = ckpt.latest_checkpoint(run_dir)
        if found is not None:
            check_resumable(ckpt.checkpoint_config(found[1]), config, found[0])
        torch.manual_seed(tc.seed)  # the same initial parameters in every process
        learned = tc.background == "learned"
        initial = initial_backgrounds(self.dataset, self.cameras) if learned and found is None else None
        self.avatar = Avatar.from_gendir(
            self.gendir,
            config.model,
            config.render,
            tc.background,
            self.cameras,
            initial,
            tc.camera_colour,
            config.loss,
        ).to(self.device)
        if self.device.type == "cuda":
            self.avatar.autocast_dtype = PRECISIONS[tc.precision]
        # On CUDA one fused kernel updates every parameter (the per-tensor updates cost ~10 ms a step).
        self.optimizer = torch.optim.Adam(
            self.avatar.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=self.device.type == "cuda"
        )
        milestones = [epoch * self.steps_per_epoch for epoch in tc.lr_decay_epochs]
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones, tc.lr_decay)
        self.perceptual = make_perceptual_loss(config.loss)
        if self.perceptual is not None:
            self.perceptual.to(self.device)

        self.step = 0
        self.resumed_from: int | None = None
        if found is not None:
            self._restore(*found)
        else:
            ckpt.seed_global_generators(derived_seed(tc.seed, ctx.rank))
        self.saved_step = self.resumed_from
        self.graphed = tc.cuda_graphs and self.device.type == "cuda" and not ctx.enabled
        if self.graphed:
            self.avatar.train()
            capture_network_graphs(self.avatar.network, self.avatar.autocast_dtype)
        self.model = wrap_model(self.avatar, ctx, tc.sync_batchnorm)
        self.writer = open_tensorboard(run_dir / TENSORBOARD) if ctx.is_main else None
        self._interval = torch.zeros(2, len(LOG_KEYS), dtype=torch.float64)  # sums, counts
        self._prepared: list[PreparedImage] | None = None  # the next step's, drawn during the last step
        self.log_records: list[dict[str, float]] = []
        self.timing = RunTiming()
        self.validations: list[Validation] = []

    # ---- the run ----------------------------------------------------------------------------------

    def _record_split(self) -> None:
        """Write RUN_DIR/split/: the frames and cameras trained on, the held-out ones of the subject's
        split, and its protocol; say which protocol it is."""
        split = subject_split(self.subject)
        used = dataclasses.replace(split, train=self.frames, train_cameras=self.cameras)
        used.write(self.run_dir / RUN_SPLIT)
        log.info("%s (written to %s)", used.describe(), self.run_dir / RUN_SPLIT)

    def run(self) -> TrainResult:
        tc = self.config.train
        started = time.perf_counter()
        if self.ctx.is_main:
            save_config(self.config, self.run_dir / RUN_CONFIG)
            self._record_split()
        stop = self.total_steps if tc.stop_after is None else min(self.total_steps, tc.stop_after)
        if self.resumed_from is None and tc.val_every > 0:
            self._validate()
        if self.resumed_from is not None:
            log.info("resuming %s at step %d of %d", self.run_dir, self.step, self.total_steps)
        progress = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc="npva train",
            unit="step",
            disable=not (tc.progress and self.ctx.is_main),
            dynamic_ncols=True,
        )
        timer = StageTimer(self._synchronize) if tc.profile_stages else None
        tick = time.perf_counter()
        for samples, upcoming in with_next(self._loader(self.step, stop)):
            arrived = time.perf_counter()
            phase = self.phase  # of this step, before train_step counts it
            with timer.active() if timer is not None else contextlib.nullcontext():
                scalars = self.train_step(samples, upcoming)
            now = time.perf_counter()
            scalars["step_seconds"] = now - tick
            if timer is not None:
                stages = timer.take()
                stages["data"] = stages.get("data", 0.0) + arrived - tick
                scalars.update({f"time_{name}": stages.get(name, 0.0) for name in STAGES})
            tick = now
            self._record(scalars)
            self.timing.add(scalars, phase)
            if self.on_step is not None:
                self.on_step(self.step, self.avatar)
            progress.update(1)
            progress.set_postfix(
                loss=f"{scalars['loss']:.4f}", psnr=f"{scalars['psnr']:.2f}", phase=self.phase, refresh=False
            )
            if self.step % tc.log_every == 0 or self.step == stop:
                self._log_interval()
            if self.step % tc.checkpoint_every == 0 and self.step < stop:
                self._save_checkpoint()
            if tc.val_every > 0 and self.step % tc.val_every == 0 and self.step < self.total_steps:
                self._validate()
        progress.close()
        if self.saved_step != self.step:
            self._save_checkpoint()
        trained_now = self.step != self.resumed_from
        if (
            trained_now
            and self.step >= self.total_steps
            and (not self.validations or self.validations[-1].step != self.step)
        ):
            self._validate()
        result = TrainResult(
            run_dir=self.run_dir,
            step=self.step,
            total_steps=self.total_steps,
            phase=self.phase,
            lr=self.lr,
            seconds=time.perf_counter() - started,
            resumed_from=self.resumed_from,
            checkpoint=ckpt.checkpoint_path(self.run_dir, self.step),
            log=self.log_records,
            validation=self.validations,
            timing=self.timing.summary(self.device),
        )
        if self.ctx.is_main:
            write_summary(self.run_dir / SUMMARY, result)
            if self.writer is not None:
                self.writer.close()
        return result

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @property
    def epoch(self) -> float:
        return self.step / self.steps_per_epoch

    @property
    def phase(self) -> str:
        """The GEP phase of the current epoch."""
        return self.gep.phase_at(self.epoch)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _loader(self, start: int, stop: int) -> DataLoader:
        """The list of samples of each step in [start, stop) of this process, in the run's data order."""
        tc = self.config.train
        ctx, per_step = self.ctx, self.images_per_step
        order = StepOrder(len(self.dataset), ctx.rank, ctx.world_size, tc.seed, start, stop, per_step)
        return DataLoader(
            self.dataset,
            batch_sampler=order,
            collate_fn=list,
            num_workers=loader_workers(tc.workers, self.device.type, self.ctx.world_size),
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(tc.seed),  # keeps the global generator untouched
        )

    def _pixel_generator(self, slot: int) -> torch.Generator:
        """The CPU generator of the GEP pixels of image slot `slot` (step * images_per_step + image)."""
        return torch.Generator().manual_seed(derived_seed(self.config.train.seed, slot, self.ctx.rank, 0))

    def _render_generator(self, slot: int) -> torch.Generator:
        """The device generator of the latent sample and sampling jitter of image slot `slot`."""
        seed = derived_seed(self.config.train.seed, slot, self.ctx.rank, 1)
        return torch.Generator(self.device).manual_seed(seed)

    # ---- one step ---------------------------------------------------------------------------------

    def train_step(
        self, samples: Sequence[TrainSample], upcoming: Sequence[TrainSample] | None = None
    ) -> dict[str, float]:
        """Render each of a step's samples, compute its losses and their gradients (averaged over the
        samples), update the parameters once and the error map of every sample; returns the step's
        scalars (the samples' mean loss, PSNR of the sampled rays and terms, the gradient norm, the
        rays of all samples, ...).

        upcoming: the next step's samples, if known; their pixels are drawn and their copies to the
        device started while the device runs this step's last backward pass (see _overlaps).
        """
        for sample in samples:
            self._check_size(sample)
        phase = self.phase
        prepared = self._prepared if self._prepared_for(samples) else None
        self._prepared = None
        if prepared is None:
            prepared = [self._prepare(sample, self.step, j) for j, sample in enumerate(samples)]
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        scalars, errors = [], []
        for j, image in enumerate(prepared):
            with self._gradient_sync(last=j == len(prepared) - 1):
                image_scalars, image_errors = self._image_gradients(image, phase, j, len(prepared))
            scalars.append(image_scalars)
            errors.append(image_errors)
        if upcoming is not None and self._overlaps(samples, upcoming):
            self._prepared = [self._prepare(sample, self.step + 1, j) for j, sample in enumerate(upcoming)]
        named = {key: torch.stack([image[key] for image in scalars]).mean() for key in scalars[0]}
        with stage("backward"):
            named["grad_norm"] = self._update_parameters(named["loss"]).detach()
        read = torch.stack([v.float().reshape(()) for v in named.values()]).tolist()
        values = dict(zip(named, read, strict=True))
        if not math.isfinite(values["grad_norm"]):  # the parameters were not updated (_update_parameters)
            raise self._diverged(f"non-finite gradients (loss {values['loss']:.4g})")
        for image, image_errors in zip(prepared, errors, strict=True):
            self._update_error_maps(image.sample.index, image.pixels, image_errors)
        self.step += 1
        return {**values, "rays": float(sum(image.pixels.shape[0] for image in prepared))}

    def _image_gradients(
        self, image: PreparedImage, phase: str, index: int, count: int
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Render image `index` of the `count` of this step, compute its losses and add 1/count of
        their gradients to the parameters'; returns its scalars (loss, PSNR, terms, samples per ray;
        0-dim tensors) and the colour error (R,) of each of its rays."""
        sample = image.on_device
        slot = self.step * self.images_per_step + index
        try:
            out = self.model(sample.drive, sample.camera, image.pixels, self._render_generator(slot))
        except NonFiniteError as exc:
            raise self._diverged(str(exc)) from None
        with stage("losses"):
            patch_shape = self.gep.patch_shape if phase == "patch" else None
            total, terms, (colour, target) = self.avatar.loss_terms(
                out, sample.targets, patch_shape, self.perceptual
            )
        with stage("backward"):
            (total / count).backward()
            if self.graphed and index < count - 1:
                own_gradients(self.avatar.network)
        colour = colour.detach()
        scalars = {
            "loss": total.detach(),
            "psnr": psnr(((colour - target) ** 2).mean()),
            **terms,
            "samples_per_ray": out.rays.num_samples.float().mean(),
        }
        return scalars, colour_error(colour, target)

    def _gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """With several processes DDP averages the gradients over them in the backward pass of a step's
        last image; the images before it only add to this process's gradients."""
        if last or not isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def _prepared_for(self, samples: Sequence[TrainSample]) -> bool:
        """Whether the images prepared during the last step are those of `samples`."""
        prepared = self._prepared
        return (
            prepared is not None
            and len(prepared) == len(samples)
            and all(image.sample is sample for image, sample in zip(prepared, samples, strict=True))
        )

    def _of_training_size(self, sample: TrainSample) -> bool:
        return (sample.camera.height, sample.camera.width) == (self.height, self.width)

    def _check_size(self, sample: TrainSample) -> None:
        if not self._of_training_size(sample):
            raise NpvaError(
                f"training images must share one size: {sample.seq} {sample.frame} camera {sample.cam} is "
                f"{sample.camera.height}x{sample.camera.width}, others {self.height}x{self.width}"
            )

    def _prepare(self, sample: TrainSample, step: int, index: int = 0) -> PreparedImage:
        """The GEP pixels of `sample` as image `index` of step `step` and the sample on the device, both
        copies started without waiting (the pixels from page-locked memory on CUDA, so that the copy
        does not wait for the work already queued)."""
        phase = self.gep.phase_at(step / self.steps_per_epoch)
        generator = self._pixel_generator(step * self.images_per_step + index)
        with stage("data"):
            pixels = self.gep.sample(sample.index, phase, sample.targets.mask, generator)
            if self.device.type == "cuda":
                pixels = pixels.pin_memory()
            return PreparedImage(
                sample,
                pixels.to(self.device, non_blocking=True),
                sample.to(self.device, non_blocking=True),
            )

    def _overlaps(self, samples: Sequence[TrainSample], upcoming: Sequence[TrainSample]) -> bool:
        """Whether the upcoming step can be prepared before this step's error maps are updated: on one
        process (several fold every process's images into the maps), for other images than this
        step's (whose maps this step changes), all of the training size."""
        current = {sample.index for sample in samples}
        return (
            self.config.train.overlap_steps
            and not self.ctx.enabled
            and all(sample.index not in current and self._of_training_size(sample) for sample in upcoming)
        )

    def _update_parameters(self, total: torch.Tensor) -> torch.Tensor:
        """After the backward pass: optional clipping, optimizer and scheduler steps; the gradient
        norm. Non-finite gradients (the same on every process: they are averaged) leave the parameters
        as they were: the fused optimizer (CUDA) skips its update on the device without a wait, and
        train_step raises once it reads the step's values; elsewhere this raises at once."""
        max_norm = self.config.train.grad_clip or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.avatar.parameters(), max_norm)
        if self.optimizer.defaults["fused"]:
            self.optimizer.found_inf = (~torch.isfinite(grad_norm)).float()
        elif not torch.isfinite(grad_norm):
            raise self._diverged(f"non-finite gradients (loss {float(total):.4g})")
        self.optimizer.step()
        self.scheduler.step()
        return grad_norm

    def _diverged(self, what: str) -> NonFiniteError:
        """The error that stops a diverged run, saying what to do."""
        return NonFiniteError(
            f"{what} at step {self.step}; lower train.lr or set train.grad_clip, and resume from the "
            f"last checkpoint"
        )

    def _update_error_maps(self, index: int, pixels: torch.Tensor, errors: torch.Tensor) -> None:
        """Fold this step's per-cell error statistics into the maps; with several processes every
        process folds every process's statistics, in rank order, so that the maps stay identical."""
        sums, counts = self.gep.cell_statistics(pixels, errors)
        if not self.ctx.enabled:
            self.gep.accumulate(index, sums, counts)
            return
        cells = sums.numel()
        row = torch.cat([sums.new_tensor([index]), sums.reshape(-1), counts.reshape(-1)]).double()
        for gathered in all_gather_rows(row, self.ctx).cpu():
            self.gep.accumulate(
                int(gathered[0]),
                gathered[1 : 1 + cells].reshape(sums.shape),
                gathered[1 + cells :].reshape(sums.shape),
            )

    # ---- logging and validation -------------------------------------------------------------------

    def _record(self, scalars: dict[str, float]) -> None:
        for i, key in enumerate(LOG_KEYS):
            if key in scalars:
                self._interval[0, i] += scalars[key]
                self._interval[1, i] += 1

    def _log_interval(self) -> None:
        """Means over the steps since the last log, averaged over the processes, to TensorBoard."""
        totals = all_reduce_sum(self._interval.to(self.device), self.ctx).cpu()
        self._interval.zero_()
        if not self.ctx.is_main:
            return
        seen = totals[1] > 0
        record = {key: float(totals[0, i] / totals[1, i]) for i, key in enumerate(LOG_KEYS) if seen[i]}
        record.update(
            step=float(self.step), epoch=self.epoch, lr=self.lr, phase=float(PHASES.index(self.phase))
        )
        self.log_records.append(record)
        if self.writer is not None:
            for key, value in record.items():
                if key != "step":
                    group = (
                        "loss"
                        if key in ("loss", *(f.name for f in dataclasses.fields(LossTerms)))
                        else "train"
                    )
                    self.writer.add_scalar(f"{group}/{key}", value, self.step)

    def _validate(self) -> None:
        """Render the held-out pairs in full (rank 0) and log their PSNR and images."""
        if self.val_dataset is None or not self.ctx.is_main:
            return
        result, images = evaluate(self.avatar, self.val_dataset, self.val_indices, self.device, self.step)
        self.validations.append(result)
        log.info(
            "step %d: held-out PSNR %.2f dB (image), %.2f dB (mask)",
            self.step,
            result.psnr_image,
            result.psnr_mask,
        )
        if self.writer is not None:
            self.writer.add_scalar("val/psnr_image", result.psnr_image, self.step)
            self.writer.add_scalar("val/psnr_mask", result.psnr_mask, self.step)
            for info, image in zip(result.samples, images, strict=True):
                tag = f"val/{info['seq']}/{info['frame']}/{info['cam']}"
                self.writer.add_image(tag, image, self.step)
            self.writer.flush()

    # ---- checkpoints ------------------------------------------------------------------------------

    def _save_checkpoint(self) -> None:
        """Every process contributes its parameter digest and generator states; rank 0 writes."""
        maps = self.gep.state_dict()
        own = {
            "parameters": ckpt.parameter_digest(self.avatar),
            "error_maps": ckpt.tensor_digest((name, maps[name]) for name in ("error_map", "error_count")),
        }
        digests = gather_objects(own, self.ctx)
        generators = gather_objects(ckpt.generator_states(self.device), self.ctx)
        self.saved_step = self.step
        if not self.ctx.is_main:
            return
        if any(other != own for other in digests):
            log.error("the processes' parameters or error maps differ at step %d: %s", self.step, digests)
        state = {
            "format": ckpt.FORMAT,
            "version": ckpt.VERSION,
            "npva_version": __version__,
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": self.epoch,
            "phase": self.phase,
            "config": to_dict(self.config),
            "model": self.avatar.state_dict(),
            "cameras": self.cameras,
            "subject": str(self.subject.resolve()),
            "gendir": str(self.gendir.resolve()),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "gep": self.gep.state_dict(),
            "rng": generators,
            "data": {
                "keys": [tuple(key) for key in self.dataset.keys],
                "seed": self.config.train.seed,
                "position": self.step,
                "world_size": self.ctx.world_size,
            },
            "perceptual": None if self.perceptual is None else self.perceptual.name,
            "rank_digests": digests,
        }
        path = ckpt.checkpoint_path(self.run_dir, self.step)
        ckpt.save_checkpoint(path, state)
        ckpt.prune_checkpoints(self.run_dir, path, self.config.train.keep_checkpoints)

    def _restore(self, path: Path, state: dict[str, Any]) -> None:
        keys = [tuple(key) for key in state["data"]["keys"]]
        if keys != [tuple(key) for key in self.dataset.keys]:
            raise NpvaError(
                f"{path}: the training samples differ from the checkpoint's ({len(keys)} then, "
                f"{len(self.dataset)} now); resume with the same subject, frames, cameras and "
                f"preprocessing, or train into another --out"
            )
        with ckpt.model_fits(path):
            self.avatar.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.gep.load_state_dict(state["gep"])
        self.step = self.resumed_from = int(state["step"])
        name = None if self.perceptual is None else self.perceptual.name
        if state["perceptual"] != name:
            log.warning("%s used the perceptual loss %s, this run uses %s", path, state["perceptual"], name)
        generators = state["rng"]
        if len(generators) == self.ctx.world_size:
            ckpt.restore_generator_states(generators[self.ctx.rank], self.device)
        else:
            log.warning(
                "%s was written by %d processes, this run has %d: the data order and random draws "
                "continue differently",
                path,
                len(generators),
                self.ctx.world_size,
            )
            ckpt.seed_global_generators(derived_seed(self.config.train.seed, self.ctx.rank, self.step))


# ---- pieces ---------------------------------------------------------------------------------------


def loader_workers(requested: int | None, device_type: str, world_size: int, cores: int | None = None) -> int:
    """Data-loader processes per training process: `requested` (train.workers), or when None, 2 on the CPU
    and on CUDA up to 6, keeping one of the CPU cores per training process (`cores`, default those this
    process may use) for the training process itself."""
    if requested is not None:
        return requested
    if device_type != "cuda":
        return 2
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    return max(0, min(6, cores // world_size - 1))


def check_settings(config: ExperimentConfig) -> None:
    """NpvaError naming the settings when they contradict each other or are out of range."""
    tc = config.train
    if tc.precision not in PRECISIONS:
        raise NpvaError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {tc.precision!r}")
    minimum = {
        "epochs": 1,
        "log_every": 1,
        "checkpoint_every": 1,
        "keep_checkpoints": 1,
        "val_every": 0,
        "val_samples": 1,
        "workers": 0,
        "images_per_step": 1,
    }
    for name, low in minimum.items():
        value = getattr(tc, name)
        if value is not None and value < low:  # workers None: chosen by the machine
            raise NpvaError(f"train.{name} must be at least {low}, got {value}")
    for name in ("steps_per_epoch", "stop_after"):
        value = getattr(tc, name)
        if value is not None and value < (1 if name == "steps_per_epoch" else 0):
            raise NpvaError(f"train.{name} must be positive (or none), got {value}")
    if tc.lr <= 0 or tc.grad_clip is not None and tc.grad_clip <= 0:
        raise NpvaError(f"train.lr and train.grad_clip must be positive, got {tc.lr}, {tc.grad_clip}")


def check_preprocessed(subject: Path, gendir: Path, config: ExperimentConfig) -> None:
    """NpvaError saying what to run when the subject has no usable preprocessing output."""
    if not subject.is_dir():
        raise MissingFileError(subject, "subject directory")
    uv = config.model.posmap_size
    fitting = presets_of_size(uv)
    option = f"--preset {fitting[0]}" if fitting else f"--uv-size {uv}"
    settings = read_settings(GenDir(gendir))
    if settings is None:
        raise NpvaError(
            f"{subject} is not preprocessed ({gendir / 'manifest.json'} is missing): run "
            f"npva preprocess {subject} {option}"
            + (f" --gendir {gendir}" if gendir != subject / "gendir" else "")
        )
    made = settings.uv_size
    if made != uv:
        raise NpvaError(
            f"{gendir} was preprocessed with --uv-size {made} but model.posmap_size is {uv}: run "
            f"npva preprocess {subject} {option} --gendir {subject / f'gendir_{uv}'} and train with "
            f"--gendir {subject / f'gendir_{uv}'}, or leave out --preset to train the preset {gendir} fits"
        )


def check_resumable(saved: ExperimentConfig, given: ExperimentConfig, path: Path) -> None:
    """NpvaError listing the settings that differ from a checkpoint's in a way resuming cannot honour."""
    before, after = _flatten(to_dict(saved)), _flatten(to_dict(given))
    changed = [key for key in before if before[key] != after.get(key)]
    fixed = [key for key in changed if key not in resumable_settings()]
    if fixed:
        detail = "; ".join(f"{key}: {before[key]!r} -> {after[key]!r}" for key in fixed[:6])
        raise NpvaError(
            f"{path} was trained with other settings ({detail}); resume with the run's own settings "
            f"(leave out --preset and --config) or train into another --out"
        )
    if changed:
        log.info("resuming with changed settings: %s", ", ".join(changed))


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = list(value) if isinstance(value, (list, tuple)) else value
    return flat


def validation_set(
    prepared: PreparedSubject, config: ExperimentConfig, train_cameras: list[str]
) -> tuple[AvatarDataset | None, list[int]]:
    """The held-out samples (train.val_frames, with train.val_cameras or the training cameras) and
    train.val_samples indices spread evenly over them; (None, []) when the subject has none."""
    tc = config.train
    data = dataclasses.replace(
        config.data, frames=tc.val_frames, cameras=tuple(tc.val_cameras or train_cameras), camera_split=False
    )
    try:
        frames, cameras = select_samples(prepared, data)
        inputs = frame_inputs(config.model, config.loss).for_rendering()
        dataset = AvatarDataset(prepared, frames, cameras, data, inputs)
    except NpvaError as exc:
        log.warning("no validation: %s", exc)
        return None, []
    count = min(tc.val_samples, len(dataset))
    indices = sorted({int(i) for i in np.linspace(0, len(dataset) - 1, count).round()})
    return dataset, indices


def initial_backgrounds(dataset: AvatarDataset, cameras: Iterable[str]) -> torch.Tensor:
    """(N, 3) starting background colour per camera: the mean photo colour outside the mask in the
    camera's first sample (mid grey when the mask covers everything)."""
    first: dict[str, int] = {}
    for index, key in enumerate(dataset.keys):
        first.setdefault(key.cam, index)
    colours = []
    for cam in cameras:
        sample = dataset[first[cam]]
        outside = ~sample.targets.mask
        image = sample.targets.image
        colour = image[:, outside].mean(1) if outside.any() else torch.full((3,), 0.5)
        colours.append(colour)
    return torch.stack(colours)


@torch.no_grad()
def evaluate(
    avatar: Avatar, dataset: AvatarDataset, indices: list[int], device: torch.device | str, step: int = 0
) -> tuple[Validation, list[torch.Tensor]]:
    """Render the samples `indices` of `dataset` in full (evaluation mode: z = mu, no jitter) and
    compare them with their photos. Returns the PSNRs (recorded at `step`) and, per sample, an image
    (3, H, 2W) with the render beside the photo."""
    samples, images = [], []
    for index in indices:
        sample = dataset[index].to(device)
        rendered, _ = avatar.render_image(sample.drive, sample.camera)
        rendered = rendered.clamp(0, 1).permute(2, 0, 1)  # (3, H, W)
        photo = sample.targets.image
        squared = ((rendered - photo) ** 2).mean(0)  # (H, W)
        inside = squared[sample.targets.mask]
        samples.append(
            {
                "seq": sample.seq,
                "frame": sample.frame,
                "cam": sample.cam,
                "psnr_image": float(psnr(squared.mean())),
                "psnr_mask": float(psnr(inside.mean())) if inside.numel() else math.nan,
            }
        )
        images.append(torch.cat((rendered, photo), 2).cpu())
    mean = {key: float(np.nanmean([s[key] for s in samples])) for key in ("psnr_image", "psnr_mask")}
    return Validation(step=step, samples=samples, **mean), images


def open_tensorboard(folder: Path):
    """A TensorBoard SummaryWriter, or None (with a warning) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed (pip install tensorboard): no TensorBoard logs")
        return None
    return SummaryWriter(str(folder))


def write_summary(path: Path, result: TrainResult) -> None:
    """summary.json: where the run stands and its last validation."""
    summary = {
        "step": result.step,
        "total_steps": result.total_steps,
        "finished": result.finished,
        "phase": result.phase,
        "lr": result.lr,
        "seconds": result.seconds,
        "resumed_from": result.resumed_from,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "last_log": result.log[-1] if result.log else None,
        "timing": result.timing,
        "validation": [dataclasses.asdict(v) for v in result.validation],
    }
    with atomic_open(path, "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
