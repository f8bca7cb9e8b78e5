"""Encoder, decoders and AvatarNetwork (method.md section 3) at tiny sizes, and the published counts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from npva.config import DecoderConfig, ModelConfig
from npva.errors import ConfigError, NpvaError
from npva.model.decoding import PointNeRFDecoder, RadianceDecoder
from npva.model.networks import (
    AvatarNetwork,
    CoarseDecoder,
    DisplacementDecoder,
    Encoder,
    FeatureDecoder,
    UpBlock,
    append_texture,
    coarse_map,
    kl_divergence,
    sample_latent,
    validate_model_config,
)
from npva.train.presets import preset_config

DOCS = Path(__file__).resolve().parents[1] / "docs" / "model.md"


def tiny_config(**overrides) -> ModelConfig:
    """T = 64, S = 32, P = 64, latent 4 x 8 x 8, a few channels per layer."""
    values = dict(
        texture_size=64,
        posmap_size=32,
        point_map_size=64,
        latent_size=8,
        texture_channels=(8,),
        geometry_channels=8,
        encoder_channels=(16, 8),
        coarse_channels=(8, 3),
        displacement_channels=(8, 8, 3),
        feature_channels=(16, 8, 8),
    )
    values.update(overrides)
    return ModelConfig(**values)


def tiny_inputs(cfg: ModelConfig, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    texture = torch.rand(batch, 3, cfg.texture_size, cfg.texture_size, generator=generator)
    posmap = torch.randn(batch, 3, cfg.posmap_size, cfg.posmap_size, generator=generator)
    return texture, posmap


def test_avatar_network_shapes_at_tiny_sizes():
    cfg = tiny_config()
    net = AvatarNetwork(cfg)
    out = net(*tiny_inputs(cfg), generator=torch.Generator().manual_seed(1))
    assert out.mu.shape == out.logstd.shape == out.z.shape == (2, 4, 8, 8)
    assert out.maps.coarse_offset.shape == (2, 3, 32, 32)
    assert out.maps.displacement.shape == (2, 3, 64, 64)
    assert out.maps.features.shape == (2, 8, 64, 64)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(latent_size=4, encoder_channels=(16, 8, 8), coarse_channels=(8, 8, 3),
             displacement_channels=(8, 8, 8, 3), feature_channels=(16, 8, 8, 8)),
        dict(point_map_size=128, displacement_channels=(4, 4, 4, 3), feature_channels=(8, 8, 8, 5)),
        dict(latent_channels=2, posmap_size=16, texture_size=64, texture_channels=(8, 8),
             encoder_channels=(8,), coarse_channels=(3,)),
    ],
)  # fmt: skip
def test_decoders_produce_configured_sizes(overrides):
    cfg = tiny_config(**overrides)
    z = torch.randn(1, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    decoders = [
        (CoarseDecoder(cfg), cfg.coarse_channels, cfg.posmap_size),
        (DisplacementDecoder(cfg), cfg.displacement_channels, cfg.point_map_size),
        (FeatureDecoder(cfg), cfg.feature_channels, cfg.point_map_size),
    ]
    for decoder, channels, size in decoders:
        assert decoder(z).shape == (1, channels[-1], size, size)
        # one up block per entry, each with an untied bias at its input resolution
        bias_shapes = [tuple(block.untied_bias.bias.shape) for block in decoder.blocks]
        expected = [(c, cfg.latent_size * 2**i, cfg.latent_size * 2**i) for i, c in enumerate(channels)]
        assert bias_shapes == expected
    mu, logstd = Encoder(cfg)(*tiny_inputs(cfg, batch=1))
    assert mu.shape == logstd.shape == z.shape


def test_forward_backward_reaches_every_parameter():
    cfg = tiny_config()
    net = AvatarNetwork(cfg).train()
    out = net(*tiny_inputs(cfg), generator=torch.Generator().manual_seed(2))
    maps = out.maps
    target = torch.randn_like(maps.features)
    loss = (
        maps.coarse_offset.pow(2).mean()
        + maps.displacement.abs().mean()
        + (maps.features - target).pow(2).mean()
        + kl_divergence(out.mu, out.logstd)
    )
    loss.backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_append_texture_keeps_the_features_and_appends_the_texture():
    features = torch.randn(2, 4, 16, 16, dtype=torch.float64)
    texture = torch.rand(2, 3, 16, 16)
    out = append_texture(features, texture)
    assert out.shape == (2, 7, 16, 16) and out.dtype == torch.float64
    assert torch.equal(out[:, :4], features)
    assert torch.equal(out[:, 4:], texture.double())  # already P x P: unchanged
    colour = torch.tensor([0.2, 0.5, 0.9])
    out = append_texture(features[..., :8, :8], colour[None, :, None, None].expand(2, 3, 64, 64))
    assert out.shape == (2, 7, 8, 8)
    torch.testing.assert_close(out[:, 4:], colour[None, :, None, None].double().expand(2, 3, 8, 8))


def test_append_texture_averages_detail_finer_than_the_point_map():
    """Every 4th column lit, shrunk 4x: antialiasing gives the mean 1/4 away from the border, where
    plain bilinear sampling would fall between the lit columns and see 0."""
    texture = torch.zeros(1, 3, 32, 32)
    texture[..., ::4] = 1.0
    out = append_texture(torch.zeros(1, 2, 8, 8), texture)
    torch.testing.assert_close(out[:, 2:, :, 1:-1], torch.full((1, 3, 8, 6), 0.25))


def test_point_feature_channels_count_the_appended_texture():
    assert ModelConfig().point_feature_channels == 32
    assert ModelConfig(texture="features").point_feature_channels == 35
    assert tiny_config().point_feature_channels == 8
    assert tiny_config(texture="features").point_feature_channels == 11


def test_texture_features_follow_the_decoded_ones_and_pass_gradients():
    cfg = tiny_config(texture="features", texture_size=128, texture_channels=(8, 8))  # T = 2 P
    net = AvatarNetwork(cfg).eval()
    texture, posmap = tiny_inputs(cfg)
    out = net(texture, posmap)
    features = out.maps.features
    assert features.shape == (2, cfg.point_feature_channels, 64, 64) == (2, 11, 64, 64)
    decoded = net.feature_decoder(out.z)
    assert torch.equal(features[:, :8], decoded)
    assert torch.equal(features, append_texture(decoded, texture))
    assert torch.equal(net.decode(out.z, texture).features, features)
    features.pow(2).mean().backward()
    for name, parameter in net.feature_decoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_decoding_with_texture_features_needs_the_texture():
    cfg = tiny_config(texture="features")
    z = torch.randn(1, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    with pytest.raises(ValueError, match="decoding needs the frame's average texture"):
        AvatarNetwork(cfg).decode(z)


def test_kl_divergence_known_values():
    mu = torch.tensor([0.0, 1.0], dtype=torch.float64)
    logstd = torch.tensor([0.0, 0.6931471805599453], dtype=torch.float64)  # std 1 and 2
    # element 0: 1 + 0 - 1 - 0 = 0; element 1: 4 + 1 - 1 - 2 ln 2 = 2.6137056388801094
    # KL = 0.5 * mean = 0.5 * 1.3068528194400547
    assert kl_divergence(mu, logstd).item() == pytest.approx(0.6534264097200273, abs=1e-12)
    assert kl_divergence(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0.0


@pytest.mark.parametrize("logstd_bias", [0.0, -3.0])
def test_encoder_scales_mu_and_logstd(logstd_bias):
    cfg = tiny_config(mu_scale=0.1, logstd_scale=0.01, logstd_bias=logstd_bias)
    encoder = Encoder(cfg)
    for head in (encoder.mu_head, encoder.logstd_head):
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.constant_(head.bias, 1.0)
    mu, logstd = encoder(*tiny_inputs(cfg))
    torch.testing.assert_close(mu, torch.full_like(mu, 0.1))
    torch.testing.assert_close(logstd, torch.full_like(logstd, 0.01 + logstd_bias))


def test_sample_latent_is_mu_plus_std_times_noise():
    mu = torch.randn(2, 4, 8, 8)
    logstd = 0.3 * torch.randn(2, 4, 8, 8)
    z = sample_latent(mu, logstd, torch.Generator().manual_seed(5))
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(z, mu + torch.exp(logstd) * eps)


def test_latent_is_a_sample_in_training_and_mu_in_evaluation():
    net = AvatarNetwork(tiny_config())
    mu, logstd = torch.randn(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)
    assert not torch.equal(net.train().latent(mu, logstd), mu)
    assert torch.equal(net.eval().latent(mu, logstd), mu)
    texture, posmap = tiny_inputs(tiny_config(), batch=1)
    out = net(texture, posmap)
    assert torch.equal(out.z, out.mu)


@pytest.mark.parametrize("preset", ["tiny", "demo"])
def test_decoded_maps_follow_the_latent_from_the_start(preset):
    # Without BatchNorm, PyTorch's default init shrinks each layer's output, so at the demo's sizes the
    # decoded maps moved by about 1e-4 between latent codes; the decoders then learned the mean face
    # first and a short run never followed the expressions. Xavier with the LeakyReLU gain keeps it.
    cfg = preset_config(preset).model
    assert not cfg.batchnorm
    torch.manual_seed(0)
    net = AvatarNetwork(cfg)
    z = torch.randn(8, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    with torch.no_grad():
        for decoder in (net.coarse_decoder, net.displacement_decoder, net.feature_decoder):
            assert decoder(z).std(dim=0).mean() > 0.05
        texture, posmap = tiny_inputs(cfg, batch=8)
        mu, _ = net.encoder(texture, posmap)
    assert mu.std(dim=0).mean() > 0.05


def test_untied_bias_is_per_pixel():
    torch.manual_seed(0)
    block = UpBlock(4, 3, size=5, leaky_slope=0.2)
    x = torch.randn(2, 4, 5, 5)
    (block(x) * torch.randn(2, 3, 10, 10)).sum().backward()
    grad = block.untied_bias.bias.grad
    assert grad.shape == (3, 5, 5)
    assert (grad.flatten(1).std(dim=1) > 1e-6).all()  # not one value per channel

    # in evaluation mode, bias at input pixel (i, j) moves only output pixels (2i..2i+1, 2j..2j+1)
    block.eval()
    with torch.no_grad():
        before = block(x)
        block.untied_bias.bias[1, 2, 3] += 1.0
        changed = (block(x) - before).abs().sum(dim=(0, 1)) > 0
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[4:6, 6:8] = True
    assert torch.equal(changed, expected)


def test_last_up_block_is_affine_and_others_are_not():
    torch.manual_seed(0)
    x1, x2 = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)

    def affine_gap(block: UpBlock) -> float:
        block.eval()
        with torch.no_grad():
            mixed = block(0.5 * x1 + 0.5 * x2)
            return (mixed - 0.5 * block(x1) - 0.5 * block(x2)).abs().max().item()

    assert affine_gap(UpBlock(4, 3, 4, 0.2, final=True)) < 1e-5
    assert affine_gap(UpBlock(4, 3, 4, 0.2, final=False)) > 1e-3


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (dict(texture_size=128), ["texture_channels", "texture_size (128)", "= 64"]),
        (dict(encoder_channels=(16, 8, 8)), ["encoder_channels has 3", "needs 2 entries"]),
        (dict(latent_size=4), ["encoder_channels", "latent_size (4)"]),
        (dict(coarse_channels=(8, 8, 3)), ["coarse_channels", "posmap_size (32)"]),
        (dict(coarse_channels=(8, 4)), ["coarse_channels must end with 3"]),
        (dict(displacement_channels=(8, 3)), ["displacement_channels", "point_map_size (64)"]),
        (dict(feature_channels=(16, 8, 8, 8)), ["feature_channels", "needs 3 entries"]),
        (dict(posmap_size=24), ["posmap_size (24)"]),
        (dict(encoder_channels=()), ["encoder_channels must be a non-empty"]),
    ],
)
def test_config_mismatch_gives_a_clear_error(overrides, fragments):
    cfg = tiny_config(**overrides)
    with pytest.raises(ConfigError) as info:
        validate_model_config(cfg)
    for fragment in fragments:
        assert fragment in str(info.value)
    with pytest.raises(NpvaError):
        AvatarNetwork(cfg)


def test_input_shape_errors_name_the_tensor():
    cfg = tiny_config()
    texture, posmap = tiny_inputs(cfg)
    encoder = Encoder(cfg)
    with pytest.raises(ValueError, match=r"texture must have shape \(B, 3, 64, 64\)"):
        encoder(texture[:, :, :32, :32], posmap)
    with pytest.raises(ValueError, match="posmap_normalized"):
        encoder(texture, posmap[:1])
    with pytest.raises(ValueError, match=r"z must have shape \(B, 4, 8, 8\)"):
        CoarseDecoder(cfg)(torch.zeros(1, 4, 4, 4))


def test_coarse_map_is_std_times_offset_plus_mean():
    offset = torch.tensor([[[[1.0, -2.0]], [[0.5, 0.0]], [[0.0, 3.0]]]])  # (1,3,1,2)
    mean = torch.tensor([[[10.0, 20.0]], [[30.0, 40.0]], [[50.0, 60.0]]])  # (3,1,2)
    expected = torch.tensor([[[[14.0, 12.0]], [[32.0, 40.0]], [[50.0, 72.0]]]])
    torch.testing.assert_close(coarse_map(offset, mean, 4.0), expected)
    with pytest.raises(ValueError, match="channels first"):
        coarse_map(offset, mean.permute(1, 2, 0), 4.0)


def _documented_counts(section: str) -> dict[str, int]:
    """Rows "| `Name` | 1,234 |" of one "## section" of docs/model.md."""
    text = DOCS.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*`(\w+)`\s*\|\s*([\d,]+)\s*\|", body, flags=re.MULTILINE)
    return {name: int(count.replace(",", "")) for name, count in rows}


def test_published_parameter_counts_match_docs():
    documented = _documented_counts("Parameters")
    with torch.device("meta"):  # full size without allocating or initializing anything
        net = AvatarNetwork(ModelConfig())
    counts = {
        "Encoder": net.encoder,
        "CoarseDecoder": net.coarse_decoder,
        "DisplacementDecoder": net.displacement_decoder,
        "FeatureDecoder": net.feature_decoder,
        "AvatarNetwork": net,
    }
    counts["RadianceDecoder"] = RadianceDecoder(DecoderConfig())
    counts["PointNeRFDecoder"] = PointNeRFDecoder(DecoderConfig())
    assert set(documented) == set(counts)
    for name, module in counts.items():
        assert sum(p.numel() for p in module.parameters()) == documented[name], name


def test_flops_per_shading_point_match_docs():
    documented = _documented_counts("FLOPs per shading point")
    n, k, c = 16, 8, 32
    inputs = (torch.randn(n, k, c), torch.randn(n, k, 3), torch.randn(n, k, 3))
    valid = torch.ones(n, k, dtype=torch.bool)
    directions = F.normalize(torch.randn(n, 3), dim=-1)
    measured = {}
    for decoder in (RadianceDecoder(DecoderConfig()), PointNeRFDecoder(DecoderConfig())):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            decoder(*inputs, valid, directions)
        measured[type(decoder).__name__] = counter.get_total_flops() // n
    assert measured == documented
    # lightweight by hand, 2 FLOPs per multiply-add: aggregation 8 * (32 + 6), density 284*128 + 128,
    # colour 308*128 + 2 * 128*128 + 128*3
    assert measured["RadianceDecoder"] == 2 * (8 * 38 + 284 * 128 + 128 + 308 * 128 + 2 * 128**2 + 384)


@pytest.mark.parametrize("batchnorm", [True, False])
def test_without_batchnorm_each_frame_is_encoded_and_decoded_on_its_own(batchnorm):
    """With BatchNorm a training batch normalizes its frames together (a batch of one by its own
    statistics); without it a frame's latent and maps do not depend on the other frames of the batch."""
    cfg = tiny_config(batchnorm=batchnorm)
    torch.manual_seed(0)
    net = AvatarNetwork(cfg).train()
    texture, posmap = tiny_inputs(cfg, batch=3)
    mu_batch, _ = net.encode(texture, posmap)
    mu_alone, _ = net.encode(texture[:1], posmap[:1])
    maps_batch = net.decode(mu_batch.detach())
    maps_alone = net.decode(mu_batch.detach()[:1])
    same = torch.allclose(mu_batch[:1], mu_alone, atol=1e-5) and torch.allclose(
        maps_batch.features[:1], maps_alone.features, atol=1e-5
    )
    assert same != batchnorm
    has_norm = any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert has_norm == batchnorm


def test_folded_batchnorm_computes_what_the_network_did_in_evaluation():
    cfg = tiny_config(batchnorm=True, texture="features")
    torch.manual_seed(0)
    network = AvatarNetwork(cfg)
    texture, posmap = tiny_inputs(cfg, batch=2)
    for _ in range(3):  # running statistics and affine parameters away from their initial values
        network(texture * 2 + 0.3, posmap * 3 - 1)
    for norm in (m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        torch.nn.init.uniform_(norm.weight, 0.5, 2.0)
        torch.nn.init.normal_(norm.bias)
    network.eval()
    with pytest.raises(RuntimeError, match="evaluation"):
        AvatarNetwork(cfg).fold_batchnorm()  # a new network is in training mode
    with torch.no_grad():
        before = network(texture, posmap)
        norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())
        assert network.fold_batchnorm() == norms > 0
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())
        after = network(texture, posmap)
    for name in ("coarse_offset", "displacement", "features"):
        torch.testing.assert_close(
            getattr(after.maps, name), getattr(before.maps, name), atol=1e-5, rtol=1e-4
        )
    torch.testing.assert_close(after.mu, before.mu, atol=1e-6, rtol=1e-4)
    with pytest.raises(RuntimeError, match="folded"):
        network.train()
