"""Several training processes (torchrun): process group, devices, data sharding, exchanges.

One process per GPU (or per CPU worker with the gloo backend, which is how the tests run it), started
by torchrun, which sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/PORT). Without those variables
the run is a single process and nothing here communicates.

Data order. Every pass over the samples ("data epoch") is a permutation drawn from a generator seeded
with (seed, pass); it is padded by repeating its start to a multiple of the number of processes, and
process r takes positions r, r + W, r + 2W, ... (like DistributedSampler); a step takes the next
train.images_per_step of them. The samples of any step are a function of (seed, step, rank, W, images
per step), so a resumed run needs only the step to continue the same order.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from npva.errors import NpvaError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DistributedContext:
    """This process's place among the training processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # the process group was created here and is destroyed by shutdown()

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(setting: str, local_rank: int = 0) -> torch.device:
    """ "auto": CUDA device `local_rank` when CUDA is present, else the CPU; "cpu"; "cuda"."""
    if setting not in DEVICES:
        raise NpvaError(f"train.device must be one of {', '.join(DEVICES)}, got {setting!r}")
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise NpvaError("train.device is cuda but this torch sees no CUDA device")
    return torch.device("cuda", local_rank)


def init_distributed(device_setting: str = "auto") -> DistributedContext:
    """The context of this process: joins the process group when torchrun started several processes
    (NCCL on CUDA, gloo on the CPU); a single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_setting, local_rank)
    if world_size <= 1:
        return DistributedContext(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, device, owns)


def shutdown(ctx: DistributedContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(module: nn.Module, ctx: DistributedContext, sync_batchnorm: bool) -> nn.Module:
    """`module` ready for data-parallel training: DDP over the processes (with synchronized BatchNorm
    on CUDA when asked), the module itself for one process.

    Gradients are averaged over the processes at every backward pass. Buffers are not broadcast: with
    synchronized BatchNorm the running statistics agree anyway, and the UV template never changes.
    SyncBatchNorm needs CUDA; on the CPU each process keeps its own BatchNorm statistics."""
    if not ctx.enabled:
        return module
    if sync_batchnorm and ctx.device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    elif sync_batchnorm:
        log.info("SyncBatchNorm needs CUDA: BatchNorm statistics stay per process on the CPU")
    ddp = nn.parallel.DistributedDataParallel
    # torch 2.13 renamed broadcast_buffers to forward_sync_buffers; older versions know only the first
    if "forward_sync_buffers" in inspect.signature(ddp).parameters:
        return ddp(module, forward_sync_buffers=False)
    return ddp(module, broadcast_buffers=False)


def all_gather_rows(row: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """(n,) from every process -> (W, n), in rank order (on this process's device)."""
    if not ctx.enabled:
        return row[None]
    rows = [torch.empty_like(row) for _ in range(ctx.world_size)]
    dist.all_gather(rows, row.contiguous())
    return torch.stack(rows)


def all_reduce_sum(values: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """A new tensor: the element-wise sum of `values` over the processes."""
    values = values.clone()
    if ctx.enabled:
        dist.all_reduce(values)
    return values


def gather_objects(value: Any, ctx: DistributedContext) -> list[Any]:
    """A picklable value from every process, in rank order, on every process."""
    if not ctx.enabled:
        return [value]
    values: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(values, value)
    return values


def derived_seed(*numbers: int) -> int:
    """A well-mixed 63-bit seed from integers (e.g. the run seed, a step, a rank, a stream id)."""
    state = np.random.SeedSequence([int(n) for n in numbers]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def shard_length(num_samples: int, world_size: int) -> int:
    """Samples per process in one pass: ceil(num_samples / world_size)."""
    return math.ceil(num_samples / world_size)


class StepOrder(Sampler[list[int]]):
    """The sample indices of each step in [start, stop) for process `rank` of `world_size`, with
    `images_per_step` images a step.

    Pass p over the data is randperm(num_samples) from a generator seeded with (seed, p), padded to a
    multiple of world_size by repeating its start. Image j of step s fills slot s * images_per_step + j;
    slot n is in pass n // L at offset n % L, with L = shard_length, and takes position
    rank + offset * world_size of that pass.
    """

    def __init__(
        self,
        num_samples: int,
        rank: int,
        world_size: int,
        seed: int,
        start: int,
        stop: int,
        images_per_step: int = 1,
    ):
        if num_samples < 1:
            raise ValueError("no samples to order")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        if images_per_step < 1:
            raise ValueError(f"images_per_step must be at least 1, got {images_per_step}")
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.seed, self.start, self.stop = seed, start, max(start, stop)
        self.images_per_step = images_per_step
        self.slots_per_pass = shard_length(num_samples, world_size)
        self._pass: int | None = None
        self._order: torch.Tensor | None = None

    def _permutation(self, data_pass: int) -> torch.Tensor:
        """(L * W,) long: the padded order of pass `data_pass`."""
        generator = torch.Generator().manual_seed(derived_seed(self.seed, data_pass))
        order = torch.randperm(self.num_samples, generator=generator)
        padded = self.slots_per_pass * self.world_size
        return order.repeat(math.ceil(padded / self.num_samples))[:padded]

    def index_at(self, slot: int) -> int:
        """The sample index of image slot `slot`."""
        data_pass, offset = divmod(slot, self.slots_per_pass)
        if self._pass != data_pass:
            self._pass, self._order = data_pass, self._permutation(data_pass)
        return int(self._order[self.rank + offset * self.world_size])

    def __iter__(self) -> Iterator[list[int]]:
        per_step = self.images_per_step
        for step in range(self.start, self.stop):
            yield [self.index_at(step * per_step + j) for j in range(per_step)]

    def __len__(self) -> int:
        return self.stop - self.start
