"""The avatar's encoder and map decoders replayed as CUDA graphs while training.

Their shapes are fixed by ModelConfig (a batch of one frame a step), so the hundreds of kernels of their
forward and backward passes can be captured once and replayed with one launch each way; on the GPU the
training step is bound by the host's launches, not by the device's work. The reference is the same
modules run op by op (what the CPU, evaluation and multi-process training always use).

`capture_network_graphs` patches the encoder's and the decoders' `forward` in place, so AvatarNetwork
calls them as before. A graphed module replays only in training mode (the mode it was captured in); in
evaluation mode it runs op by op. Its outputs live in the graph's static memory and are overwritten by
the next step's forward pass: a step must finish its backward pass before the next forward starts.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from npva.model.networks import IMAGE_CHANNELS, AvatarNetwork

WARMUP_PASSES = 3  # forward and backward passes run before a capture (cuDNN and allocator warm-up)


def graphed_modules(network: AvatarNetwork) -> tuple[nn.Module, ...]:
    """The modules captured, in the order AvatarNetwork runs them (encode, then decode); their backward
    passes run in the reverse order, as the capture requires."""
    return (network.encoder, network.feature_decoder, network.coarse_decoder, network.displacement_decoder)


def capture_network_graphs(network: AvatarNetwork, autocast_dtype: torch.dtype | None = None) -> None:
    """Capture the forward and backward passes of `network`'s encoder and three decoders as CUDA graphs
    and make the modules replay them from now on (in training mode).

    network: on a CUDA device, in training mode, its parameters requiring gradients. autocast_dtype: the
    dtype the networks run in under autocast (as Avatar.autocast_dtype), None for float32; the
    precision is fixed at capture. The capture runs WARMUP_PASSES passes on random inputs of the
    configured sizes; BatchNorm's running statistics are restored afterwards, so capturing changes
    no state of the network. Parameters are read in place at every replay: the optimizer may update
    them, and load_state_dict copies into them, but replacing a parameter tensor needs a new capture.
    """
    device = next(network.parameters()).device
    if device.type != "cuda":
        raise ValueError(f"CUDA graphs need the network on a CUDA device, it is on {device}")
    if not network.training:
        raise ValueError("capture the networks' graphs in training mode")
    cfg = network.cfg
    texture = torch.rand(1, IMAGE_CHANNELS, cfg.texture_size, cfg.texture_size, device=device)
    posmap = torch.randn(1, IMAGE_CHANNELS, cfg.posmap_size, cfg.posmap_size, device=device)
    decoders = graphed_modules(network)[1:]
    latent_shape = (1, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    latents = [torch.randn(latent_shape, device=device, requires_grad=True) for _ in decoders]
    buffers = {name: buffer.clone() for name, buffer in network.named_buffers()}
    precision = (
        torch.autocast("cuda", dtype=autocast_dtype, cache_enabled=False)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with precision:
        torch.cuda.make_graphed_callables(
            graphed_modules(network),
            ((texture, posmap), *((z,) for z in latents)),
            num_warmup_iters=WARMUP_PASSES,
        )
    with torch.no_grad():
        for name, buffer in network.named_buffers():
            buffer.copy_(buffers[name])
