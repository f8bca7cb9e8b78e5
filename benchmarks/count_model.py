"""Parameter counts and FLOPs of the avatar networks at the published sizes (docs/model.md).

    .venv/bin/python benchmarks/count_model.py [--cuda]

The avatar networks are built on the meta device (no memory, no arithmetic), so the full-size counts take
a second. FLOPs are those of matrix products and convolutions as torch.utils.flop_counter counts them
(2 per multiply-add); elementwise work (activations, BatchNorm, sin/cos) is not included.
With --cuda it also times forward and backward passes on the GPU (float32, PyTorch's default TF32
settings) and reports peak memory.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from npva.config import DecoderConfig, ModelConfig
from npva.model.compositing import composite
from npva.model.decoding import PointNeRFDecoder, RadianceDecoder
from npva.model.networks import AvatarNetwork, kl_divergence

SHADING_POINTS = 64  # shading points per FLOP measurement (the count is per point)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def avatar_rows(cfg: ModelConfig) -> list[tuple[str, int]]:
    """(name, parameters) of the avatar network and its parts, built on the meta device."""
    with torch.device("meta"):
        net = AvatarNetwork(cfg)
    untied = sum(p.numel() for n, p in net.named_parameters() if n.endswith("untied_bias.bias"))
    return [
        ("Encoder", parameter_count(net.encoder)),
        ("  texture branch", parameter_count(net.encoder.texture_branch)),
        ("  geometry branch", parameter_count(net.encoder.geometry_branch)),
        ("  joint branch", parameter_count(net.encoder.joint_branch)),
        (
            "  mu and logstd heads",
            parameter_count(net.encoder.mu_head) + parameter_count(net.encoder.logstd_head),
        ),
        ("CoarseDecoder", parameter_count(net.coarse_decoder)),
        ("DisplacementDecoder", parameter_count(net.displacement_decoder)),
        ("FeatureDecoder", parameter_count(net.feature_decoder)),
        ("AvatarNetwork", parameter_count(net)),
        ("  of which untied biases", untied),
    ]


def decoder_rows(cfg: DecoderConfig) -> list[tuple[str, int]]:
    """(name, parameters) of both radiance decoders and their MLPs."""
    light, pointnerf = RadianceDecoder(cfg), PointNeRFDecoder(cfg)
    return [
        ("RadianceDecoder", parameter_count(light)),
        ("  density MLP", parameter_count(light.density_mlp)),
        ("  colour MLP", parameter_count(light.colour_mlp)),
        ("PointNeRFDecoder", parameter_count(pointnerf)),
        ("  per-neighbour MLP", parameter_count(pointnerf.neighbour_mlp)),
        ("  density MLP", parameter_count(pointnerf.density_mlp)),
        ("  colour MLP", parameter_count(pointnerf.colour_mlp)),
    ]


def flops_per_shading_point(decoder: nn.Module, cfg: DecoderConfig, k: int) -> float:
    """FLOPs of one forward pass per shading point, all K neighbours valid."""
    generator = torch.Generator().manual_seed(0)
    n = SHADING_POINTS

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    inputs = (rand(n, k, decoder.feature_dim), rand(n, k, 3), rand(n, k, 3))
    valid = torch.ones(n, k, dtype=torch.bool)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        decoder(*inputs, valid, torch.nn.functional.normalize(rand(n, 3), dim=-1))
    return counter.get_total_flops() / n


def frame_flops(cfg: ModelConfig) -> list[tuple[str, int]]:
    """FLOPs of the encoder and of each decoder for one frame (batch 1), on the meta device."""
    rows = []
    with torch.device("meta"), torch.no_grad():
        net = AvatarNetwork(cfg).eval()
        texture = torch.zeros(1, 3, cfg.texture_size, cfg.texture_size)
        posmap = torch.zeros(1, 3, cfg.posmap_size, cfg.posmap_size)
        z = torch.zeros(1, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        runs = [
            ("Encoder", lambda: net.encoder(texture, posmap)),
            ("CoarseDecoder", lambda: net.coarse_decoder(z)),
            ("DisplacementDecoder", lambda: net.displacement_decoder(z)),
            ("FeatureDecoder", lambda: net.feature_decoder(z)),
        ]
        for name, run in runs:
            with FlopCounterMode(display=False) as counter:
                run()
            rows.append((name, counter.get_total_flops()))
    return rows


def cuda_time(step: Callable[[], None], repeats: int = 5) -> tuple[float, float]:
    """(seconds per call after one warm-up call, peak GiB allocated)."""
    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats, torch.cuda.max_memory_allocated() / 2**30


def decoder_step(decoder: nn.Module, n: int, k: int, c: int) -> Callable[[], None]:
    """Forward and backward of `decoder` on n random shading points, 80 % of the slots valid."""
    device = torch.device("cuda")
    features = torch.randn(n, k, c, device=device, requires_grad=True)
    offsets_world = (2 * torch.randn(n, k, 3, device=device)).requires_grad_()
    offsets_camera = 2 * torch.randn(n, k, 3, device=device)
    valid = torch.rand(n, k, device=device) < 0.8
    directions = torch.nn.functional.normalize(torch.randn(n, 3, device=device), dim=-1)

    def step() -> None:
        sigma, rgb = decoder(features, offsets_world, offsets_camera, valid, directions)
        (sigma.sum() + rgb.sum()).backward()

    return step


def composite_step(rays: int, samples: int) -> Callable[[], None]:
    device = torch.device("cuda")
    sigma = torch.rand(rays, samples, device=device, requires_grad=True)
    rgb = torch.rand(rays, samples, 3, device=device, requires_grad=True)
    z = torch.sort(800 + 40 * torch.rand(rays, samples, device=device)).values
    valid = torch.rand(rays, samples, device=device) < 0.6

    def step() -> None:
        colour, depth, opacity = composite(sigma, rgb, z, valid, 1e10)
        (colour.sum() + depth.sum() + opacity.sum()).backward()

    return step


def avatar_step(cfg: ModelConfig) -> Callable[[], None]:
    device = torch.device("cuda")
    net = AvatarNetwork(cfg).to(device).train()
    texture = torch.rand(1, 3, cfg.texture_size, cfg.texture_size, device=device)
    posmap = torch.randn(1, 3, cfg.posmap_size, cfg.posmap_size, device=device)

    def step() -> None:
        out = net(texture, posmap)
        maps = out.maps
        loss = maps.coarse_offset.square().mean() + maps.displacement.abs().mean()
        loss = loss + maps.features.square().mean() + kl_divergence(out.mu, out.logstd)
        loss.backward()

    return step


def print_cuda_timings(model_cfg: ModelConfig, decoder_cfg: DecoderConfig, k: int) -> None:
    print(f"\nForward + backward on {torch.cuda.get_device_name()} (torch {torch.__version__})")
    rays, samples = 115_000, 16  # rays per training step, kept shading points per ray
    runs = [
        ("lightweight, 115k rays x 16", RadianceDecoder, rays * samples),
        ("lightweight, 230k points", RadianceDecoder, 230_000),
        ("pointnerf, 230k points", PointNeRFDecoder, 230_000),
    ]
    for name, decoder_class, n in runs:
        decoder = decoder_class(decoder_cfg).cuda()
        seconds, peak = cuda_time(decoder_step(decoder, n, k, decoder.feature_dim))
        print(f"  {name:<32s} {seconds * 1e3:8.1f} ms  peak {peak:5.1f} GiB")
        del decoder
        torch.cuda.empty_cache()
    seconds, peak = cuda_time(composite_step(rays, samples))
    print(f"  {'composite, 115k rays x 16':<32s} {seconds * 1e3:8.1f} ms  peak {peak:5.1f} GiB")
    seconds, peak = cuda_time(avatar_step(model_cfg))
    print(f"  {'AvatarNetwork, batch 1':<32s} {seconds * 1e3:8.1f} ms  peak {peak:5.1f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cuda", action="store_true", help="also time the networks on the GPU")
    args = parser.parse_args()
    model_cfg, decoder_cfg, k = ModelConfig(), DecoderConfig(), 8
    print("Parameters (published sizes)")
    for name, count in avatar_rows(model_cfg) + decoder_rows(decoder_cfg):
        print(f"  {name:<28s} {count:>14,d}")

    print(f"\nFLOPs per shading point (K = {k} valid neighbours)")
    light = flops_per_shading_point(RadianceDecoder(decoder_cfg), decoder_cfg, k)
    pointnerf = flops_per_shading_point(PointNeRFDecoder(decoder_cfg), decoder_cfg, k)
    print(f"  {'lightweight':<28s} {light:>14,.0f}")
    print(f"  {'pointnerf':<28s} {pointnerf:>14,.0f}")
    print(f"  {'ratio':<28s} {pointnerf / light:>14.2f}")

    print("\nFLOPs per frame (batch 1)")
    for name, flops in frame_flops(model_cfg):
        print(f"  {name:<28s} {flops / 1e9:>12,.2f} G")

    if args.cuda:
        print_cuda_timings(model_cfg, decoder_cfg, k)


if __name__ == "__main__":
    main()
