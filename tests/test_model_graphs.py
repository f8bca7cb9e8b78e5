"""The networks replayed as CUDA graphs (npva.model.fast.graphs) against the same networks run op by op.

The graphs need CUDA (tests marked gpu); what the capture refuses is tested everywhere.
"""

from __future__ import annotations

import copy

import pytest
import torch

from npva.config import apply_overrides
from npva.eval.loading import evaluation_dataset, open_checkpoint
from npva.eval.render import render_view
from npva.model.fast.graphs import (
    capture_inference_graphs,
    capture_network_graphs,
    own_gradients,
    without_graphs,
)
from npva.model.networks import AvatarNetwork, kl_divergence
from npva.train.engine import train
from npva.train.presets import preset_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_captures_need_a_cuda_network():
    network = AvatarNetwork(preset_config("tiny").model)
    with pytest.raises(ValueError, match="CUDA device"):
        capture_network_graphs(network)
    with pytest.raises(ValueError, match="CUDA device"):
        capture_inference_graphs(network)


def _training_pass(network: AvatarNetwork, seed: int, precision: torch.dtype | None):
    """One forward and backward pass on random inputs, as the avatar runs the networks: returns the
    outputs (float32) and the loss."""
    cfg = network.cfg
    g = torch.Generator("cuda").manual_seed(seed)
    texture = torch.rand(1, 3, cfg.texture_size, cfg.texture_size, device="cuda", generator=g)
    posmap = torch.randn(1, 3, cfg.posmap_size, cfg.posmap_size, device="cuda", generator=g)
    autocast = torch.autocast("cuda", dtype=precision or torch.float32, enabled=precision is not None)
    with autocast:
        mu, logstd = network.encode(texture, posmap)
    mu, logstd = mu.float(), logstd.float()
    z = network.latent(mu, logstd, g)
    with autocast:
        maps = network.decode(z, texture)
    maps = [m.float() for m in maps]
    weights = [torch.randn(m.shape, device="cuda", generator=g) for m in maps]
    loss = sum((w * m).mean() for w, m in zip(weights, maps, strict=True)) + kl_divergence(mu, logstd)
    loss.backward()
    return [mu, logstd, *maps], loss


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", [None, torch.bfloat16])
def test_graphed_networks_train_as_the_modules_run_op_by_op(precision):
    torch.manual_seed(0)
    reference = AvatarNetwork(preset_config("tiny").model).cuda().train()
    graphed = copy.deepcopy(reference)
    capture_network_graphs(graphed, precision)
    for (name, a), b in zip(reference.state_dict().items(), graphed.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"the capture changed {name}"
    assert all(p.grad is None for p in graphed.parameters())

    optimizers = [torch.optim.Adam(n.parameters(), lr=1e-3, fused=True) for n in (reference, graphed)]
    atol = 1e-5 if precision is None else 2e-2
    for step in range(4):  # the parameters change between replays
        results = []
        for network, optimizer in zip((reference, graphed), optimizers, strict=True):
            optimizer.zero_grad(set_to_none=True)
            outputs, loss = _training_pass(network, step, precision)
            grads = [p.grad.clone() for p in network.parameters()]
            optimizer.step()
            results.append((outputs, loss, grads))
        (ref_out, ref_loss, ref_grads), (out, loss, grads) = results
        torch.testing.assert_close(loss, ref_loss, atol=atol, rtol=1e-4)
        for a, b in zip(out, ref_out, strict=True):
            torch.testing.assert_close(a, b, atol=atol, rtol=1e-3)
        for a, b in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(a, b, atol=atol, rtol=1e-3)
    for (name, a), b in zip(reference.state_dict().items(), graphed.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, atol=atol, rtol=1e-3, msg=f"{name} differs")

    reference.eval()  # evaluation mode runs op by op, with the running statistics
    graphed.eval()
    with torch.no_grad():
        texture = torch.rand(1, 3, reference.cfg.texture_size, reference.cfg.texture_size, device="cuda")
        posmap = torch.randn(1, 3, reference.cfg.posmap_size, reference.cfg.posmap_size, device="cuda")
        for a, b in zip(reference(texture, posmap).maps, graphed(texture, posmap).maps, strict=True):
            torch.testing.assert_close(b, a, atol=atol, rtol=1e-3)


@pytest.mark.gpu
@needs_cuda
def test_graphed_networks_accumulate_gradients_over_passes_with_own_gradients():
    torch.manual_seed(0)
    reference = AvatarNetwork(preset_config("tiny").model).cuda().train()
    graphed = copy.deepcopy(reference)
    capture_network_graphs(graphed)
    for network in (reference, graphed):
        for seed in (1, 2, 3):  # three passes adding to the same gradients, as a step of three images
            _training_pass(network, seed, None)
            if network is graphed:
                own_gradients(graphed)
    for (name, a), b in zip(reference.named_parameters(), graphed.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.gpu
@needs_cuda
def test_a_copy_without_graphs_runs_its_own_parameters_op_by_op():
    network = AvatarNetwork(preset_config("tiny").model).cuda().train()
    capture_network_graphs(network)
    copied = without_graphs(copy.deepcopy(network))
    assert "forward" in vars(network.encoder) and all("forward" not in vars(m) for m in copied.modules())
    with torch.no_grad():
        for parameter in copied.parameters():
            parameter.zero_()
    cfg = network.cfg
    texture = torch.rand(1, 3, cfg.texture_size, cfg.texture_size, device="cuda")
    posmap = torch.randn(1, 3, cfg.posmap_size, cfg.posmap_size, device="cuda")
    original_mu = network.encoder(texture, posmap)[0].detach().clone()
    copied_mu, _ = copied.encoder(texture, posmap)
    assert torch.count_nonzero(copied_mu) == 0 and torch.count_nonzero(original_mu) > 0


@pytest.mark.gpu
@needs_cuda
def test_training_with_graphs_follows_training_op_by_op(tiny_subject, gendir, tmp_path):
    losses = {}
    for graphs in (False, True):
        config = apply_overrides(
            preset_config("tiny"),
            [
                "train.device=cuda",
                "train.epochs=6",
                "train.log_every=1",
                "render.kernels=torch",
                f"train.cuda_graphs={str(graphs).lower()}",
            ],
        )
        result = train(tiny_subject, tmp_path / f"run_{graphs}", config, gendir=gendir)
        losses[graphs] = torch.tensor([r["loss"] for r in result.log])
    assert len(losses[True]) >= 4
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@needs_cuda
def test_inference_graphs_render_as_the_modules_run_op_by_op():
    torch.manual_seed(0)
    reference = AvatarNetwork(preset_config("tiny").model).cuda().eval()
    reference.fold_batchnorm()
    graphed = copy.deepcopy(reference)
    capture_inference_graphs(graphed)
    cfg = reference.cfg
    last = None
    for precision in (None, torch.bfloat16, None):  # a graph per precision, each replayed again
        for seed in range(3):
            g = torch.Generator("cuda").manual_seed(seed)
            texture = torch.rand(1, 3, cfg.texture_size, cfg.texture_size, device="cuda", generator=g)
            posmap = torch.randn(1, 3, cfg.posmap_size, cfg.posmap_size, device="cuda", generator=g)
            autocast = torch.autocast("cuda", dtype=precision or torch.float32, enabled=precision is not None)
            with torch.no_grad(), autocast:
                expected, result = reference(texture, posmap), graphed(texture, posmap)
            for a, b in zip((*expected.maps, expected.mu), (*result.maps, result.mu), strict=True):
                assert a.dtype == b.dtype
                torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
            if last is not None:  # outputs are copies: the next replay leaves them alone
                torch.testing.assert_close(last[1], last[0])
            last = (result.maps.features.clone(), result.maps.features)
    assert len(graphed.encoder.forward.graphs) == 2  # float32 and bfloat16

    with torch.enable_grad():  # with gradients the modules run op by op, and gradients flow
        texture.requires_grad_(True)
        graphed(texture, posmap).maps.features.sum().backward()
    assert texture.grad is not None and texture.grad.abs().sum() > 0


@pytest.mark.gpu
@needs_cuda
def test_renders_from_inference_graphs_equal_renders_op_by_op(tiny_checkpoint, tiny_subject, gendir):
    contexts = [
        open_checkpoint(tiny_checkpoint, tiny_subject, gendir, device="cuda", cuda_graphs=graphs)
        for graphs in (False, True)
    ]
    dataset = evaluation_dataset(contexts[0], "test")
    for index in (0, len(dataset) - 1, 0):
        sample = dataset[index].to("cuda")
        reference, graphed = (render_view(c.avatar, sample.drive, sample.camera) for c in contexts)
        torch.testing.assert_close(graphed.image, reference.image, atol=1e-5, rtol=1e-5)
