"""The shading chain compiled by torch.compile (npva.model.fast.compiled) against the plain functions.

On the CPU Inductor needs a C++ compiler; on CUDA it writes Triton kernels (tests marked gpu).
"""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from npva.model.decoding import RadianceDecoder
from npva.model.fast.compiled import shading_functions
from npva.train.presets import preset_config

DEVICES = [
    pytest.param(
        "cpu", marks=pytest.mark.skipif(shutil.which("c++") is None, reason="Inductor needs a C++ compiler")
    ),
    pytest.param(
        "cuda",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")],
    ),
]


def _decoder_inputs(n: int, channels: int, device: str, generator: torch.Generator):
    """Blended features (n, C), offsets (n, 6), has_valid (n,) with some empty rows, unit ray_dirs (n, 3)."""
    features = torch.randn(n, channels, device=device, generator=generator, requires_grad=True)
    offsets = (3 * torch.randn(n, 6, device=device, generator=generator)).requires_grad_()
    has_valid = torch.rand(n, device=device, generator=generator) > 0.1
    directions = torch.nn.functional.normalize(torch.randn(n, 3, device=device, generator=generator), dim=1)
    return features, offsets, has_valid, directions


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_decoder_matches_the_plain_one_for_changing_sizes(device):
    torch.manual_seed(0)
    cfg = preset_config("tiny").render.decoder
    plain_decoder = RadianceDecoder(cfg, feature_dim=11, colour_residual=True).to(device)
    with torch.no_grad():  # the residual's last layer starts at zero: give it weights to compare
        plain_decoder.colour_mlp[-1].weight.normal_(0, 0.1)
    compiled_decoder = copy.deepcopy(plain_decoder)
    plain, _ = shading_functions(False)
    compiled, _ = shading_functions(True)
    g = torch.Generator(device).manual_seed(1)
    for n in (37, 250, 1):  # one compilation serves every size
        inputs = _decoder_inputs(n, 11, device, g)
        copies = [x.detach().clone().requires_grad_(x.requires_grad) for x in inputs]
        sigma, rgb = plain(plain_decoder, *inputs)
        sigma_c, rgb_c = compiled(compiled_decoder, *copies)
        torch.testing.assert_close(sigma_c, sigma, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(rgb_c, rgb, rtol=1e-4, atol=1e-5)
        upstream = torch.randn(n, 4, device=device, generator=g)
        (sigma * upstream[:, 0] + (rgb * upstream[:, 1:]).sum(1)).sum().backward()
        (sigma_c * upstream[:, 0] + (rgb_c * upstream[:, 1:]).sum(1)).sum().backward()
        for x, y in ((inputs[0], copies[0]), (inputs[1], copies[1])):
            torch.testing.assert_close(y.grad, x.grad, rtol=1e-4, atol=1e-5)
    for p, q in zip(plain_decoder.parameters(), compiled_decoder.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_compositing_matches_the_plain_one(device):
    _, plain = shading_functions(False)
    _, compiled = shading_functions(True)
    g = torch.Generator(device).manual_seed(2)
    for rays, slots in ((64, 8), (300, 8)):
        sigma = torch.rand(rays, slots, device=device, generator=g).mul(0.5).requires_grad_()
        rgb = torch.rand(rays, slots, 3, device=device, generator=g).requires_grad_()
        z = torch.rand(rays, slots, device=device, generator=g).mul(40).add(500).sort(1).values
        valid = torch.rand(rays, slots, device=device, generator=g) > 0.3
        background = torch.rand(rays, 3, device=device, generator=g)
        out = plain(sigma, rgb, z, valid, background, 1e10)
        copies = [sigma.detach().clone().requires_grad_(), rgb.detach().clone().requires_grad_()]
        out_c = compiled(*copies, z, valid, background, 1e10)
        for a, b in zip(out_c, out, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        sum(o.sum() for o in out).backward()
        sum(o.sum() for o in out_c).backward()
        # sigma's gradient sums terms of the depths' size (z ~ 500) that cancel: float32 rounding of
        # another summation order is relative to the largest of them, not to the small result
        scale = float(sigma.grad.abs().max())
        torch.testing.assert_close(copies[0].grad, sigma.grad, rtol=1e-4, atol=1e-6 * scale)
        torch.testing.assert_close(copies[1].grad, rgb.grad, rtol=1e-4, atol=1e-5)
