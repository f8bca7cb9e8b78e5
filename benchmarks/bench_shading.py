"""The shading chain alone: radiance decoding and compositing, op by op against compiled (render.compile).

    python benchmarks/bench_shading.py [--preset full] [--rays 115600] [--samples 7] [--repeats 20]

On random inputs of a training step's size (the full preset: 115,600 rays, about 7 shading points per
ray, 16 slots per ray), times one forward and backward pass of the preset's radiance decoder and of the
compositing, with the plain functions and with their torch.compile forms
(`npva.model.fast.compiled`), and prints the median milliseconds of each, the speed-up, the largest
difference of the outputs and the time the first compiled call took (the compilation).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from npva.model.decoding import make_radiance_decoder
from npva.model.fast.compiled import shading_functions
from npva.train.presets import preset_config


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="full", choices=("tiny", "demo", "full"))
    parser.add_argument("--rays", type=int, default=115_600)
    parser.add_argument("--samples", type=int, default=7, help="shading points per ray")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    config = preset_config(args.preset)
    decoder = make_radiance_decoder(
        config.render.decoder, config.model.point_feature_channels, config.model.colour_residual
    ).to(device)
    slots = config.render.sampling.max_samples
    points = args.rays * args.samples
    g = torch.Generator(device).manual_seed(0)
    features = torch.randn(points, decoder.feature_dim, device=device, generator=g, requires_grad=True)
    offsets = torch.randn(points, 6, device=device, generator=g, requires_grad=True)
    has_valid = torch.ones(points, dtype=torch.bool, device=device)
    directions = torch.nn.functional.normalize(torch.randn(points, 3, device=device, generator=g), dim=1)
    z = torch.rand(args.rays, slots, device=device, generator=g).mul(40).add(500).sort(1).values
    valid = torch.arange(slots, device=device).expand(args.rays, slots) < args.samples
    background = torch.rand(args.rays, 3, device=device, generator=g)
    print(
        f"{args.preset} decoder, {args.rays} rays x {args.samples} shading points ({points} points, "
        f"{slots} slots a ray) on {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}"
    )

    def step(decode, composite_over) -> tuple[torch.Tensor, torch.Tensor]:
        sigma, rgb = decode(decoder, features, offsets, has_valid, directions)
        sigma_slots = sigma.new_zeros(args.rays, slots).masked_scatter(valid, sigma)
        rgb_slots = rgb.new_zeros(args.rays, slots, 3).masked_scatter(valid[..., None], rgb)
        colour, depth, _ = composite_over(sigma_slots, rgb_slots, z, valid, background, 1e10)
        (colour.sum() + 1e-3 * depth.sum()).backward()
        return colour.detach(), features.grad.detach().clone()

    results = {}
    for label, use_compiled in (("op by op", False), ("compiled", True)):
        functions = shading_functions(use_compiled)
        features.grad = offsets.grad = None
        decoder.zero_grad(set_to_none=True)
        start = time.perf_counter()
        reference = step(*functions)
        _synchronize(device)
        first = time.perf_counter() - start
        times = []
        for _ in range(args.repeats):
            features.grad = offsets.grad = None
            decoder.zero_grad(set_to_none=True)
            _synchronize(device)
            start = time.perf_counter()
            step(*functions)
            _synchronize(device)
            times.append(time.perf_counter() - start)
        results[label] = (statistics.median(times), reference)
        print(
            f"{label:9}: {statistics.median(times) * 1e3:8.2f} ms forward and backward "
            f"(first call {first:.1f} s)"
        )
    (plain, (colour, grad)), (fast, (colour_c, grad_c)) = results["op by op"], results["compiled"]
    print(
        f"speed-up of compiled over op by op: {plain / fast:.2f}x; largest difference: colour "
        f"{(colour - colour_c).abs().max():.2e}, feature gradient {(grad - grad_c).abs().max():.2e}"
    )


if __name__ == "__main__":
    main()
