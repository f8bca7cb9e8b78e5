"""The avatar's encoder and map decoders replayed as CUDA graphs.

Their shapes are fixed by ModelConfig (one frame at a time), so the hundreds of kernels of their passes
can be captured once and replayed with one launch each; on the GPU a training step and a rendered frame
are bound by the host's launches, not by the device's work. The reference is the same modules run op by
op (what the CPU and multi-process training always use).

Both captures patch the modules' `forward` in place, so AvatarNetwork calls them as before:
- `capture_network_graphs` (training): the forward and backward passes, replayed in training mode; in
  evaluation mode the modules run op by op. The outputs live in the graph's static memory and are
  overwritten by the next forward pass: a step must finish its backward pass before the next starts.
  So are the gradients a backward pass hands to parameters that had none, which autograd then keeps as
  their `.grad`: before a second backward pass adds to them (several images a step), `own_gradients`.
- `capture_inference_graphs` (rendering): the forward pass in evaluation mode without gradients, one
  graph per input shape and autocast precision, captured on first use; the outputs are copies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from npva.model.networks import IMAGE_CHANNELS, AvatarNetwork

WARMUP_PASSES = 3  # forward and backward passes run before a capture (cuDNN and allocator warm-up)


def uncached_autocast(dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on CUDA without autocast's cache of cast weights, or nothing for None. A graph
    must cast the weights itself: a cached copy is made once, outside the graph, and freed when the
    autocast region that made it ends."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype, cache_enabled=False)


def graphed_modules(network: AvatarNetwork) -> tuple[nn.Module, ...]:
    """The modules captured, in the order AvatarNetwork runs them (encode, then decode); their backward
    passes run in the reverse order, as the capture requires."""
    return (network.encoder, network.feature_decoder, network.coarse_decoder, network.displacement_decoder)


def cuda_device(network: AvatarNetwork) -> torch.device:
    """The CUDA device `network` is on; ValueError on any other device."""
    device = next(network.parameters()).device
    if device.type != "cuda":
        raise ValueError(f"CUDA graphs need the network on a CUDA device, it is on {device}")
    return device


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
    device = cuda_device(network)
    if not network.training:
        raise ValueError("capture the networks' graphs in training mode")
    cfg = network.cfg
    modules = graphed_modules(network)
    texture = torch.rand(1, IMAGE_CHANNELS, cfg.texture_size, cfg.texture_size, device=device)
    posmap = torch.randn(1, IMAGE_CHANNELS, cfg.posmap_size, cfg.posmap_size, device=device)
    latent_shape = (1, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    latents = [torch.randn(latent_shape, device=device, requires_grad=True) for _ in modules[1:]]
    buffers = {name: buffer.clone() for name, buffer in network.named_buffers()}
    # The parameters' gradient accumulators are made on the warm-up's and capture's side streams and
    # stay alive with the graphs, so backward passes hand their gradients across streams; autograd
    # orders the streams itself, and would warn about it (recent PyTorch; older versions lack the switch).
    quiet = getattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", None)
    if quiet is not None:
        quiet(False)
    with uncached_autocast(autocast_dtype):
        torch.cuda.make_graphed_callables(
            modules,
            ((texture, posmap), *((z,) for z in latents)),
            num_warmup_iters=WARMUP_PASSES,
        )
    with torch.no_grad():
        for name, buffer in network.named_buffers():
            buffer.copy_(buffers[name])


def own_gradients(network: AvatarNetwork) -> None:
    """Give the graphed modules' parameter gradients memory of their own. A parameter without a gradient
    takes the captured backward pass's output tensor itself as its `.grad`, and the next replay writes
    the next gradient into that memory before autograd adds it, so that gradients would not accumulate
    over several backward passes (pytorch/pytorch#181723). Call it between backward passes that add up."""
    with torch.no_grad():
        for module in graphed_modules(network):
            for parameter in module.parameters():
                if parameter.grad is not None:
                    parameter.grad = parameter.grad.clone()


def without_graphs(module: nn.Module) -> nn.Module:
    """`module` with every submodule running op by op again (its class's `forward`), in place; returns
    it. A deep copy of a graphed module shares the original's patched `forward` (copies share functions)
    and would replay the original's graphs on the original's parameters: copy, then call this."""
    for submodule in module.modules():
        vars(submodule).pop("forward", None)
    return module


def capture_inference_graphs(network: AvatarNetwork) -> None:
    """Make `network`'s encoder and decoders (on a CUDA device) replay CUDA graphs of their forward
    passes when they run in evaluation mode without gradients; otherwise they run op by op. Capture
    after any change of the modules (AvatarNetwork.fold_batchnorm replaces layers)."""
    cuda_device(network)
    for module in graphed_modules(network):
        module.forward = InferenceGraphs(module)


class InferenceGraphs:
    """A module's forward pass in evaluation mode without gradients, replayed from CUDA graphs: one per
    signature (the inputs' shapes and dtypes and the autocast precision), captured on its first call.
    Any other call (training mode, gradients on, inputs not on the GPU) runs the module op by op."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.eager: Callable[..., Any] = module.forward
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...], Any]] = {}

    def __call__(self, *inputs: torch.Tensor) -> Any:
        if self.module.training or torch.is_grad_enabled() or not all(x.is_cuda for x in inputs):
            return self.eager(*inputs)
        autocast = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        signature = (autocast, *((x.shape, x.dtype, x.device) for x in inputs))
        if signature not in self.graphs:
            self.graphs[signature] = self._capture(inputs, autocast)
        graph, static_inputs, static_outputs = self.graphs[signature]
        for static, x in zip(static_inputs, inputs, strict=True):
            static.copy_(x)
        graph.replay()
        if isinstance(static_outputs, torch.Tensor):
            return static_outputs.clone()
        return tuple(output.clone() for output in static_outputs)

    def _capture(self, inputs: tuple[torch.Tensor, ...], autocast: torch.dtype | None):
        """A graph of the forward pass on copies of `inputs`, after warm-up passes on a side stream."""
        static_inputs = tuple(x.clone() for x in inputs)
        side = torch.cuda.Stream(inputs[0].device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), uncached_autocast(autocast):
            for _ in range(WARMUP_PASSES):
                self.eager(*static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: a viewer's other threads may use CUDA while its render thread captures
        with torch.cuda.graph(graph, capture_error_mode="thread_local"), uncached_autocast(autocast):
            static_outputs = self.eager(*static_inputs)
        return graph, static_inputs, static_outputs
