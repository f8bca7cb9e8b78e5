"""GPU fast paths, each beside the plain PyTorch reference that the CPU keeps using.

- `query.TritonNeighbourIndex`: the exact K-nearest-within-radius query of `npva.model.query`, one kernel
  per call (reference: `NeighbourIndex`, which it equals bit for bit, ties included).
- `blend.blend_neighbours_triton`: gather of the K neighbours, inverse-distance weights and their
  weighted means in one kernel, with a backward pass that scatters only valid pairs (reference:
  `npva.model.blend.blend_neighbours_torch`).
- `graphs`: the encoder and map decoders replayed from CUDA graphs, in training (forward and backward)
  and in evaluation (reference: the same modules run op by op).
- `compiled`: the radiance decoder and the compositing compiled by torch.compile (RenderConfig.compile;
  reference: the same functions run op by op).

Triton is imported only here and only when a fast path is asked for: the CPU install never needs it.
`kernels_enabled` is the one rule for when the Triton kernels run; `train.cuda_graphs` and the evaluation
commands (`npva.eval.loading.open_checkpoint`) decide the graphs.
"""

from __future__ import annotations

import functools
import os

import torch

KERNEL_CHOICES = ("auto", "torch", "triton")


@functools.cache
def triton_importable() -> bool:
    """Whether the `triton` package can be imported here."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreted() -> bool:
    """Whether Triton kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def kernels_enabled(choice: str, device: torch.device | str) -> bool:
    """Whether the Triton kernels run for tensors on `device` under the setting `choice`.

    "torch": never. "auto": on CUDA devices when Triton is importable and deterministic algorithms are
    off (the backward kernels add with atomics, whose order varies). "triton": on CUDA, or an error;
    on the CPU too under TRITON_INTERPRET=1 (Triton's interpreter: very slow, for checking kernels on a
    machine without a GPU).
    """
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"render.kernels must be one of {', '.join(KERNEL_CHOICES)}, got {choice!r}")
    if choice == "torch":
        return False
    on_cuda = torch.device(device).type == "cuda"
    if choice == "triton":
        if not (on_cuda or interpreted()) or not triton_importable():
            raise RuntimeError("render.kernels=triton needs a CUDA device and the triton package")
        return True
    return on_cuda and triton_importable() and not torch.are_deterministic_algorithms_enabled()
