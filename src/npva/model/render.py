"""Rendering one frame from one camera (method.md sections 4 to 7).

Per frame, once (`build_scene`): the coarse map in the face frame, its UV grid mesh rasterized into the
camera (the guide depth), the neural points, their neighbour index and their occupancy grid (and, for
the texture mode "ray", the tracked mesh's UV at each pixel).
Per chunk of `RenderConfig.chunk_rays` rays (`render_rays`): depth-guided candidates, the kept shading
points, their K nearest neural points, radiance decoding and compositing. A chunk's intermediate
tensors are bounded by chunk_rays x max_samples x K x C and by QueryConfig.max_candidates; without
gradient only the per-ray outputs grow with the number of rays. With gradient, autograd keeps every
chunk's activations until the backward pass.

Background: a ray's colour is blended over a background colour by its transmittance,
colour + (1 - opacity) background. Rays without samples (opacity 0) show the background; the default
black background is the published behaviour.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch

from npva.config import RenderConfig
from npva.data.frames import TrackedMesh
from npva.errors import NonFiniteError
from npva.geometry.camera import Camera, camera_tensors, pixel_rays
from npva.geometry.mesh import to_world, uv_grid_faces
from npva.geometry.raster import interpolate, rasterize_camera
from npva.geometry.texture import sample_texture, texel_flags
from npva.model.blend import blend_neighbours, safe_rows
from npva.model.decoding import inverse_distance_weights
from npva.model.fast import kernels_enabled
from npva.model.fast.compiled import shading_functions
from npva.model.networks import DecodedMaps, coarse_map
from npva.model.points import (
    NeuralPoints,
    build_neural_points,
    coarse_vertices_world,
    densify_points,
    point_texels,
    rasterize_guide,
)
from npva.model.query import KDTreeIndex, NeighbourIndex, build_neighbour_index
from npva.model.sampling import (
    OccupancyGrid,
    candidate_positions,
    depth_guided_candidates,
    optical_axis,
    select_shading_points,
)
from npva.timing import stage


@dataclass
class UVTemplate:
    """What rendering needs of a subject's UV layout and position-map statistics.

    mean_map: (3, S, S) per-texel mean position map, face frame, channels first.
    std: the scalar std s of the position maps (coarse map = s * o + mean).
    coverage: (S, S) bool texels inside the UV islands.
    grid_faces: (F, 3) long UV grid mesh over the covered texels (vertex i * S + j).
    point_texels: point map side P -> (M,) long point_texels(coverage, P), kept for the sizes that
        render often (found from the coverage for every frame otherwise: a GPU would make the host wait).
    """

    mean_map: torch.Tensor
    std: float
    coverage: torch.Tensor
    grid_faces: torch.Tensor
    point_texels: dict[int, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def from_coverage(cls, mean_map: torch.Tensor, std: float, coverage: torch.Tensor) -> UVTemplate:
        """The template whose grid mesh joins the covered texels of `coverage`."""
        coverage = torch.as_tensor(coverage, dtype=torch.bool, device=mean_map.device)
        faces = uv_grid_faces(coverage).to(mean_map.device)
        return cls(mean_map=mean_map, std=float(std), coverage=coverage, grid_faces=faces)

    def to(self, device: torch.device | str) -> UVTemplate:
        texels = {size: index.to(device) for size, index in self.point_texels.items()}
        return UVTemplate(
            self.mean_map.to(device), self.std, self.coverage.to(device), self.grid_faces.to(device), texels
        )


@dataclass
class FrameScene:
    """Everything built once per rendered frame and camera.

    coarse_map: (3, S, S) face-frame coarse map (differentiable).
    guide_depth: (H, W) camera z of the rasterized UV grid mesh, 0 = background (differentiable with
        respect to the coarse map; sampling reads it without gradient).
    points: the neural points (differentiable positions and features).
    index, occupancy: built on the detached point positions.
    texture: (3, T, T) the frame's average texture when the shading points look their colour up in it
        (ModelConfig.texture "lookup" or "ray"), else None.
    ray_uv: (H, W, 2) the UV where each pixel's ray meets the tracked mesh, NaN where it misses or
        meets it in the open mouth (the lookup's UV for ModelConfig.texture "ray"), else None.
    uncorrected: (H, W) bool, the pixels whose shading points keep the texture's colour uncorrected
        (their ray meets the tracked mesh in the open mouth; DecoderConfig.mouth_correction false), else
        None.
    fast: the neighbour blending runs as the Triton kernel (RenderConfig.kernels).
    compiled: the radiance decoder and the compositing run compiled (RenderConfig.compile).
    """

    camera: Camera
    coarse_map: torch.Tensor
    guide_depth: torch.Tensor
    points: NeuralPoints
    index: NeighbourIndex | KDTreeIndex
    occupancy: OccupancyGrid
    texture: torch.Tensor | None = None
    ray_uv: torch.Tensor | None = None
    uncorrected: torch.Tensor | None = None
    fast: bool = False
    compiled: bool = False


@dataclass
class RayBatch:
    """Per-ray results of R rays.

    colour (R, 3) over the background; depth (R,) composited camera z (0 where nothing is hit);
    opacity (R,); num_samples (R,) long kept shading points; guide_depth (R,) the guide depth at each
    ray's pixel (differentiable, 0 = background).
    """

    colour: torch.Tensor
    depth: torch.Tensor
    opacity: torch.Tensor
    num_samples: torch.Tensor
    guide_depth: torch.Tensor


@dataclass
class RenderOutput:
    """A rendered frame: per-ray results for `pixels` (R, 2) long (x, y), and what produced them.

    maps: the decoded UV maps (batch of 1); mu, logstd: the posterior when the encoder ran, else None.
    """

    pixels: torch.Tensor
    rays: RayBatch
    scene: FrameScene
    maps: DecodedMaps
    mu: torch.Tensor | None = None
    logstd: torch.Tensor | None = None

    def to_image(self, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Per-ray values (R, ...) -> (H, W, ...) at the rendered pixels, `fill` elsewhere."""
        camera = self.scene.camera
        image = values.new_full((camera.height, camera.width, *values.shape[1:]), fill)
        image[self.pixels[:, 1], self.pixels[:, 0]] = values
        return image


def all_pixels(height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(H * W, 2) long (x, y) of every pixel, row by row."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    return torch.stack((xs.reshape(-1), ys.reshape(-1)), 1)


def build_scene(
    maps: DecodedMaps,
    template: UVTemplate,
    rotation: torch.Tensor,
    translation: torch.Tensor,
    camera: Camera,
    cfg: RenderConfig,
    mask_points: bool = True,
    texture: torch.Tensor | None = None,
    tracked_mesh: TrackedMesh | None = None,
    open_texels: torch.Tensor | None = None,
) -> FrameScene:
    """The per-frame state of one rendering.

    maps: decoded maps of one frame (batch of 1); rotation (3, 3), translation (3,): head pose,
    x_world = R x_face + t; camera with its image size; mask_points keeps only the points whose texel
    lies inside the UV islands; texture (3, T, T): the frame's average texture, given when the shading
    points look their colour up in it (the RGB feature channels then come from it; ModelConfig.texture
    "lookup" or "ray"), else None; tracked_mesh: the frame's tracked mesh, given when the lookup's UV
    is where each ray meets it (ModelConfig.texture "ray"), else None; open_texels (S', S') bool:
    texels of the layout where the tracked mesh spans empty space (the mouth), whose rays keep the
    blended UV (and the texture's colour uncorrected, with cfg.decoder.mouth_correction false).
    """
    if maps.coarse_offset.shape[0] != 1:
        raise ValueError(f"one frame per rendering, got a batch of {maps.coarse_offset.shape[0]}")
    device, dtype = maps.coarse_offset.device, maps.coarse_offset.dtype
    rotation = torch.as_tensor(rotation, dtype=dtype, device=device)
    translation = torch.as_tensor(translation, dtype=dtype, device=device)
    coarse = coarse_map(maps.coarse_offset, template.mean_map, template.std)[0]  # (3, S, S)
    vertices = coarse_vertices_world(coarse, rotation, translation)
    with stage("rasterization"):
        guide_depth = rasterize_guide(vertices, template.grid_faces, camera)
        ray_uv = uncorrected = None
        if tracked_mesh is not None:
            ray_uv = tracked_uv_image(tracked_mesh.to(device), rotation, translation, camera)
            if open_texels is not None:
                in_mouth = meets_texels(ray_uv, open_texels)  # (H, W)
                ray_uv = torch.where(in_mouth[..., None], float("nan"), ray_uv)
                if not cfg.decoder.mouth_correction:
                    uncorrected = in_mouth
    size = maps.displacement.shape[-1]
    texels = None
    if mask_points:
        texels = template.point_texels.get(size)
        if texels is None:
            texels = point_texels(template.coverage, size)
    displacement, features = maps.displacement[0], maps.features[0]
    points = build_neural_points(coarse, displacement, features, rotation, translation, texels)
    if cfg.densify_mm > 0:
        points = densify_points(points, size, cfg.densify_mm)
    detached = points.positions.detach()
    if not torch.isfinite(detached).all():
        raise NonFiniteError("non-finite neural point positions")
    fast = kernels_enabled(cfg.kernels, device)
    with stage("sampling_query"):
        index = build_neighbour_index(
            detached,
            cfg.query.radius_mm,
            cfg.query.k,
            cfg.query.backend,
            cell_fraction=cfg.query.cell_fraction,
            max_candidates=cfg.query.max_candidates,
            fast=fast,
        )
        sampling = cfg.sampling
        occupancy = OccupancyGrid(detached, sampling.occupancy_voxel_mm, sampling.occupancy_reach_voxels)
    lookup = None if texture is None else texture.to(device=device, dtype=dtype)
    return FrameScene(
        camera, coarse, guide_depth, points, index, occupancy, lookup, ray_uv, uncorrected, fast, cfg.compile
    )


def tracked_uv_image(
    mesh: TrackedMesh, rotation: torch.Tensor, translation: torch.Tensor, camera: Camera
) -> torch.Tensor:
    """(H, W, 2) UV where each pixel's ray meets the tracked mesh, NaN where it misses.

    mesh: the frame's tracked mesh (face frame); rotation (3, 3), translation (3,): the head pose. The
    average texture is unwrapped from the photos through the tracked mesh, so this UV is where the
    texture keeps what the cameras near this one saw along the ray, wherever the true surface lies
    along it.
    """
    vertices = to_world(mesh.verts.to(rotation.dtype), rotation, translation)
    frags = rasterize_camera(vertices, mesh.faces, camera)
    uv = interpolate(mesh.uvs.to(rotation.dtype), mesh.face_uvs, frags)
    return torch.where((frags.face_id >= 0)[..., None], uv, float("nan"))


def meets_texels(uv: torch.Tensor, texels: torch.Tensor) -> torch.Tensor:
    """(...) bool: uv (..., 2) (NaN: the ray misses) lies in one of texels (S', S') bool of the layout
    (row 0 at v = 1).

    For the open mouth's texels: they hold what the cameras saw through the stretched surface from
    their different directions, registered to no surface, so there the points' own UVs do better.
    """
    return texel_flags(texels, torch.nan_to_num(uv)) & ~torch.isnan(uv).any(-1)


Precision = Callable[[], contextlib.AbstractContextManager]


# Rays decoded at once when RenderConfig.chunk_rays is None. On CUDA, 400,000 holds the covered pixels of
# a 1024x667 frame (about 308,000) in one chunk: on an H200 such a frame rendered in 46-49 ms against
# 54-68 ms in chunks of 65,536, at 5.7 against 2.2 GiB of peak memory (benchmarks/README.md). On the CPU
# the larger chunk is no faster and needs more memory: a 1024x667 frame of every pixel of the demo avatar
# peaked at 2.6 GiB against 1.1 GiB (2026-12-05).
DEFAULT_CHUNK_RAYS = {"cuda": 400_000, "cpu": 65_536}  # other devices take the CPU's


def chunk_size(cfg: RenderConfig, device: torch.device) -> int:
    """Rays decoded at once on `device`: cfg.chunk_rays, or the device's default when it is None."""
    chunk = cfg.chunk_rays
    if chunk is None:
        chunk = DEFAULT_CHUNK_RAYS.get(device.type, DEFAULT_CHUNK_RAYS["cpu"])
    if chunk <= 0:
        raise ValueError(f"chunk_rays must be positive, got {chunk}")
    return chunk


def render_rays(
    scene: FrameScene,
    decoder: torch.nn.Module,
    pixels: torch.Tensor,
    cfg: RenderConfig,
    training: bool = False,
    generator: torch.Generator | None = None,
    background: torch.Tensor | None = None,
    precision: Precision = contextlib.nullcontext,
) -> RayBatch:
    """Render the rays through pixels (R, 2) long (x, y), chunk_rays at a time.

    decoder: a radiance decoder (see decode_at). training: jitter the candidate bins (drawn from
    `generator`). background: None (black), a colour (3,) or one colour per ray (R, 3). precision: the
    context the decoder's networks run in (e.g. bfloat16 autocast); geometry stays float32.
    """
    device = scene.guide_depth.device
    chunk = chunk_size(cfg, device)
    pixels = pixels.to(device)
    if pixels.shape[0] == 0:  # e.g. the covered pixels of a camera that does not see the head
        none = scene.guide_depth.new_zeros(0)
        count = torch.zeros(0, dtype=torch.long, device=device)
        return RayBatch(
            colour=none.new_zeros(0, 3), depth=none, opacity=none, num_samples=count, guide_depth=none
        )
    if background is None:
        background = torch.zeros(3, device=device)
    background = background.to(device).expand(pixels.shape[0], 3)
    # All rays at once, so that a ray's direction (hence its samples) never depends on the chunking.
    origin, ray_dirs = pixel_rays(scene.camera, pixels.float() + 0.5)  # (3,), (R, 3)
    chunks = []
    for lo in range(0, pixels.shape[0], chunk):
        part = slice(lo, lo + chunk)
        chunks.append(
            _render_chunk(
                scene,
                decoder,
                pixels[part],
                origin,
                ray_dirs[part],
                cfg,
                training,
                generator,
                background[part],
                precision,
            )
        )
    return RayBatch(*(torch.cat([getattr(c, f.name) for c in chunks]) for f in fields(RayBatch)))


def _render_chunk(
    scene: FrameScene,
    decoder: torch.nn.Module,
    pixels: torch.Tensor,
    origin: torch.Tensor,
    ray_dirs: torch.Tensor,
    cfg: RenderConfig,
    training: bool,
    generator: torch.Generator | None,
    background: torch.Tensor,
    precision: Precision,
) -> RayBatch:
    """One chunk of rays: pixels (R, 2), camera centre (3,), unit ray_dirs (R, 3), background (R, 3)."""
    camera = scene.camera
    device = pixels.device
    with stage("sampling_query"):
        cand_z, cand_valid = depth_guided_candidates(
            scene.guide_depth, pixels, cfg.sampling, training, generator
        )
        cand_pos = candidate_positions(origin, ray_dirs, cand_z, optical_axis(camera, device))
        shading = select_shading_points(
            cand_z, cand_pos, cand_valid, scene.occupancy, cfg.sampling.max_samples
        )
        ray_of_sample, slot_of_sample = shading.valid.nonzero(as_tuple=True)
        samples = shading.positions[ray_of_sample, slot_of_sample]  # (N, 3)
    sigma = shading.z.new_zeros(shading.z.shape)
    rgb = shading.z.new_zeros((*shading.z.shape, 3))
    if samples.shape[0] > 0:
        ray_uv, uncorrected = (
            None if image is None else image[pixels[:, 1], pixels[:, 0]][ray_of_sample]  # (N, ...)
            for image in (scene.ray_uv, scene.uncorrected)
        )
        sample_sigma, sample_rgb = decode_at(
            scene,
            decoder,
            samples,
            ray_dirs[ray_of_sample],
            cfg.decoder.min_distance_mm,
            precision,
            ray_uv,
            uncorrected,
        )
        sigma = sigma.index_put((ray_of_sample, slot_of_sample), sample_sigma.float())
        rgb = rgb.index_put((ray_of_sample, slot_of_sample), sample_rgb.float())
    _, composite_over = shading_functions(scene.compiled)
    with stage("decoding"):
        colour, depth, opacity = composite_over(
            sigma, rgb, shading.z, shading.valid, background, cfg.decoder.last_delta
        )
    guide = scene.guide_depth[pixels[:, 1], pixels[:, 0]]
    return RayBatch(colour, depth, opacity, shading.counts, guide)


def decode_at(
    scene: FrameScene,
    decoder: torch.nn.Module,
    samples: torch.Tensor,
    ray_dirs: torch.Tensor,
    min_distance: float,
    precision: Precision = contextlib.nullcontext,
    ray_uv: torch.Tensor | None = None,
    uncorrected: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """sigma (N,), rgb (N, 3) from `decoder` at points samples (N, 3) seen along ray_dirs (N, 3), with
    their K nearest neural points of `scene`; min_distance as in the decoder's neighbour weights.
    With a texture lookup, ray_uv (N, 2) is the UV to look each sample's colour up at (NaN: the UV
    blended from its neighbours); None: the blended UV for all. uncorrected (N,) bool: the samples
    whose rgb is the texture's colour as looked up, not the decoder's correction of it.

    A decoder with `decode_blended` (the lightweight RadianceDecoder) gets its neighbours blended by
    npva.model.blend (the Triton kernel when scene.fast); any other decoder is called with the
    neighbours themselves: (features (N, K, C), offsets_world, offsets_camera (N, K, 3), valid (N, K),
    ray_dirs) -> sigma, rgb. The decoder runs inside `precision()`.
    """
    with stage("sampling_query"):
        idx, _ = scene.index.query(samples)  # (N, K)
    with stage("decoding"):
        if hasattr(decoder, "decode_blended"):
            decode_path = _decode_blended
        else:
            decode_path = _decode_neighbours
        sigma, rgb, colour = decode_path(
            scene, decoder, samples, idx, ray_dirs, min_distance, precision, ray_uv
        )
        if uncorrected is not None and colour is not None:
            rgb = torch.where(uncorrected[:, None], colour.to(rgb.dtype), rgb)
        return sigma, rgb


def _decode_blended(
    scene: FrameScene,
    decoder: torch.nn.Module,
    samples: torch.Tensor,
    idx: torch.Tensor,
    ray_dirs: torch.Tensor,
    min_distance: float,
    precision: Precision,
    ray_uv: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The blended path of decode_at: sigma (N,), rgb (N, 3) and the looked-up texture colour (N, 3)
    (None without a lookup). With a texture lookup the blended features' RGB channels are the texture
    at the blended UV (see _with_texture_colour), or at ray_uv where it is given."""
    points = scene.points
    values = points.features if scene.texture is None else torch.cat((points.features, points.uv), 1)
    mean_values, mean_offset = blend_neighbours(
        points.positions, values, samples, idx, min_distance, scene.fast
    )
    has_valid = idx[:, 0] >= 0  # slots are sorted by distance: the first is valid if any is
    mean_feature = mean_values[:, : points.features.shape[1]]
    colour = None
    if scene.texture is not None:
        uv = _lookup_uv(mean_values[:, -2:], ray_uv)
        colour = sample_texture(scene.texture, uv).to(mean_feature.dtype)
        colour = torch.where(has_valid[:, None], colour, 0.0)
        mean_feature = torch.cat((mean_feature[:, :-3], colour), 1)
    _, rotation, _ = camera_tensors(scene.camera, mean_offset.device, mean_offset.dtype)
    # R delta written out per component (not a matrix product), so that a row's result never depends
    # on the batch it is in.
    camera_offset = sum(mean_offset[:, j : j + 1] * rotation[:, j] for j in range(3))
    offsets = torch.cat((mean_offset, camera_offset), 1)  # (N, 6) world; camera
    decode, _ = shading_functions(scene.compiled)
    with precision():
        sigma, rgb = decode(decoder, mean_feature, offsets, has_valid, ray_dirs)
    return sigma, rgb, colour


def _decode_neighbours(
    scene: FrameScene,
    decoder: torch.nn.Module,
    samples: torch.Tensor,
    idx: torch.Tensor,
    ray_dirs: torch.Tensor,
    min_distance: float,
    precision: Precision,
    ray_uv: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The per-neighbour path of decode_at (returns as _decode_blended)."""
    points, camera = scene.points, scene.camera
    valid = idx >= 0
    rows = safe_rows(idx, max(len(points), 1))
    offsets_world = points.positions[rows] - samples[:, None, :]  # (N, K, 3)
    _, rotation, _ = camera_tensors(camera, offsets_world.device, offsets_world.dtype)
    offsets_camera = offsets_world @ rotation.T
    features = points.features[rows]  # (N, K, C)
    colour = None
    if scene.texture is not None:
        uv = points.uv[rows]  # (N, K, 2)
        features = _with_texture_colour(
            scene.texture, uv, offsets_world, valid, min_distance, features, ray_uv
        )
        colour = torch.where(valid.any(1)[:, None], features[:, 0, -3:], 0.0)
    with precision():
        sigma, rgb = decoder(features, offsets_world, offsets_camera, valid, ray_dirs)
    return sigma, rgb, colour


def _with_texture_colour(
    texture: torch.Tensor,
    uv: torch.Tensor,
    offsets_world: torch.Tensor,
    valid: torch.Tensor,
    min_distance: float,
    features: torch.Tensor,
    ray_uv: torch.Tensor | None = None,
) -> torch.Tensor:
    """features (N, K, C) whose last 3 channels, in every slot, are the texture (3, T, T) at the shading
    point's UV: its neighbours' uv (N, K, 2) blended with the decoder's inverse-distance weights (or
    ray_uv (N, 2) where it is not NaN). On a stretched part of the layout, where a shading point's
    nearest points may all lie on one side, this keeps the colour of the exact texture position instead
    of the blend of the points' colours."""
    weights = inverse_distance_weights(offsets_world, valid, min_distance)  # (N, K)
    blended = torch.einsum("nk,nkc->nc", weights, uv)
    colour = sample_texture(texture, _lookup_uv(blended, ray_uv))  # (N, 3)
    colour = colour.to(features.dtype)[:, None, :].expand(-1, features.shape[1], -1)
    return torch.cat((features[..., :-3], colour), dim=-1)


def _lookup_uv(blended: torch.Tensor, ray_uv: torch.Tensor | None) -> torch.Tensor:
    """The UV a shading point looks its colour up at: ray_uv (N, 2) where it is given and not NaN (the
    ray meets the tracked mesh), else its neighbours' blended UV (N, 2)."""
    if ray_uv is None:
        return blended
    return torch.where(torch.isnan(ray_uv), blended, ray_uv.to(blended.dtype))
