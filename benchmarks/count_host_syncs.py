"""Where a training step makes the host wait for the device: operations counted by their call site.

    python benchmarks/count_host_syncs.py SUBJECT [--gendir DIR] [--preset demo] [--steps 6]
        [--set key=value ...]

Trains a fresh run for --steps steps and prints, most frequent first, each call site in npva (the last
frames of the Python stack) of an operation that needs a value from the device: on a GPU, every wait
that CUDA's sync debug mode reports; on the CPU, the operations that would wait on a GPU (a size read
from the data such as `nonzero` or a boolean index, `.item()` and the like), for CPU tensors too, so
read the sites, not only the counts. A site counted about once per step costs a wait in every step.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import tempfile
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import npva
from npva.train import build_config, train
from npva.train.distributed import resolve_device

# Operations whose result size or value the host reads from the data (a GPU makes it wait for them).
WAITING_OPS = {
    "nonzero",
    "_local_scalar_dense",  # .item(), float(), int(), bool() of a tensor
    "_unique2",
    "unique_consecutive",
    "unique_dim",
    "masked_select",
    "repeat_interleave",
    "bincount",
    "is_nonzero",
    "equal",
}
INDEXING_OPS = {"index", "index_put", "index_put_", "_index_put_impl_"}  # waiting with a boolean index
STACK_DEPTH = 5
PACKAGE = str(Path(npva.__file__).resolve().parent)


def call_site() -> str:
    """The innermost frames in the npva package of the current Python stack, innermost first."""
    frames = [f for f in traceback.extract_stack()[:-2] if f.filename.startswith(PACKAGE)]
    if not frames:
        return "(outside npva)"
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in frames[::-1][:STACK_DEPTH])


class WaitingOpCensus(TorchDispatchMode):
    """Counts the operations of WAITING_OPS (and indexing by a boolean mask) by op and call site."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = func.overloadpacket.__name__
        if name in WAITING_OPS or (name in INDEXING_OPS and _has_boolean_index(args)):
            self.sites[f"{name}  {call_site()}"] += 1
        return func(*args, **(kwargs or {}))


def _has_boolean_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


@contextlib.contextmanager
def cuda_sync_census() -> Iterator[collections.Counter[str]]:
    """Counts the waits that CUDA's sync debug mode reports, by call site."""
    sites: collections.Counter[str] = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        if "synchroniz" in str(message):
            sites[call_site()] += 1

    with warnings.catch_warnings():  # restores the filters and warnings.showwarning on leaving
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield sites
        finally:
            torch.cuda.set_sync_debug_mode(0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("subject", help="preprocessed subject directory")
    parser.add_argument("--gendir", help="preprocessing output (default SUBJECT/gendir)")
    parser.add_argument("--preset", default="demo", choices=("tiny", "demo", "full"))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra settings")
    parser.add_argument("--top", type=int, default=40, help="call sites to print")
    args = parser.parse_args()
    overrides = [f"train.stop_after={args.steps}", "train.val_every=0", "train.progress=false", *args.set]
    config = build_config(args.preset, overrides=overrides)
    on_gpu = resolve_device(config.train.device).type == "cuda"
    gendir = Path(args.gendir) if args.gendir else None
    with tempfile.TemporaryDirectory() as scratch:
        if on_gpu:
            with cuda_sync_census() as sites:
                train(Path(args.subject), Path(scratch) / "run", config, gendir=gendir)
            what = "waits for the GPU"
        else:
            census = WaitingOpCensus()
            with census:
                train(Path(args.subject), Path(scratch) / "run", config, gendir=gendir)
            sites, what = census.sites, "operations that would wait for a GPU"
    print(
        f"{sum(sites.values())} {what} in {args.steps} steps (with the run's start), {len(sites)} call sites"
    )
    for site, count in sites.most_common(args.top):
        print(f"{count:7d}  {site}")


if __name__ == "__main__":
    main()
