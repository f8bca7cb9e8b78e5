"""Rendering end to end at tiny size through Avatar.render: gradients, chunking, pixel subsets, covered
pixels, background, full size."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from npva.config import DecoderConfig, ModelConfig, RenderConfig, SamplingConfig
from npva.data.frames import FrameDrive, TrackedMesh
from npva.errors import ConfigError
from npva.geometry.camera import look_at, pixel_rays
from npva.geometry.mesh import uv_grid_faces
from npva.model.avatar import Avatar
from npva.model.decoding import make_radiance_decoder
from npva.model.networks import AvatarNetwork, DecodedMaps
from npva.model.query import knn_radius_bruteforce
from npva.model.render import (
    UVTemplate,
    build_scene,
    chunk_size,
    decode_at,
    meets_texels,
    render_rays,
    tracked_uv_image,
)

UV = 16  # coarse map side
POINTS = 32  # point map side
MODEL = ModelConfig(
    texture_size=32,
    posmap_size=UV,
    point_map_size=POINTS,
    latent_size=2,
    texture_channels=(8,),
    geometry_channels=8,
    encoder_channels=(8, 8, 8),
    coarse_channels=(8, 8, 3),
    displacement_channels=(8, 8, 8, 3),
    feature_channels=(8, 8, 8, 4),
)
DECODER = DecoderConfig(hidden=16, pointnerf_hidden=16)
RENDER = RenderConfig(sampling=SamplingConfig(probe_offset_px=2), decoder=DECODER, chunk_rays=1 << 16)
POSE = (torch.eye(3), torch.tensor([0.0, 0.0, 10.0]))


def _template() -> UVTemplate:
    """A 60 mm wide bump facing +z, over a disc of UV texels."""
    u = (torch.arange(UV) + 0.5) / UV
    v, u = torch.meshgrid(u, u, indexing="ij")
    x, y = (u - 0.5) * 60, (0.5 - v) * 60
    mean = torch.stack((x, y, 20 * torch.exp(-(x**2 + y**2) / 800)))
    coverage = (u - 0.5) ** 2 + (v - 0.5) ** 2 < 0.2
    return UVTemplate.from_coverage(mean, std=1.0, coverage=coverage)


def _camera(height: int = 24, width: int = 32, focal: float = 180.0):
    K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
    return look_at("cam", np.array([30.0, 10, 400]), np.zeros(3), np.array([0, 1.0, 0]), K, height, width)


def _models(seed: int = 0):
    torch.manual_seed(seed)
    return AvatarNetwork(MODEL), make_radiance_decoder(DECODER, MODEL.point_feature_channels)


def _encoder_inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, 32, 32, generator=g), torch.randn(1, 3, UV, UV, generator=g)


def _avatar(cfg: RenderConfig = RENDER, seed: int = 0, **kwargs) -> Avatar:
    """An untrained avatar over _template() whose network and decoder are those of _models(seed)."""
    torch.manual_seed(seed)
    template = _template()
    kwargs.setdefault("background", "black")
    return Avatar(MODEL, cfg, template, torch.zeros(UV, UV, dtype=torch.bool), **kwargs)


def _drive(seed: int = 1) -> FrameDrive:
    """A frame whose normalized position map is _encoder_inputs' (the template's std is 1)."""
    texture, normalized = _encoder_inputs(seed)
    return FrameDrive(texture=texture[0], posmap=normalized[0] + _template().mean_map, R=POSE[0], t=POSE[1])


def _render_eval(avatar: Avatar, camera=None, pixels=None):
    avatar.eval()
    with torch.no_grad():
        return avatar.render(_drive(), camera or _camera(), pixels)


def test_forward_backward_reaches_every_parameter_in_seconds():
    avatar = _avatar().train()
    start = time.perf_counter()
    out = avatar.render(_drive(), _camera(), generator=torch.Generator().manual_seed(0))
    loss = out.rays.colour.sum() + 0.01 * (out.rays.depth.sum() + out.rays.guide_depth.sum())
    loss.backward()
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0
    assert out.mu is not None and out.logstd is not None
    assert (out.rays.num_samples > 0).float().mean() > 0.3  # the bump fills much of the image
    for name, param in avatar.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def _leaf_maps(network) -> DecodedMaps:
    network.eval()
    with torch.no_grad():
        maps = network.decode(torch.zeros(1, 4, 2, 2))
    return DecodedMaps(*(m.clone().requires_grad_() for m in maps))


def test_coarse_map_gets_gradient_through_the_guide_and_through_the_points():
    network, decoder = _models()
    camera = _camera()
    pixels = torch.stack(torch.meshgrid(torch.arange(32), torch.arange(24), indexing="xy"), -1)
    pixels = pixels.reshape(-1, 2)

    maps = _leaf_maps(network)
    scene = build_scene(maps, _template(), *POSE, camera, RENDER)
    scene.guide_depth.sum().backward()
    assert maps.coarse_offset.grad.abs().sum() > 0  # through the rasterized depth
    assert maps.displacement.grad is None and maps.features.grad is None

    maps = _leaf_maps(network)
    scene = build_scene(maps, _template(), *POSE, camera, RENDER)
    rays = render_rays(scene, decoder, pixels, RENDER)
    (rays.colour.sum() + 0.01 * rays.depth.sum()).backward()
    # Sampling reads the guide without gradient: the coarse map's gradient comes via the points.
    assert maps.coarse_offset.grad.abs().sum() > 0
    assert maps.displacement.grad.abs().sum() > 0
    assert maps.features.grad.abs().sum() > 0


def test_chunked_render_equals_one_chunk():
    whole = _render_eval(_avatar())
    chunked = _render_eval(_avatar(replace(RENDER, chunk_rays=37)))
    # Same samples and neighbours; the decoder's matrix products may round differently per batch.
    assert torch.equal(chunked.rays.num_samples, whole.rays.num_samples)
    assert torch.equal(chunked.rays.guide_depth, whole.rays.guide_depth)
    for name in ("colour", "depth", "opacity"):
        assert torch.allclose(getattr(chunked.rays, name), getattr(whole.rays, name), atol=1e-4)
    assert whole.rays.depth.max() > 300  # the camera is 400 mm from the bump


def test_the_chunk_size_follows_the_setting_or_else_the_device():
    unset = replace(RENDER, chunk_rays=None)
    assert chunk_size(unset, torch.device("cpu")) == 65_536  # memory first on a CPU
    assert chunk_size(unset, torch.device("cuda")) == 400_000  # a 1024x667 frame's covered pixels at once
    assert chunk_size(replace(RENDER, chunk_rays=37), torch.device("cuda")) == 37
    with pytest.raises(ValueError, match="chunk_rays must be positive, got 0"):
        chunk_size(replace(RENDER, chunk_rays=0), torch.device("cpu"))


def test_pixel_subset_equals_the_full_render_there():
    avatar = _avatar()
    full = _render_eval(avatar)
    pixels = torch.tensor([[0, 0], [16, 12], [31, 23], [5, 20], [16, 12]])
    subset = _render_eval(avatar, pixels=pixels)
    at = pixels[:, 1] * 32 + pixels[:, 0]
    assert torch.allclose(subset.rays.colour, full.rays.colour[at], atol=1e-5)
    image = full.to_image(full.rays.colour)
    assert image.shape == (24, 32, 3)
    assert torch.equal(image[12, 16], full.rays.colour[12 * 32 + 16])
    sparse = subset.to_image(subset.rays.depth, fill=-1.0)
    # Pixel (16, 12) was asked twice: its two rays agree to rounding (a batch's rows may round apart).
    assert sparse[0, 1].item() == -1.0 and torch.isclose(sparse[12, 16], subset.rays.depth[1])


def test_covered_pixels_are_the_full_render_where_the_coarse_mesh_covers():
    avatar = _avatar()
    full = _render_eval(avatar, pixels="all")
    covered = _render_eval(avatar, pixels="covered")
    inside = full.scene.guide_depth > 0
    assert 0 < inside.sum() < inside.numel()
    assert torch.equal(covered.pixels, full.pixels[inside.reshape(-1)])  # row by row
    at = covered.pixels[:, 1] * 32 + covered.pixels[:, 0]
    assert torch.allclose(covered.rays.colour, full.rays.colour[at], atol=1e-5)
    with pytest.raises(ValueError, match="covered"):
        _render_eval(avatar, pixels="inside")


def test_a_camera_that_sees_nothing_renders_no_covered_pixel():
    away = look_at(
        "away",
        np.array([30.0, 10, 400]),
        np.array([30.0, 10, 800]),
        np.array([0, 1.0, 0]),
        _camera().K,
        24,
        32,
    )
    out = _render_eval(_avatar(), camera=away, pixels="covered")
    assert (
        out.pixels.shape == (0, 2) and out.rays.colour.shape == (0, 3) and out.rays.num_samples.shape == (0,)
    )
    assert (out.to_image(out.rays.colour) == 0).all()


def test_rays_without_samples_show_the_background():
    black = _render_eval(_avatar())
    empty = black.rays.num_samples == 0
    hit = black.rays.opacity > 0.999
    assert empty.any() and hit.any()
    assert (black.rays.colour[empty] == 0).all() and (black.rays.opacity[empty] == 0).all()
    grey = torch.tensor([[0.5, 0.5, 0.5], [0.1, 0.2, 0.3]])
    learned = _avatar(background="learned", camera_names=["cam", "other"], initial_background=grey)
    seen = _render_eval(learned)  # the camera is "cam"
    assert torch.allclose(seen.rays.colour[empty], torch.tensor(0.5))
    assert torch.allclose(seen.rays.colour[hit], black.rays.colour[hit], atol=1e-3)
    unseen = _render_eval(learned, camera=replace(_camera(), name="new"))  # the mean colour
    assert torch.allclose(unseen.rays.colour[empty], grey.mean(0).expand(int(empty.sum()), 3))
    scene = black.scene  # render_rays also takes one colour per ray
    per_ray = torch.rand(24 * 32, 3)
    mixed = render_rays(scene, _avatar().decoder.eval(), black.pixels, RENDER, background=per_ray)
    assert torch.allclose(mixed.colour[empty], per_ray[empty])


def test_full_size_image_renders_in_bounded_chunks():
    cfg = replace(RENDER, sampling=SamplingConfig(), chunk_rays=1 << 14)
    avatar = _avatar(cfg)
    decoder = avatar.decoder
    camera = _camera(1024, 667, focal=1200.0)  # the bump covers about a tenth of the image
    rows_per_call = []
    count_rows = lambda module, args, out: rows_per_call.append(args[0].shape[0])  # noqa: E731
    decoder.density_mlp.register_forward_hook(count_rows)
    out = _render_eval(avatar, camera=camera)
    assert out.rays.colour.shape == (1024 * 667, 3)
    assert out.to_image(out.rays.colour).shape == (1024, 667, 3)
    assert 0.02 < (out.rays.num_samples > 0).float().mean() < 0.5
    # One decoder call per chunk with samples, never more rows than the chunk's shading points.
    assert len(rows_per_call) > 5
    assert max(rows_per_call) <= cfg.chunk_rays * cfg.sampling.max_samples


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_render_on_cuda_matches_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    avatar = _avatar()
    cpu = _render_eval(avatar)
    with torch.no_grad():
        gpu = avatar.cuda().eval().render(_drive().to("cuda"), _camera())
    # Rounding differs between the devices; a point at the very edge of a neighbourhood or a
    # candidate at a voxel border may flip, so a few rays may differ.
    same_samples = gpu.rays.num_samples.cpu() == cpu.rays.num_samples
    assert same_samples.float().mean() > 0.98
    colour_error = (gpu.rays.colour.cpu() - cpu.rays.colour).abs().amax(1)
    assert (colour_error < 1e-3).float().mean() > 0.95
    assert colour_error.median() < 1e-4


def test_densified_points_close_the_holes_of_a_stretched_layout():
    # A 60 mm plane facing the camera whose UV layout gives the band between texel rows 7 and 8 of the
    # coarse map 24 mm: the points there lie about 10 mm apart, too far for the 4 mm neighbour radius.
    u = (torch.arange(UV) + 0.5) / UV
    v, u = torch.meshgrid(u, u, indexing="ij")
    rows = torch.arange(UV, dtype=torch.float32)
    y = 30 - 2.4 * rows - 24 * (rows >= 8)
    mean = torch.stack(((u - 0.5) * 60, y[:, None].expand(UV, UV), torch.zeros(UV, UV)))
    template = UVTemplate.from_coverage(mean, std=1.0, coverage=torch.ones(UV, UV, dtype=torch.bool))
    torch.manual_seed(0)
    maps = DecodedMaps(
        coarse_offset=torch.zeros(1, 3, UV, UV),
        displacement=torch.zeros(1, 3, POINTS, POINTS),
        features=torch.randn(1, 4, POINTS, POINTS),
    )
    K = np.array([[600.0, 0, 24], [0, 600.0, 24], [0, 0, 1]])
    camera = look_at("front", np.array([0.0, 0, 400]), np.zeros(3), np.array([0, 1.0, 0]), K, 48, 48)
    band = torch.tensor([[x, y] for y in range(20, 30) for x in range(16, 32)])  # world y 1 to -11 mm
    decoder = make_radiance_decoder(DECODER, MODEL.point_feature_channels)
    sampled = {}
    for spacing in (0.0, 2.0):
        cfg = replace(RENDER, densify_mm=spacing)
        scene = build_scene(maps, template, torch.eye(3), torch.zeros(3), camera, cfg)
        assert (scene.guide_depth[20:30, 16:32] > 0).all()  # the guide mesh spans the band
        with torch.no_grad():
            rays = render_rays(scene, decoder, band, cfg)
        sampled[spacing] = (rays.num_samples > 0).float().mean().item()
    assert sampled[0.0] < 0.8 and sampled[2.0] == 1.0


def test_evaluation_mode_renders_with_the_inference_spacing_of_extra_points():
    # The bump's points lie about 2 mm apart: a 1 mm spacing adds points, the 6 mm of training few.
    cfg = replace(RENDER, densify_mm=6.0, inference_densify_mm=1.0)
    training_only = replace(cfg, inference_densify_mm=None)

    def trained_points(render: RenderConfig) -> int:
        generator = torch.Generator().manual_seed(0)
        return len(_avatar(render).train().render(_drive(), _camera(), generator=generator).scene.points)

    assert trained_points(cfg) == trained_points(training_only)
    evaluated = _render_eval(_avatar(cfg))
    plain = _render_eval(_avatar(replace(RENDER, densify_mm=1.0)))
    assert len(evaluated.scene.points) > 1.5 * len(_render_eval(_avatar(training_only)).scene.points)
    assert len(evaluated.scene.points) == len(plain.scene.points)
    torch.testing.assert_close(evaluated.rays.colour, plain.rays.colour)


def _bilinear(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Plainly: texture (3, T, T) at uv (N, 2) (u right, v up), bilinear between the four nearest texel
    centres, clamped at the border -> (N, 3)."""
    size = texture.shape[-1]
    x = (uv[:, 0] * size - 0.5).clamp(0, size - 1)
    y = ((1 - uv[:, 1]) * size - 0.5).clamp(0, size - 1)
    x0, y0 = x.floor().long().clamp(max=size - 2), y.floor().long().clamp(max=size - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    texel = lambda yy, xx: texture[:, yy, xx].T  # noqa: E731
    return (1 - fy) * ((1 - fx) * texel(y0, x0) + fx * texel(y0, x0 + 1)) + fy * (
        (1 - fx) * texel(y0 + 1, x0) + fx * texel(y0 + 1, x0 + 1)
    )


def test_texture_lookup_colours_shading_points_with_the_texture_at_their_blended_uv():
    network, _ = _models()
    maps = _leaf_maps(network)
    cfg = RENDER
    texture = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(3))
    scene = build_scene(maps, _template(), *POSE, _camera(), cfg, texture=texture)
    g = torch.Generator().manual_seed(4)
    samples = scene.points.positions.detach()[::40] + 0.8 * torch.randn(
        len(scene.points) // 40 + 1, 3, generator=g
    )
    seen = {}

    def probe(features, offsets_world, offsets_camera, valid, ray_dirs):
        seen.update(features=features, valid=valid)
        return features.new_zeros(features.shape[0]), features.new_zeros(features.shape[0], 3)

    directions = torch.tensor([0.0, 0.0, -1.0]).expand(len(samples), 3)
    decode_at(scene, probe, samples, directions, cfg.decoder.min_distance_mm)

    # Plainly: the K nearest points within the radius, weights 1 / distance, their UVs blended, then
    # a bilinear lookup between the four nearest texel centres of the 8 x 8 texture.
    idx, dist = knn_radius_bruteforce(
        scene.points.positions.detach(), samples, cfg.query.k, cfg.query.radius_mm
    )
    found = idx >= 0
    weights = torch.where(found, 1 / dist.clamp_min(cfg.decoder.min_distance_mm), 0.0)
    weights = weights / weights.sum(1, keepdim=True)
    uv = (weights[..., None] * scene.points.uv[idx.clamp_min(0)]).sum(1)
    expected = _bilinear(texture, uv)
    assert torch.equal(seen["valid"], found) and found.any(1).all()
    # Every slot carries the looked-up colour in its RGB channels; the other channels are the points'.
    torch.testing.assert_close(seen["features"][..., -3:], expected[:, None, :].expand(-1, cfg.query.k, -1))
    own = scene.points.features[idx.clamp_min(0)][..., :-3]
    torch.testing.assert_close(seen["features"][..., :-3][found], own[found])
    # The colour depends on where the points are: positions get gradient through the blended UV.
    seen["features"][..., -3:].sum().backward()
    assert maps.displacement.grad.abs().sum() > 0


def _tracked_plane(size: int = 24) -> TrackedMesh:
    """A tracked mesh of the plane z = 5 mm, 60 mm across (x = 60 (u - 1/2), y = 60 (v - 1/2)): a grid
    of size x size vertices whose triangles cover a disc of UV. Its UVs are listed in the reverse order
    of the vertices, so that the UV faces differ from the vertex faces (as on an OBJ's seams)."""
    centre = (torch.arange(size) + 0.5) / size
    v, u = 1 - centre[:, None].expand(size, size), centre[None, :].expand(size, size)
    verts = torch.stack(((u - 0.5) * 60, (v - 0.5) * 60, torch.full_like(u, 5.0)), -1).reshape(-1, 3)
    faces = uv_grid_faces((u - 0.5) ** 2 + (v - 0.5) ** 2 < 0.2)
    uvs = torch.stack((u, v), -1).reshape(-1, 2).flip(0)
    return TrackedMesh(verts=verts, faces=faces, uvs=uvs, face_uvs=len(verts) - 1 - faces)


def test_tracked_uv_image_is_the_uv_where_each_ray_meets_the_tracked_mesh():
    camera = _camera(48, 64, 360.0)
    uv = tracked_uv_image(_tracked_plane(), *POSE, camera)
    assert uv.shape == (48, 64, 2)
    # Plainly: each pixel centre's ray meets the posed plane z = 15 mm at one point, whose (x, y) give
    # its UV; the mesh spans the disc, so pixels well inside it are covered.
    origin, directions = pixel_rays(camera)
    depth = (15.0 - origin[2]) / directions[..., 2]
    hit = origin + depth[..., None] * directions  # (H, W, 3)
    expected = hit[..., :2] / 60 + 0.5
    inside = ((expected - 0.5) ** 2).sum(-1) < 0.15
    outside = ((expected - 0.5) ** 2).sum(-1) > 0.25
    assert inside.sum() > 500 and outside.sum() > 500
    torch.testing.assert_close(uv[inside], expected[inside], atol=1e-4, rtol=0)
    assert torch.isnan(uv[outside]).all()
    # Rays that meet the mesh in open texels (here the left half of an 8 x 8 layout); a miss meets none.
    left = torch.zeros(8, 8, dtype=torch.bool)
    left[:, :4] = True
    in_open = meets_texels(uv, left)
    for half, is_open in ((expected[..., 0] < 0.49, True), (expected[..., 0] > 0.51, False)):
        assert (in_open[inside & half] == is_open).all()
    assert not in_open[outside].any()


def test_texture_lookup_at_the_ray_uv_where_given_and_the_blended_uv_elsewhere():
    network, _ = _models()
    maps = _leaf_maps(network)
    texture = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(3))
    scene = build_scene(maps, _template(), *POSE, _camera(), RENDER, texture=texture)
    g = torch.Generator().manual_seed(4)
    samples = scene.points.positions.detach()[::40] + 0.8 * torch.randn(
        len(scene.points) // 40 + 1, 3, generator=g
    )
    ray_uv = torch.rand(len(samples), 2, generator=g)
    ray_uv[::2] = float("nan")  # these rays miss the tracked mesh
    idx, dist = knn_radius_bruteforce(
        scene.points.positions.detach(), samples, RENDER.query.k, RENDER.query.radius_mm
    )
    weights = torch.where(idx >= 0, 1 / dist.clamp_min(RENDER.decoder.min_distance_mm), 0.0)
    blended = (weights[..., None] * scene.points.uv[idx.clamp_min(0)]).sum(1) / weights.sum(1, keepdim=True)
    expected = _bilinear(texture, torch.where(torch.isnan(ray_uv), blended, ray_uv))
    seen = {}

    def per_neighbour(features, offsets_world, offsets_camera, valid, ray_dirs):
        seen["per_neighbour"] = features[:, 0, -3:]
        return features.new_zeros(features.shape[0]), features.new_zeros(features.shape[0], 3)

    class Blended:
        def decode_blended(self, mean_feature, offsets, has_valid, ray_dirs):
            seen["blended"] = mean_feature[:, -3:]
            rows = mean_feature.shape[0]
            return mean_feature.new_zeros(rows), mean_feature.new_zeros(rows, 3)

    directions = torch.tensor([0.0, 0.0, -1.0]).expand(len(samples), 3)
    with torch.no_grad():
        for decoder in (per_neighbour, Blended()):
            decode_at(scene, decoder, samples, directions, RENDER.decoder.min_distance_mm, ray_uv=ray_uv)
    found = (idx >= 0).any(1)
    assert found.all()
    for path in ("per_neighbour", "blended"):
        torch.testing.assert_close(seen[path], expected, atol=1e-5, rtol=0, msg=path)


def test_the_texture_mode_ray_starts_as_the_textured_tracked_mesh():
    """Untrained, the colour MLP adds nothing to the texture colour: every pixel whose ray meets the
    tracked mesh and has shading points shows the texture at that mesh's UV, over the black background
    in proportion to the ray's opacity."""
    model = replace(MODEL, texture="ray")
    torch.manual_seed(0)
    mouth = torch.zeros(UV, UV, dtype=torch.bool)
    mouth[:, : UV // 4] = True  # the open texels: their rays keep the blended UV
    avatar = Avatar(model, RENDER, _template(), mouth, "black").eval()
    texture = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(5))
    drive = replace(_drive(), full_texture=texture, tracked_mesh=_tracked_plane())
    camera = _camera(48, 64, 360.0)
    with torch.no_grad():
        out = avatar.render(drive, camera)
    uv = tracked_uv_image(drive.tracked_mesh, *POSE, camera).reshape(-1, 2)
    in_mouth = uv[:, 0] < 0.24
    assert in_mouth.sum() > 50 and torch.isnan(out.scene.ray_uv.reshape(-1, 2)[in_mouth]).all()
    shown = (out.rays.num_samples > 0) & ~torch.isnan(uv).any(1) & (uv[:, 0] > 0.26)
    assert shown.sum() > 300
    assert out.rays.opacity[shown].mean() > 0.7  # the texture, not the black background, is what shows
    expected = out.rays.opacity[shown, None] * _bilinear(texture, uv[shown])
    torch.testing.assert_close(out.rays.colour[shown], expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="needs the frame's tracked mesh"):
        avatar.render(replace(drive, tracked_mesh=None), camera)


def test_without_the_mouth_correction_the_open_mouth_shows_the_texture_uncorrected():
    """render.decoder.mouth_correction false: where the ray meets the tracked mesh in the open mouth,
    a trained colour MLP's correction is left out (the pixel is what the same avatar shows with no
    correction at all); everywhere else it applies. The density is the same either way."""
    model = replace(MODEL, texture="ray")
    mouth = torch.zeros(UV, UV, dtype=torch.bool)
    mouth[:, : UV // 4] = True
    renders = {}
    settings = (("corrected", True, True), ("mouth", False, True), ("none", True, False))
    for name, correction, trained in settings:  # name, mouth_correction, a trained colour MLP
        render = replace(RENDER, decoder=replace(RENDER.decoder, mouth_correction=correction))
        torch.manual_seed(0)
        avatar = Avatar(model, render, _template(), mouth, "black").eval()
        if trained:
            torch.nn.init.normal_(avatar.decoder.colour_mlp[-1].weight, 0.0, 1.0)
        texture = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(5))
        drive = replace(_drive(), full_texture=texture, tracked_mesh=_tracked_plane())
        with torch.no_grad():
            renders[name] = avatar.render(drive, _camera(48, 64, 360.0)).rays
    uv = tracked_uv_image(drive.tracked_mesh, *POSE, _camera(48, 64, 360.0)).reshape(-1, 2)
    shown = (renders["mouth"].num_samples > 0) & ~torch.isnan(uv).any(1)
    in_mouth, outside = shown & (uv[:, 0] < 0.24), shown & (uv[:, 0] > 0.26)
    assert in_mouth.sum() > 50 and outside.sum() > 300
    torch.testing.assert_close(renders["mouth"].opacity, renders["corrected"].opacity)
    got, corrected, none = (renders[name].colour for name in ("mouth", "corrected", "none"))
    torch.testing.assert_close(got[in_mouth], none[in_mouth], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[outside], corrected[outside], atol=1e-5, rtol=0)
    assert (corrected[in_mouth] - none[in_mouth]).abs().max() > 0.05
    render = replace(RENDER, decoder=replace(RENDER.decoder, mouth_correction=False))
    with pytest.raises(ConfigError, match="needs model.texture ray, got 'lookup'"):
        Avatar(replace(MODEL, texture="lookup"), render, _template(), mouth, "black")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tracked_uv_image_on_cuda_matches_cpu():
    camera = _camera(48, 64, 360.0)
    cpu = tracked_uv_image(_tracked_plane(), *POSE, camera)
    gpu = tracked_uv_image(_tracked_plane().to("cuda"), POSE[0].cuda(), POSE[1].cuda(), camera).cpu()
    hit = ~torch.isnan(cpu).any(-1)
    assert torch.equal(hit, ~torch.isnan(gpu).any(-1)) and hit.sum() > 500
    torch.testing.assert_close(gpu[hit], cpu[hit], atol=1e-5, rtol=0)
