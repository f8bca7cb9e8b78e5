"""Loss terms on hand-computed cases, their masking rules and gradients; the perceptual loss."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from npva.config import LossConfig
from npva.errors import FormatError, NpvaError
from npva.model.losses import (
    colour_error,
    compute_losses,
    depth_loss,
    displacement_loss,
    kl_divergence,
    mesh_loss,
    patch_image,
    points_loss,
    rgb_loss,
    smoothness_loss,
)
from npva.quality import perceptual
from npva.quality.perceptual import lpips_vgg, make_perceptual_loss, shipped_st_lpips_weights, st_lpips
from npva.quality.ssim import ssim

needs_st_lpips = pytest.mark.skipif(
    shipped_st_lpips_weights("vgg") is None, reason="stlpips-pytorch (shipped ST-LPIPS weights) not installed"
)


def test_rgb_is_the_mean_colour_error_norm():
    colour = torch.tensor([[0.3, 0.4, 0.0], [0.5, 0.5, 0.5]])
    target = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    assert torch.allclose(colour_error(colour, target), torch.tensor([0.5, 0.0]))
    assert rgb_loss(colour, target).item() == pytest.approx(0.25)
    colour.requires_grad_(True)
    rgb_loss(colour, target).backward()  # zero error on ray 1: a finite (zero) gradient, no NaN
    assert torch.isfinite(colour.grad).all() and colour.grad[1].abs().max() == 0
    assert torch.allclose(colour.grad[0], torch.tensor([0.6, 0.8, 0.0]) / 2)


def test_depth_uses_known_depth_below_the_threshold():
    depth = torch.tensor([100.0, 200.0, 300.0, 412.0, 50.0])
    mvs = torch.tensor([98.0, 204.0, 0.0, 400.0, 40.0])  # errors 2, 4, unknown, 12 (too far), 10 (not below)
    assert depth_loss(depth, mvs, 10.0).item() == pytest.approx(3.0)
    assert depth_loss(depth, mvs, 20.0).item() == pytest.approx((2 + 4 + 12 + 10) / 4)
    nothing = depth_loss(depth.requires_grad_(True), torch.zeros(5), 10.0)
    assert nothing.item() == 0
    nothing.backward()  # still part of the graph
    assert depth.grad.abs().max() == 0


def test_mesh_excludes_mouth_and_uncovered_texels():
    posmap = torch.zeros(3, 2, 2)
    coarse = torch.zeros(3, 2, 2)
    coarse[:, 0, 0] = torch.tensor([1.0, -2.0, 2.0])  # L1 5, L2 3
    coarse[:, 0, 1] = torch.tensor([0.0, 0.0, 1.0])  # L1 1, L2 1
    coarse[:, 1, 0] = 100.0  # mouth
    coarse[:, 1, 1] = -100.0  # not covered
    coverage = torch.tensor([[True, True], [True, False]])
    mouth = torch.tensor([[False, False], [True, False]])
    assert mesh_loss(coarse, posmap, coverage, mouth).item() == pytest.approx(3.0)
    assert mesh_loss(coarse, posmap, coverage, mouth, norm="l2").item() == pytest.approx(2.0)
    batch = torch.stack([coarse, coarse + 0])  # (B, 3, S, S) works the same
    assert mesh_loss(batch, posmap[None], coverage, mouth).item() == pytest.approx(3.0)


def test_mouth_points_count_mouth_texels_where_the_mesh_has_surface():
    point_map = torch.zeros(3, 2, 2, requires_grad=True)
    tracked = torch.zeros(3, 2, 2)
    tracked[:, 0, 0] = torch.tensor([1.0, -2.0, 2.0])  # L1 5, L2 3
    tracked[:, 0, 1] = float("nan")  # no surface: left out
    tracked[:, 1, 0] = 100.0  # not mouth
    tracked[:, 1, 1] = torch.tensor([0.0, 0.0, 1.0])  # L1 1, L2 1
    mouth = torch.tensor([[True, True], [False, True]])
    loss = points_loss(point_map, tracked, mouth)
    assert loss.item() == pytest.approx(3.0)
    assert points_loss(point_map, tracked, mouth, norm="l2").item() == pytest.approx(2.0)
    loss.backward()  # the texel without surface gives no NaN gradient, nor does the one outside the mouth
    assert torch.isfinite(point_map.grad).all()
    assert (point_map.grad[:, 0, 1] == 0).all() and (point_map.grad[:, 1, 0] == 0).all()
    assert point_map.grad[:, 0, 0].abs().sum() > 0


def test_geometry_terms_over_no_texels_are_zero_with_zero_gradients():
    coarse = torch.full((3, 3, 3), 5.0, requires_grad=True)
    nothing = torch.zeros(3, 3, dtype=torch.bool)
    terms = (
        mesh_loss(coarse, torch.zeros(3, 3, 3), nothing, nothing),
        points_loss(coarse, torch.zeros(3, 3, 3), nothing),
        smoothness_loss(coarse, torch.eye(3, dtype=torch.bool), 4.0),  # no two covered texels adjoin
    )
    assert [term.item() for term in terms] == [0.0, 0.0, 0.0]
    sum(terms).backward()
    assert (coarse.grad == 0).all()


def test_mesh_mouth_weight_counts_mouth_texels_with_that_weight():
    posmap = torch.zeros(3, 2, 2)
    coarse = torch.zeros(3, 2, 2)
    coarse[:, 0, 0] = torch.tensor([1.0, -2.0, 2.0])  # L1 5
    coarse[:, 0, 1] = torch.tensor([0.0, 0.0, 1.0])  # L1 1
    coarse[:, 1, 0] = torch.tensor([4.0, 0.0, 0.0])  # L1 4, mouth
    coverage = torch.tensor([[True, True], [True, False]])
    mouth = torch.tensor([[False, False], [True, False]])
    # (5 + 1 + 0.5 * 4) / (1 + 1 + 0.5)
    assert mesh_loss(coarse, posmap, coverage, mouth, mouth_weight=0.5).item() == pytest.approx(3.2)
    assert mesh_loss(coarse, posmap, coverage, mouth, mouth_weight=1.0).item() == pytest.approx(10 / 3)
    batch = torch.stack([coarse, coarse + 0])
    assert mesh_loss(batch, posmap[None], coverage, mouth, mouth_weight=0.5).item() == pytest.approx(3.2)


def test_smoothness_is_smooth_l1_over_covered_neighbour_pairs():
    beta = 4.0
    coarse = torch.zeros(3, 2, 3)
    coarse[0, 0, 1] = 2.0  # x of texel (0, 1)
    coarse[0, 1, 2] = 50.0  # texel (1, 2) is not covered: its pairs do not count
    coverage = torch.tensor([[True, True, True], [True, True, False]])
    # Horizontal pairs (along columns): covered (0,0)-(0,1), (0,1)-(0,2), (1,0)-(1,1); differences in x of
    # 2, -2, 0 -> smooth-L1 0.5 * 4 / 4 = 0.5, 0.5, 0 over 3 pairs x 3 channels -> 1 / 9.
    # Vertical pairs: (0,0)-(1,0), (0,1)-(1,1): differences 0 and -2 -> 0.5 over 2 pairs x 3 -> 0.5 / 6.
    expected = 1 / 9 + 0.5 / 6
    assert smoothness_loss(coarse, coverage, beta).item() == pytest.approx(expected)
    coarse[0, 0, 1] = 10.0  # beyond beta: |d| - beta / 2 = 8 per pair
    assert smoothness_loss(coarse, coverage, beta).item() == pytest.approx(16 / 9 + 8 / 6)


def test_displacement_counts_only_long_displacements():
    displacement = torch.zeros(3, 2, 2)
    displacement[:, 0, 0] = torch.tensor([3.0, 4.0, 0.0])  # 5 mm: free
    displacement[:, 0, 1] = torch.tensor([0.0, 12.0, 0.0])  # 12 mm
    displacement[:, 1, 0] = torch.tensor([0.0, 0.0, -20.0])  # 20 mm
    assert displacement_loss(displacement, 10.0).item() == pytest.approx((12 + 20) / 4)
    assert displacement_loss(displacement, 30.0).item() == 0


def test_kl_is_zero_at_the_prior():
    assert kl_divergence(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)).item() == 0
    assert kl_divergence(torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)).item() == pytest.approx(0.5)


class _MeanAbs(torch.nn.Module):
    """A stand-in perceptual network: mean |a - b|."""

    def forward(self, a, b):
        return (a - b).abs().mean()


def _inputs(generator: torch.Generator, rays: int = 16) -> dict[str, torch.Tensor]:
    size = 4
    coverage = torch.ones(size, size, dtype=torch.bool)
    coverage[0, 0] = False
    mouth = torch.zeros(size, size, dtype=torch.bool)
    mouth[2, 2] = True
    mvs = 500 + torch.rand(rays, generator=generator) * 5
    leaf = lambda t: t.requires_grad_(True)  # noqa: E731
    return {
        "colour": leaf(torch.rand(rays, 3, generator=generator)),
        "target": torch.rand(rays, 3, generator=generator),
        "depth": leaf(mvs + torch.randn(rays, generator=generator)),
        "guide_depth": leaf(mvs + torch.randn(rays, generator=generator)),
        "mvs_depth": mvs,
        "coarse": leaf(torch.randn(3, size, size, generator=generator) * 5),
        "posmap": torch.randn(3, size, size, generator=generator),
        "coverage": coverage,
        "mouth": mouth,
        "displacement": leaf(torch.randn(3, 8, 8, generator=generator) * 10),
        "mu": leaf(torch.randn(1, 4, 2, 2, generator=generator)),
        "logstd": leaf(torch.randn(1, 4, 2, 2, generator=generator) * 0.1),
    }


def test_compute_losses_weights_the_terms_and_lets_gradients_flow():
    config = LossConfig()
    inputs = _inputs(torch.Generator().manual_seed(0))
    total, terms = compute_losses(config, **inputs)
    assert sorted(terms) == ["depth", "displacement", "kl", "mesh", "rast_depth", "rgb", "smooth"]
    assert all(not value.requires_grad for value in terms.values())
    expected = (
        5 * rgb_loss(inputs["colour"], inputs["target"])
        + 0.1 * depth_loss(inputs["depth"], inputs["mvs_depth"], 10)
        + 0.2 * depth_loss(inputs["guide_depth"], inputs["mvs_depth"], 10)
        + 0.2 * mesh_loss(inputs["coarse"], inputs["posmap"], inputs["coverage"], inputs["mouth"])
        + 1.0 * smoothness_loss(inputs["coarse"], inputs["coverage"], 4)
        + 0.001 * kl_divergence(inputs["mu"], inputs["logstd"])
        + 0.1 * displacement_loss(inputs["displacement"], 10)
    )
    assert total.item() == pytest.approx(expected.item())
    total.backward()
    for name in ("colour", "depth", "guide_depth", "coarse", "displacement", "mu", "logstd"):
        grad = inputs[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_compute_losses_patch_phase_and_missing_inputs():
    inputs = _inputs(torch.Generator().manual_seed(1))
    config = LossConfig()
    _, terms = compute_losses(config, **inputs)
    assert "lpips" not in terms  # not a patch
    total, terms = compute_losses(config, **inputs, patch_shape=(4, 4), perceptual=_MeanAbs())
    image = patch_image(inputs["colour"], (4, 4))
    assert image.shape == (1, 3, 4, 4) and torch.equal(image[0, :, 1, 2], inputs["colour"][1 * 4 + 2])
    assert terms["lpips"].item() == pytest.approx((inputs["colour"] - inputs["target"]).abs().mean().item())
    others = ("lpips", "depth", "rast_depth", "mesh", "smooth", "kl", "displacement")
    only_rgb = LossConfig(**{f"{name}_weight": 0.0 for name in others})
    total, terms = compute_losses(only_rgb, colour=inputs["colour"], target=inputs["target"])
    assert list(terms) == ["rgb"] and total.item() == pytest.approx(5 * terms["rgb"].item())
    with pytest.raises(ValueError, match="mouth"):
        compute_losses(config, **{k: v for k, v in inputs.items() if k != "mouth"})
    with_points = LossConfig(mouth_points_weight=0.5)
    with pytest.raises(ValueError, match="tracked point position map"):
        compute_losses(with_points, **inputs, point_map=inputs["displacement"])
    tracked = torch.zeros(3, 8, 8)
    point_mouth = torch.zeros(8, 8, dtype=torch.bool)
    point_mouth[4:6] = True
    point_inputs = dict(point_map=inputs["displacement"], point_posmap=tracked, point_mouth=point_mouth)
    total_with, terms = compute_losses(with_points, **inputs, **point_inputs)
    expected = points_loss(inputs["displacement"], tracked, point_mouth)
    assert terms["mouth_points"].item() == pytest.approx(expected.item())
    total_without, _ = compute_losses(config, **inputs)
    assert (total_with - total_without).item() == pytest.approx(0.5 * expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="perceptual"):
        compute_losses(config, **inputs, patch_shape=(4, 4))


def test_ssim_term_on_patches_only():
    generator = torch.Generator().manual_seed(2)
    target = _test_image(8)[0].permute(1, 2, 0).reshape(64, 3)
    colour = (target + 0.2 * torch.randn(64, 3, generator=generator)).clamp(0, 1).requires_grad_()
    others = ("lpips", "depth", "rast_depth", "mesh", "smooth", "kl", "displacement")
    config = LossConfig(**{f"{name}_weight": 0.0 for name in others}, ssim_weight=3.0)
    _, terms = compute_losses(config, colour=colour, target=target)
    assert "ssim" not in terms  # not a patch
    total, terms = compute_losses(config, colour=colour, target=target, patch_shape=(8, 8))
    expected = 1 - ssim(colour.detach().reshape(8, 8, 3), target.reshape(8, 8, 3)).mean()
    assert terms["ssim"].item() == pytest.approx(expected.item()) and expected > 0.05
    assert total.item() == pytest.approx(5 * terms["rgb"].item() + 3 * expected.item(), rel=1e-5)
    total.backward()
    assert colour.grad.abs().sum() > 0
    _, same = compute_losses(config, colour=target, target=target, patch_shape=(8, 8))
    assert same["ssim"].item() == pytest.approx(0.0, abs=1e-6)


# ---- perceptual ------------------------------------------------------------------------------------


def _test_image(size: int) -> torch.Tensor:
    """A structured image (1, 3, size, size): smooth shading, edges and a checkerboard."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    red = 0.5 + 0.4 * torch.sin(12 * x) * torch.cos(9 * y)
    green = ((x * 8).floor() + (y * 8).floor()) % 2 * 0.6 + 0.2
    blue = 0.5 + 0.3 * torch.sin(20 * (x + y))
    return torch.stack([red, green, blue])[None]


@pytest.fixture(scope="module")
def st_vgg():
    return st_lpips("vgg")


@needs_st_lpips
def test_st_lpips_vgg_loads_the_shipped_weights_and_behaves(st_vgg):
    assert st_vgg.name == "st-lpips-vgg" and st_vgg.source[0].name == "vgg_shift_tolerant.pth"
    assert all(not p.requires_grad for p in st_vgg.parameters())
    image = _test_image(32)
    assert st_vgg(image, image).item() == 0
    generator = torch.Generator().manual_seed(0)
    noisy = [
        (image + s * torch.randn(image.shape, generator=generator)).clamp(0, 1) for s in (0.02, 0.06, 0.2)
    ]
    distances = [st_vgg(n, image).item() for n in noisy]
    assert 0 < distances[0] < distances[1] < distances[2]
    # Blurring the structure costs more than a slight brightness shift.
    kernel = torch.tensor([1.0, 4, 6, 4, 1])
    kernel = (torch.outer(kernel, kernel) / 256).expand(3, 1, 5, 5)
    blurred = F.conv2d(F.pad(image, (2, 2, 2, 2), mode="replicate"), kernel, groups=3)
    assert st_vgg(blurred, image).item() > st_vgg((image + 0.03).clamp(0, 1), image).item()
    # Gradients reach the image, not the weights.
    rendered = noisy[1].clone().requires_grad_(True)
    st_vgg(rendered, image).backward()
    assert torch.isfinite(rendered.grad).all() and rendered.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least 18 px"):
        st_vgg(image[..., :17, :17], image[..., :17, :17])


@needs_st_lpips
def test_one_reference_for_many_images_matches_the_pairs(st_vgg):
    """distance(images, one reference) computes the reference's features once; it equals the
    distances of the pairs with the reference repeated."""
    image = _test_image(40)
    generator = torch.Generator().manual_seed(4)
    images = torch.cat(
        [(image + s * torch.randn(image.shape, generator=generator)).clamp(0, 1) for s in (0.05, 0.2)]
    )
    shared = st_vgg.distance(images, image)
    pairs = st_vgg.distance(images, image.expand_as(images))
    torch.testing.assert_close(shared, pairs)
    assert shared[0] < shared[1]
    with pytest.raises(ValueError, match="references"):
        st_vgg.distance(images, torch.cat([image] * 3))


@needs_st_lpips
def test_st_lpips_alex_loads_and_is_monotone_in_noise():
    alex = st_lpips("alex")
    assert alex.name == "st-lpips-alex"
    image = _test_image(32)
    generator = torch.Generator().manual_seed(1)
    distances = [
        alex((image + s * torch.randn(image.shape, generator=generator)).clamp(0, 1), image).item()
        for s in (0.0, 0.05, 0.3)
    ]
    assert distances[0] == 0 and distances[0] < distances[1] < distances[2]


def test_lpips_vgg_reads_torchvision_and_lpips_key_layouts(tmp_path):
    # Files in the two layouts users have. Each tensor is one value repeated (tiny files), distinct per
    # layer, so that a value tells where it was loaded; this checks the key mapping, not a metric.
    layers, _ = perceptual._vgg16_layers(shift_tolerant=False)
    backbone = {}
    for index, layer in enumerate(layers):
        if isinstance(layer, torch.nn.Conv2d):
            backbone[f"features.{index}.weight"] = torch.tensor(0.001 * index).expand(layer.weight.shape)
            backbone[f"features.{index}.bias"] = torch.tensor(-0.01 * index).expand(layer.out_channels)
    backbone["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision's classifier: ignored
    widths = (64, 128, 256, 512, 512)
    heads = {
        f"lin{k}.model.1.weight": torch.tensor(0.1 * (k + 1)).expand(1, c, 1, 1) for k, c in enumerate(widths)
    }
    torch.save(backbone, tmp_path / "vgg16.pth")
    torch.save(heads, tmp_path / "lin.pth")
    loss = lpips_vgg([tmp_path / "vgg16.pth", tmp_path / "lin.pth"])
    assert loss.name == "lpips-vgg"
    assert torch.equal(loss.network.backbone[28].weight, backbone["features.28.weight"])
    assert torch.equal(loss.network.backbone[28].bias, backbone["features.28.bias"])
    assert torch.equal(loss.network.heads[4].weight, heads["lin4.model.1.weight"])
    image = _test_image(32)
    assert loss(image, image).item() == 0
    # The LPIPS package's own layout ("net.slice<k>.<i>") loads the same.
    packaged = {
        f"net.slice1.{k.split('.', 1)[1]}": v for k, v in backbone.items() if k.startswith("features")
    }
    torch.save({**packaged, **heads}, tmp_path / "full.pth")
    assert torch.equal(
        lpips_vgg([tmp_path / "full.pth"]).network.backbone[28].weight, backbone["features.28.weight"]
    )
    with pytest.raises(FormatError, match="lack 5 tensors"):
        lpips_vgg([tmp_path / "vgg16.pth"])  # no linear layers
    (tmp_path / "bad.pth").write_text("nonsense")
    with pytest.raises(FormatError, match="PyTorch state dict"):
        lpips_vgg([tmp_path / "bad.pth"])


def test_make_perceptual_loss_picks_its_weights(tmp_path, monkeypatch):
    assert make_perceptual_loss(LossConfig(lpips_weight=0)) is None
    monkeypatch.setenv(
        perceptual.ENV_WEIGHTS, os.pathsep.join([str(tmp_path / "a.pth"), str(tmp_path / "b.pth")])
    )
    with pytest.raises(NpvaError, match="a.pth: missing perceptual loss weights"):
        make_perceptual_loss(LossConfig())  # named files are required, never replaced silently
    monkeypatch.delenv(perceptual.ENV_WEIGHTS)
    monkeypatch.setattr(perceptual, "shipped_st_lpips_weights", lambda backbone: None)
    with pytest.raises(NpvaError, match="stlpips-pytorch==0.0.2"):
        make_perceptual_loss(LossConfig())


@needs_st_lpips
def test_make_perceptual_loss_falls_back_to_shipped_st_lpips(monkeypatch):
    monkeypatch.delenv(perceptual.ENV_WEIGHTS, raising=False)
    shipped = make_perceptual_loss(LossConfig(lpips_substitute="alex"))
    assert shipped.name == "st-lpips-alex"
    # The same file named by its path (e.g. carried to a machine without the package).
    by_path = make_perceptual_loss(LossConfig(lpips_substitute=str(shipped.source[0])))
    assert by_path.name == "st-lpips-alex" and by_path.source == shipped.source
