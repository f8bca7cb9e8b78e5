"""Positional encoding, radiance decoders and compositing (method.md section 7)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from npva.config import DecoderConfig
from npva.errors import ConfigError
from npva.model.compositing import composite, sample_intervals
from npva.model.decoding import (
    PointNeRFDecoder,
    RadianceDecoder,
    inverse_distance_weights,
    make_radiance_decoder,
)
from npva.model.encoding import encoded_width, positional_encoding, positional_encoding_into
from npva.model.rowscan import scan_rows

DECODERS = [RadianceDecoder, PointNeRFDecoder]
NAN = float("nan")


FEATURES = 4  # channels of the point features the small decoders take


def small_config(**overrides) -> DecoderConfig:
    values = dict(hidden=16, pointnerf_hidden=24)
    values.update(overrides)
    return DecoderConfig(**values)


def random_inputs(n: int, k: int, c: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Decoder inputs with a random validity mask; row 0 has no valid neighbour, row 1 all valid."""
    generator = torch.Generator().manual_seed(seed)
    valid = torch.rand(n, k, generator=generator) < 0.6
    valid[0] = False
    valid[1] = True
    return dict(
        features=torch.randn(n, k, c, generator=generator),
        offsets_world=2 * torch.randn(n, k, 3, generator=generator),
        offsets_camera=2 * torch.randn(n, k, 3, generator=generator),
        valid=valid,
        ray_dirs=F.normalize(torch.randn(n, 3, generator=generator), dim=-1),
    )


# ----------------------------------------------------------------------------------------------
# Positional encoding


def test_positional_encoding_known_values():
    x = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    expected = torch.tensor(
        [
            [
                0.5, -1.0,  # input
                0.479425538604203, -0.8414709848078965,  # sin(x)
                0.8414709848078965, -0.9092974268256817,  # sin(2x)
                0.8775825618903728, 0.5403023058681398,  # cos(x)
                0.5403023058681398, -0.4161468365471424,  # cos(2x)
            ]
        ],
        dtype=torch.float64,
    )  # fmt: skip
    torch.testing.assert_close(positional_encoding(x, 2, include_input=True), expected)
    torch.testing.assert_close(positional_encoding(x, 2, include_input=False), expected[:, 2:])


def test_positional_encoding_widths_and_batch_shape():
    x = torch.randn(2, 5, 6)
    assert positional_encoding(x, 5, include_input=False).shape == (2, 5, 60)
    assert positional_encoding(x, 3, include_input=True).shape == (2, 5, 42)
    assert encoded_width(32, 3, include_input=False) == 192
    assert encoded_width(3, 4, include_input=False) == 24
    assert torch.equal(positional_encoding(x, 0, include_input=True), x)


def test_positional_encoding_into_a_buffer_equals_the_reference():
    x = 3 * torch.randn(50, 6)
    expected = positional_encoding(x, 5, include_input=False)
    buffer = torch.full((50, 70), NAN)
    got = positional_encoding_into(x, 5, buffer[:, 7:67])
    assert torch.equal(got, expected)
    assert torch.isnan(buffer[:, :7]).all() and torch.isnan(buffer[:, 67:]).all()
    narrow = torch.zeros((50, 60), dtype=torch.bfloat16)
    assert torch.equal(positional_encoding_into(x, 5, narrow), expected.to(torch.bfloat16))


# ----------------------------------------------------------------------------------------------
# Inverse-distance weights


def test_weights_are_normalized_inverse_distances_of_valid_neighbours():
    offsets = torch.tensor(
        [
            [[1.0, 0.0, 0.0], [0.0, -2.0, 0.0], [0.0, 0.0, 4.0], [NAN, NAN, NAN]],
            [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0], [1.0, 1.0, 1.0]],
            [[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [3.0, 0.0, 0.0], [4.0, 0.0, 0.0]],
        ],
        dtype=torch.float64,
    )
    valid = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    weights = inverse_distance_weights(offsets, valid, min_distance=1e-6)
    expected = torch.tensor(
        [
            [4 / 7, 2 / 7, 1 / 7, 0.0],  # 1/1, 1/2, 1/4 over 1.75
            [1e6 / (1e6 + 1), 1 / (1e6 + 1), 0.0, 0.0],  # distance 0 is clamped to 1e-6
            [0.0, 0.0, 0.0, 0.0],  # no valid neighbour
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(weights, expected)


# ----------------------------------------------------------------------------------------------
# Decoders


def formula_reference(
    decoder: RadianceDecoder | PointNeRFDecoder,
    features: torch.Tensor,
    offsets: torch.Tensor,
    weights: torch.Tensor,
    direction: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """method.md section 7 written out for one shading point with the decoder's own layers.

    features (K,C), offsets (K,6), weights (K,) given by hand, direction (3,)."""
    cfg = decoder.cfg

    def code(f: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        pe_f = positional_encoding(f, cfg.feature_frequencies, include_input=False)
        return torch.cat([f, pe_f, positional_encoding(o, cfg.offset_frequencies, False)], -1)

    if isinstance(decoder, RadianceDecoder):
        h = code(weights @ features, weights @ offsets)
    else:
        h = weights @ decoder.neighbour_mlp(code(features, offsets))
    sigma = F.softplus(decoder.density_mlp(h) - 1.0)
    pe_d = positional_encoding(direction, cfg.direction_frequencies, include_input=False)
    rgb = 1.002 * torch.sigmoid(decoder.colour_mlp(torch.cat([h, pe_d]))) - 0.001
    return sigma.squeeze(-1), rgb


@pytest.mark.parametrize("decoder_class", DECODERS)
def test_decoder_follows_the_method_with_inverse_distance_weights(decoder_class):
    torch.manual_seed(0)
    decoder = decoder_class(small_config(), FEATURES).double()
    offsets_world = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, -2.0, 0.0], [0.0, 0.0, 4.0], [0.1, 0.0, 0.0]], dtype=torch.float64
    )
    offsets_camera = torch.randn(4, 3, dtype=torch.float64)
    features = torch.randn(4, 4, dtype=torch.float64)
    valid = torch.tensor([True, True, True, False])
    direction = F.normalize(torch.randn(3, dtype=torch.float64), dim=0)
    sigma, rgb = decoder(
        features[None], offsets_world[None], offsets_camera[None], valid[None], direction[None]
    )

    weights = torch.tensor([4 / 7, 2 / 7, 1 / 7], dtype=torch.float64)
    offsets = torch.cat([offsets_world, offsets_camera], dim=1)[:3]
    expected_sigma, expected_rgb = formula_reference(decoder, features[:3], offsets, weights, direction)
    torch.testing.assert_close(sigma[0], expected_sigma)
    torch.testing.assert_close(rgb[0], expected_rgb)


def test_lightweight_decoder_aggregates_before_decoding():
    """K neighbours give the same result as one neighbour holding their weighted means."""
    decoder = RadianceDecoder(small_config(), FEATURES).double()
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in random_inputs(6, 5, 4).items()}
    weights = inverse_distance_weights(inputs["offsets_world"], inputs["valid"], 1e-6)
    mask = inputs["valid"].unsqueeze(-1)
    single = dict(
        features=(weights.unsqueeze(-1) * torch.where(mask, inputs["features"], 0)).sum(1, True),
        offsets_world=(weights.unsqueeze(-1) * torch.where(mask, inputs["offsets_world"], 0)).sum(1, True),
        offsets_camera=(weights.unsqueeze(-1) * torch.where(mask, inputs["offsets_camera"], 0)).sum(1, True),
        valid=inputs["valid"].any(1, keepdim=True),
        ray_dirs=inputs["ray_dirs"],
    )  # fmt: skip
    for got, expected in zip(decoder(**inputs), decoder(**single), strict=True):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("colour_residual", [False, True])
def test_lightweight_decoder_without_gradient_equals_the_training_path(colour_residual):
    """Rendering builds the networks' inputs in one buffer; training concatenates them."""
    decoder = RadianceDecoder(small_config(), FEATURES, colour_residual)
    torch.nn.init.normal_(decoder.colour_mlp[-1].weight)  # a trained colour MLP, not the zero start
    inputs = random_inputs(40, 5, FEATURES, seed=3)
    training = decoder(**inputs)
    with torch.no_grad():
        rendering = decoder(**inputs)
    for got, expected in zip(rendering, training, strict=True):
        torch.testing.assert_close(got, expected.detach(), rtol=1e-6, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        training = decoder(**inputs)
        with torch.no_grad():
            rendering = decoder(**inputs)
    for got, expected in zip(rendering, training, strict=True):
        torch.testing.assert_close(got, expected.detach(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("decoder_class", DECODERS)
def test_invalid_neighbours_do_not_affect_the_output(decoder_class):
    decoder = decoder_class(small_config(), FEATURES)
    inputs = random_inputs(16, 6, 4)
    sigma, rgb = decoder(**inputs)
    invalid = ~inputs["valid"]
    garbage = dict(inputs)
    for name in ("features", "offsets_world", "offsets_camera"):
        garbage[name] = inputs[name].clone().requires_grad_(True)
        with torch.no_grad():
            garbage[name][invalid] = NAN
    garbage_sigma, garbage_rgb = decoder(**garbage)
    assert torch.equal(garbage_sigma, sigma) and torch.equal(garbage_rgb, rgb)

    (garbage_sigma.sum() + garbage_rgb.sum()).backward()
    for name in ("features", "offsets_world", "offsets_camera"):
        grad = garbage[name].grad
        assert torch.isfinite(grad).all(), name
        assert (grad[invalid] == 0).all(), name


@pytest.mark.parametrize("decoder_class", DECODERS)
def test_without_camera_offsets_the_camera_frame_offset_changes_nothing(decoder_class):
    decoder = decoder_class(small_config(camera_offsets=False), FEATURES)
    published = decoder_class(small_config(), FEATURES)
    assert published.code_width - decoder.code_width == encoded_width(3, 5, include_input=False)
    inputs = random_inputs(16, 6, 4)
    turned = dict(inputs, offsets_camera=inputs["offsets_camera"].flip(-1) + 1.0)
    for a, b in zip(decoder(**inputs), decoder(**turned), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(published(**inputs)[0], published(**turned)[0])


@pytest.mark.parametrize("decoder_class", DECODERS)
def test_rows_without_neighbours_give_zero_and_outputs_stay_in_range(decoder_class):
    decoder = decoder_class(small_config(), FEATURES)
    inputs = random_inputs(32, 4, 4, seed=3)
    sigma, rgb = decoder(**inputs)
    assert sigma.shape == (32,) and rgb.shape == (32, 3)
    empty = ~inputs["valid"].any(1)
    assert empty.any()
    assert (sigma[empty] == 0).all() and (rgb[empty] == 0).all()
    assert (sigma[~empty] > 0).all()
    assert (rgb >= -0.001).all() and (rgb <= 1.001).all()


@pytest.mark.parametrize("decoder_class", DECODERS)
def test_output_activations(decoder_class):
    decoder = decoder_class(small_config(), FEATURES)
    density_out, colour_out = decoder.density_mlp[-1], decoder.colour_mlp[-1]
    inputs = random_inputs(4, 3, 4)
    with torch.no_grad():
        density_out.weight.zero_()
        density_out.bias.fill_(1.0)  # softplus(1 - 1) = ln 2
        colour_out.weight.zero_()
        colour_out.bias.copy_(torch.tensor([0.0, 100.0, -100.0]))
        sigma, rgb = decoder(**inputs)
    torch.testing.assert_close(sigma[1:], torch.full((3,), math.log(2)))
    torch.testing.assert_close(rgb[1:], torch.tensor([[0.5, 1.001, -0.001]]).expand(3, 3))


@pytest.mark.parametrize("decoder_class", DECODERS)
def test_gradients_reach_every_parameter_features_and_offsets(decoder_class):
    decoder = decoder_class(small_config(), FEATURES)
    inputs = random_inputs(24, 5, 4, seed=1)
    for name in ("features", "offsets_world", "offsets_camera"):
        inputs[name].requires_grad_(True)
    sigma, rgb = decoder(**inputs)
    (sigma * torch.linspace(0.5, 1.5, 24)).sum().add(rgb.pow(2).sum()).backward()
    for name, parameter in decoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    for name in ("features", "offsets_world", "offsets_camera"):
        grad = inputs[name].grad[inputs["valid"]]
        assert (grad.abs().sum(-1) > 0).all(), name


@pytest.mark.parametrize("decoder_class", DECODERS)
def test_colour_residual_starts_at_the_blended_texture_colour(decoder_class):
    torch.manual_seed(0)
    decoder = decoder_class(small_config(), FEATURES, colour_residual=True)
    inputs = random_inputs(16, 5, 4, seed=2)
    inputs["features"][..., 1:] = torch.rand(16, 5, 3)  # the last 3 channels: an RGB colour
    weights = inverse_distance_weights(inputs["offsets_world"], inputs["valid"], 1e-6)
    blended = torch.einsum("nk,nkc->nc", weights, inputs["features"][..., 1:])
    sigma, rgb = decoder(**inputs)
    has_valid = inputs["valid"].any(1)
    torch.testing.assert_close(rgb[has_valid], blended[has_valid], atol=1e-5, rtol=0)
    assert (rgb[~has_valid] == 0).all()
    # Trained away from zero, the MLP corrects the colour, which stays within the margin.
    with torch.no_grad():
        decoder.colour_mlp[-1].weight.normal_(0, 3.0)
        _, corrected = decoder(**inputs)
    assert (corrected[has_valid] - blended[has_valid]).abs().max() > 0.1
    assert (corrected >= -0.001).all() and (corrected <= 1.001).all()
    plain = decoder_class(small_config(), FEATURES)
    assert plain.colour_mlp[-1].weight.abs().sum() > 0
    with pytest.raises(ConfigError, match="colour residual needs an RGB colour"):
        decoder_class(small_config(), 2, colour_residual=True)


def test_published_widths_and_initialization():
    torch.manual_seed(0)
    decoder = RadianceDecoder(DecoderConfig())
    assert decoder.density_mlp[0].in_features == 284  # 32 + 32*6 + 6*10
    assert decoder.colour_mlp[0].in_features == 308  # 284 + 3*8
    linears = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (284, 128), (128, 1), (308, 128), (128, 128), (128, 128), (128, 3)
    ]  # fmt: skip
    # 284*128+128 + 128+1 = 36,609 and 308*128+128 + 2*(128*128+128) + 128*3+3 = 72,963
    assert sum(p.numel() for p in decoder.parameters()) == 109_572
    leaky_gain = math.sqrt(2 / (1 + 0.2**2))
    last_layers = {decoder.density_mlp[-1], decoder.colour_mlp[-1]}
    for layer in linears:
        gain = 1.0 if layer in last_layers else leaky_gain
        bound = gain * math.sqrt(6 / (layer.in_features + layer.out_features))
        assert (layer.bias == 0).all()
        assert 0.9 * bound < layer.weight.abs().max().item() <= bound


def test_make_radiance_decoder_and_config_errors():
    assert type(make_radiance_decoder(small_config(), FEATURES)) is RadianceDecoder
    assert type(make_radiance_decoder(small_config(variant="pointnerf"), FEATURES)) is PointNeRFDecoder
    with pytest.raises(ConfigError, match="variant must be one of"):
        make_radiance_decoder(small_config(variant="nerf"))
    decoder = RadianceDecoder(small_config(), FEATURES)
    inputs = random_inputs(3, 2, 5)
    with pytest.raises(ConfigError, match="5 channels but the decoder takes 4"):
        decoder(**inputs)
    inputs = random_inputs(3, 2, 4)
    inputs["offsets_camera"] = inputs["offsets_camera"][:, :1]
    with pytest.raises(ValueError, match=r"offsets_camera must have shape \(3, 2, 3\)"):
        decoder(**inputs)


# ----------------------------------------------------------------------------------------------
# Compositing

RED, GREEN, BLUE = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]


def hand_rays() -> dict[str, torch.Tensor]:
    """Three rays of 4 slots. Rays 0 and 1 hold the same valid samples z = 1, 2, 4 with
    sigma = 0.5, 1, 2 and colours red, green, blue; ray 0 pads at the end, ray 1 has an invalid slot
    between its first two samples; ray 2 has no valid sample. Invalid slots hold NaN."""
    return dict(
        sigma=torch.tensor([[0.5, 1.0, 2.0, NAN], [0.5, NAN, 1.0, 2.0], [NAN] * 4], dtype=torch.float64),
        rgb=torch.tensor(
            [[RED, GREEN, BLUE, [NAN] * 3], [RED, [NAN] * 3, GREEN, BLUE], [[NAN] * 3] * 4],
            dtype=torch.float64,
        ),
        z=torch.tensor([[1.0, 2.0, 4.0, NAN], [1.0, NAN, 2.0, 4.0], [NAN] * 4], dtype=torch.float64),
        valid=torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1], [0, 0, 0, 0]], dtype=torch.bool),
    )  # fmt: skip


@pytest.mark.parametrize("scan", [torch.cumsum, torch.cumprod, torch.cummax, torch.cummin])
def test_scans_along_rows_equal_torch_scans_along_dim_1(scan):
    x = 1 + 0.1 * torch.randn(300, 17, dtype=torch.float64)
    expected = scan(x, dim=1)
    expected = expected if isinstance(expected, torch.Tensor) else expected.values
    assert torch.equal(scan_rows(scan, x), expected)
    if scan in (torch.cummax, torch.cummin):
        labels = torch.randint(0, 9, (300, 17))
        assert torch.equal(scan_rows(scan, labels), scan(labels, dim=1).values)


def test_sample_intervals_skip_invalid_slots():
    rays = hand_rays()
    delta = sample_intervals(rays["z"], rays["valid"], last_delta=1e10)
    expected = torch.tensor([[1.0, 2.0, 1e10, 0.0], [1.0, 0.0, 2.0, 1e10], [0.0] * 4], dtype=torch.float64)
    assert torch.equal(delta, expected)


def test_composite_matches_hand_computed_rays():
    # delta = 1, 2, 1e10
    # alpha = 1 - e^-0.5 = 0.3934693402873666, 1 - e^-2 = 0.8646647167633873, 1 - e^-2e10 = 1
    # T     = 1, e^-0.5 + 1e-10 = 0.6065306598126334, 0.6065306598126334 (e^-2 + 1e-10) = 0.0820849986980854
    # w     = 0.3934693402873666, 0.5244456611752011, 0.0820849986980854
    # depth = w0 + 2 w1 + 4 w2 = 1.7707006574301103; opacity = w0 + w1 + w2 = 1.000000000160653
    colour, depth, opacity = composite(**hand_rays(), last_delta=1e10)
    weights = [0.3934693402873666, 0.5244456611752011, 0.0820849986980854]
    expected_colour = torch.tensor([weights, weights, [0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(colour, expected_colour, rtol=0, atol=1e-15)
    expected_depth = torch.tensor([1.7707006574301103, 1.7707006574301103, 0.0], dtype=torch.float64)
    torch.testing.assert_close(depth, expected_depth, rtol=0, atol=1e-15)
    expected_opacity = torch.tensor([1.000000000160653, 1.000000000160653, 0.0], dtype=torch.float64)
    torch.testing.assert_close(opacity, expected_opacity, rtol=0, atol=1e-15)


def test_composite_with_a_finite_last_delta():
    # last sample: delta 1, alpha = 1 - e^-2, w = 0.0820849986980854 * 0.8646647167633873
    colour, _, _ = composite(**hand_rays(), last_delta=1.0)
    torch.testing.assert_close(colour[:2, 2], torch.full((2,), 0.07097600214980303, dtype=torch.float64))


def loop_reference(sigma, rgb, z, valid, last_delta):
    """Compositing of one ray at a time over its valid samples, in plain Python."""
    colours, depths, opacities = [], [], []
    for r in range(sigma.shape[0]):
        keep = valid[r].nonzero().flatten().tolist()
        colour, depth, opacity, transmittance = torch.zeros(3, dtype=torch.float64), 0.0, 0.0, 1.0
        for i, j in enumerate(keep):
            delta = z[r, keep[i + 1]].item() - z[r, j].item() if i + 1 < len(keep) else last_delta
            alpha = 1.0 - math.exp(-sigma[r, j].item() * delta)
            colour += transmittance * alpha * rgb[r, j]
            depth += transmittance * alpha * z[r, j].item()
            opacity += transmittance * alpha
            transmittance *= 1.0 - alpha + 1e-10
        colours.append(colour)
        depths.append(depth)
        opacities.append(opacity)
    float64 = dict(dtype=torch.float64)
    return torch.stack(colours), torch.tensor(depths, **float64), torch.tensor(opacities, **float64)


@pytest.mark.parametrize("last_delta", [1e10, 0.7])
def test_composite_matches_a_loop_over_random_rays(last_delta):
    generator = torch.Generator().manual_seed(0)
    rays, slots = 40, 7
    z = torch.sort(100 + 20 * torch.rand(rays, slots, generator=generator, dtype=torch.float64)).values
    valid = torch.rand(rays, slots, generator=generator) < 0.6
    sigma = torch.rand(rays, slots, generator=generator, dtype=torch.float64) * 0.5
    rgb = torch.rand(rays, slots, 3, generator=generator, dtype=torch.float64)
    got = composite(sigma, rgb, z, valid, last_delta)
    for g, e in zip(got, loop_reference(sigma, rgb, z, valid, last_delta), strict=True):
        torch.testing.assert_close(g, e)


def test_composite_gradients_are_finite_and_skip_invalid_slots():
    rays = hand_rays()
    for name in ("sigma", "rgb", "z"):
        rays[name].requires_grad_(True)
    colour, depth, opacity = composite(**rays, last_delta=1.0)
    (colour.sum() + depth.sum() + opacity.sum()).backward()
    invalid = ~rays["valid"]
    for name in ("sigma", "rgb", "z"):
        grad = rays[name].grad
        assert torch.isfinite(grad).all(), name
        assert (grad[invalid] == 0).all(), name
        assert (grad[rays["valid"]].abs() > 0).any(), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("decoder_class", DECODERS)
def test_decoding_and_compositing_on_cuda_match_cpu(decoder_class):
    torch.manual_seed(0)
    decoder = decoder_class(DecoderConfig()).double()
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in random_inputs(256, 8, 32).items()}
    cpu = decoder(**inputs)
    cuda = decoder.cuda()(**{k: v.cuda() for k, v in inputs.items()})
    for c, g in zip(cpu, cuda, strict=True):
        torch.testing.assert_close(g.cpu(), c, rtol=0, atol=1e-12)

    sigma, rgb = cpu
    z = torch.sort(800 + 40 * torch.rand(16, 16, dtype=torch.float64)).values
    rays = dict(sigma=sigma.detach().view(16, 16), rgb=rgb.detach().view(16, 16, 3), z=z)
    rays["valid"] = inputs["valid"].any(-1).view(16, 16)
    expected = composite(**rays, last_delta=1e10)
    got = composite(**{k: v.cuda() for k, v in rays.items()}, last_delta=1e10)
    for c, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g.cpu(), c, rtol=0, atol=1e-10)
    for scan in (torch.cumsum, torch.cumprod, torch.cummax, torch.cummin):
        torch.testing.assert_close(scan_rows(scan, z.cuda() / 800).cpu(), scan_rows(scan, z / 800))
