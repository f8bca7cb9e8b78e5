"""Rendering a list of (frame, camera) samples to images, depth, normals, meshes and point clouds.

Every sample is rendered at the training size in evaluation mode (z = the encoder mean, no jitter).
Without `full`, only the pixels the decoded coarse mesh covers (rasterized guide depth > 0) are
rendered; the others show the avatar's background colour for the camera. With `full` every pixel is
rendered, so rays just outside the coarse mesh may still reach neural points.

Files under `out_dir` (PNG images are 8-bit RGB):

    <seq>/<frame>/<cam>.png              the rendered image (H, W)
    <seq>/<frame>/<cam>_compare.png      rendered image | photo, side by side (H, 2W)
    <seq>/<frame>/<cam>_depth.png        depth colour-mapped: near (red) to far (blue), black = no depth
    <seq>/<frame>/<cam>_normal.png       camera-frame normals of the rendered depth as (n + 1) / 2,
                                         black = unknown
  unless preview:
    <seq>/<frame>/<cam>_depth.npy        float32 (H, W) camera z in mm, 0 = no depth
    <seq>/<frame>/<cam>_points.ply       the neural points, world frame, mm, coloured as seen from <cam>
    <seq>/<frame>/coarse_mesh.obj        the decoded coarse mesh, world frame, mm (once per frame)
    <seq>/<frame>/displacement.npy       float32 (P, P, 3) displacement map, face frame, mm
    <seq>/<frame>/displacement.png       the same as 0.5 + d / (2 scale), scale in displacement.json
    <seq>/<frame>/displacement.json
    render.json                          every sample's files and depth range, and the settings

Depth: a ray's composited depth D = sum T_j alpha_j z_j is short of the surface by the transmittance
left at its end; the depth written is D / opacity (the expected depth where the ray stops) on rays with
opacity >= MIN_OPACITY, 0 elsewhere. On a trained avatar the head is opaque and the two agree.
Point colours: the radiance decoder evaluated at each neural point itself, looking along the ray from
the camera centre to the point (the colour that point would show, occluded or not).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from npva.data.frames import FrameDrive
from npva.data.samples import AvatarDataset, TrainSample
from npva.eval.loading import EvalContext
from npva.fileio import atomic_open, inside
from npva.geometry.camera import Camera
from npva.geometry.mesh import Mesh, to_world
from npva.io.multiface import write_image, write_obj
from npva.model.avatar import Avatar
from npva.model.render import FrameScene, RenderOutput, chunk_size, decode_at

MIN_OPACITY = 0.5  # rays less opaque than this have no depth


@dataclass
class RenderedView:
    """One sample rendered: image (H, W, 3) in [0, 1], depth (H, W) camera z mm (0 = none),
    covered (H, W) bool pixels of the coarse mesh, and the render output (scene, maps)."""

    image: torch.Tensor
    depth: torch.Tensor
    covered: torch.Tensor
    output: RenderOutput


@dataclass
class RenderedSample:
    """The files written for one sample, by kind ("image", "compare", "depth_png", ...)."""

    seq: str
    frame: str
    cam: str
    files: dict[str, Path] = field(default_factory=dict)
    depth_range_mm: tuple[float, float] | None = None


# ---------------------------------------------------------------------------------------------------
# Rendering


def surface_depth(
    depth: torch.Tensor, opacity: torch.Tensor, min_opacity: float = MIN_OPACITY
) -> torch.Tensor:
    """Composited depth (R,) and opacity (R,) -> depth / opacity where opacity >= min_opacity, else 0."""
    return torch.where(
        opacity >= min_opacity, depth / opacity.clamp_min(min_opacity), torch.zeros_like(depth)
    )


@torch.no_grad()
def render_view(avatar: Avatar, drive: FrameDrive, camera: Camera, full: bool = False) -> RenderedView:
    """Render the frame of `drive` (on the avatar's device) from `camera` in evaluation mode.

    full=False renders only the pixels the coarse mesh covers (Avatar.render's "covered"); the others
    get the background colour and no depth.
    """
    was_training = avatar.training
    avatar.eval()
    try:
        out = avatar.render(drive, camera, "all" if full else "covered")
    finally:
        avatar.train(was_training)
    covered = out.scene.guide_depth > 0
    background = avatar.background_colour(camera.name)
    if background is None:
        background = torch.zeros(3, device=covered.device)
    image = out.to_image(out.rays.colour)
    depth = out.to_image(surface_depth(out.rays.depth, out.rays.opacity))
    if not full:
        image[~covered] = background.detach().to(covered.device)
    return RenderedView(image=image, depth=depth, covered=covered, output=out)


# ---------------------------------------------------------------------------------------------------
# Depth and normal images


def depth_range(depth: np.ndarray) -> tuple[float, float] | None:
    """(near, far) of the positive values of depth (H, W); None when there are none."""
    valid = depth[depth > 0]
    if valid.size == 0:
        return None
    return float(valid.min()), float(valid.max())


def depth_image(depth: np.ndarray, near: float | None = None, far: float | None = None) -> np.ndarray:
    """Depth (H, W) mm -> uint8 (H, W, 3) RGB: turbo colour map from near (red) to far (blue), black
    where depth <= 0. near/far default to the range of the valid depths."""
    valid = depth > 0
    image = np.zeros((*depth.shape, 3), np.uint8)
    if not valid.any():
        return image
    auto = depth_range(depth)
    near = auto[0] if near is None else near
    far = auto[1] if far is None else far
    closeness = (far - depth) / (far - near) if far > near else np.full(depth.shape, 0.5)
    grey = np.round(np.clip(closeness, 0.0, 1.0) * 255).astype(np.uint8)
    coloured = cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    image[valid] = coloured[valid]
    return image


def camera_points(depth: torch.Tensor, K: np.ndarray) -> torch.Tensor:
    """Back-project depth (H, W) camera z through the pixel centres with intrinsics K (3, 3):
    (H, W, 3) camera-frame points (x right, y down, z forward), on depth's device and in its dtype."""
    height, width = depth.shape
    options = {"dtype": depth.dtype, "device": depth.device}
    v, u = torch.meshgrid(
        torch.arange(height, **options) + 0.5, torch.arange(width, **options) + 0.5, indexing="ij"
    )
    y = (v - K[1, 2]) / K[1, 1]
    x = (u - K[0, 2] - K[0, 1] * y) / K[0, 0]
    return torch.stack((x, y, torch.ones_like(x)), -1) * depth[..., None]


def normal_map(depth: torch.Tensor, K: np.ndarray) -> torch.Tensor:
    """Unit camera-frame normals (H, W, 3) of the surface of depth (H, W), facing the camera, on
    depth's device (the viewer's normals mode stays on the GPU).

    Central differences of the back-projected points along x and y, crossed; 0 where the pixel or one
    of its four neighbours has no depth (and on the image border).
    """
    points = camera_points(depth, K)
    normals = torch.zeros_like(points)
    valid = depth > 0
    inner = valid[1:-1, 1:-1] & valid[1:-1, 2:] & valid[1:-1, :-2] & valid[2:, 1:-1] & valid[:-2, 1:-1]
    along_x = points[1:-1, 2:] - points[1:-1, :-2]
    along_y = points[2:, 1:-1] - points[:-2, 1:-1]
    cross = torch.linalg.cross(along_y, along_x, dim=-1)  # y down x x right points towards the camera
    length = torch.linalg.vector_norm(cross, dim=-1, keepdim=True)
    ok = inner & (length[..., 0] > 0)
    normals[1:-1, 1:-1] = torch.where(ok[..., None], cross / length.clamp(min=1e-30), 0.0)
    return normals


def normal_image(normals: np.ndarray) -> np.ndarray:
    """Unit normals (H, W, 3) -> uint8 (H, W, 3) RGB (n + 1) / 2; black where the normal is 0."""
    known = np.linalg.norm(normals, axis=-1) > 0
    image = np.round((normals + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    image[~known] = 0
    return image


# ---------------------------------------------------------------------------------------------------
# Coarse mesh, neural points, displacement map


def coarse_mesh(
    coarse: torch.Tensor, coverage: torch.Tensor, grid_faces: torch.Tensor, R: torch.Tensor, t: torch.Tensor
) -> Mesh:
    """The decoded coarse mesh in the world frame.

    coarse (3, S, S) face-frame coarse map; coverage (S, S) bool; grid_faces (F, 3) over texels i*S + j
    (covered ones only); R (3, 3), t (3,) head pose. Vertices: the covered texels in row order; UVs:
    their texel centres (u = (j + 0.5) / S, v = 1 - (i + 0.5) / S); faces re-indexed to them.
    """
    size = coverage.shape[0]
    texels = coverage.reshape(-1).nonzero()[:, 0]  # (V,)
    new_index = torch.full((size * size,), -1, dtype=torch.long, device=texels.device)
    new_index[texels] = torch.arange(len(texels), device=texels.device)
    faces = new_index[grid_faces.to(texels.device)]
    if (faces < 0).any():
        raise ValueError("the UV grid mesh has a face on a texel outside the coverage")
    verts = to_world(coarse.reshape(3, -1).T[texels], R.to(coarse), t.to(coarse))
    rows, cols = texels // size, texels % size
    uvs = torch.stack(((cols + 0.5) / size, 1.0 - (rows + 0.5) / size), 1)
    faces_np = faces.cpu().numpy().astype(np.int64)
    return Mesh(
        verts=verts.detach().cpu().numpy().astype(np.float32),
        faces=faces_np,
        uvs=uvs.cpu().numpy().astype(np.float32),
        face_uvs=faces_np.copy(),
    )


@torch.no_grad()
def point_colours(avatar: Avatar, scene: FrameScene) -> torch.Tensor:
    """(P, 3) colour in [0, 1] of each neural point of `scene`: the radiance decoder at the point,
    with its K nearest points within the radius, looking from the camera centre towards it; as many
    points at once as the avatar's render settings decode rays."""
    positions = scene.points.positions.detach()
    chunk = chunk_size(avatar.render_config, positions.device)
    centre = torch.as_tensor(scene.camera.centre, dtype=positions.dtype, device=positions.device)
    min_distance = avatar.render_config.decoder.min_distance_mm
    colours = []
    for lo in range(0, positions.shape[0], chunk):
        at = positions[lo : lo + chunk]  # (N, 3)
        directions = torch.nn.functional.normalize(at - centre, dim=-1)
        _, rgb = decode_at(scene, avatar.decoder, at, directions, min_distance)
        colours.append(rgb.float().clamp(0, 1))
    return torch.cat(colours) if colours else positions.new_zeros((0, 3))


PLY_VERTEX = np.dtype(
    [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
)


def write_ply(path: Path, positions: np.ndarray, colours: np.ndarray, comment: str = "") -> None:
    """Binary little-endian PLY of points: positions (N, 3) float, colours (N, 3) uint8 or float
    in [0, 1]; written atomically."""
    positions = np.asarray(positions, np.float32)
    colours = np.asarray(colours)
    if positions.ndim != 2 or positions.shape[1] != 3 or colours.shape != positions.shape:
        raise ValueError(f"expected positions and colours (N, 3), got {positions.shape} and {colours.shape}")
    if colours.dtype != np.uint8:
        colours = np.round(np.clip(colours, 0.0, 1.0) * 255).astype(np.uint8)
    vertices = np.empty(len(positions), PLY_VERTEX)
    for i, name in enumerate(("x", "y", "z")):
        vertices[name] = positions[:, i]
    for i, name in enumerate(("red", "green", "blue")):
        vertices[name] = colours[:, i]
    lines = ["ply", "format binary_little_endian 1.0"]
    lines += [f"comment {text}" for text in comment.splitlines() if text]
    lines += [f"element vertex {len(vertices)}"]
    lines += [f"property {'float' if PLY_VERTEX[n] == np.float32 else 'uchar'} {n}" for n in PLY_VERTEX.names]
    lines += ["end_header"]
    with atomic_open(path, "wb") as f:
        f.write(("\n".join(lines) + "\n").encode("ascii"))
        f.write(vertices.tobytes())


def displacement_image(displacement: np.ndarray) -> tuple[np.ndarray, float]:
    """Displacement map (P, P, 3) mm -> (uint8 (P, P, 3) image 0.5 + d / (2 scale), scale mm), with
    scale the largest |d| (1 when the map is 0)."""
    scale = float(np.abs(displacement).max())
    scale = scale if scale > 0 else 1.0
    image = np.round(np.clip(0.5 + displacement / (2 * scale), 0.0, 1.0) * 255).astype(np.uint8)
    return image, scale


def write_json(path: Path, data: dict) -> None:
    with atomic_open(path) as f:
        json.dump(data, f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------------------------------------------
# The list


def _write_frame_files(
    folder: Path, view: RenderedView, sample: TrainSample, avatar: Avatar
) -> dict[str, Path]:
    """The per-frame files (coarse mesh, displacement map): the same from every camera."""
    out = view.output
    drive = sample.drive
    mesh = coarse_mesh(out.scene.coarse_map, avatar.coverage, avatar.grid_faces, drive.R, drive.t)
    files = {
        "coarse_mesh": folder / "coarse_mesh.obj",
        "displacement_npy": folder / "displacement.npy",
        "displacement_png": folder / "displacement.png",
        "displacement_json": folder / "displacement.json",
    }
    write_obj(files["coarse_mesh"], mesh)
    displacement = out.maps.displacement[0].permute(1, 2, 0).cpu().numpy().astype(np.float32)
    with atomic_open(files["displacement_npy"], "wb") as f:
        np.save(f, displacement)
    image, scale = displacement_image(displacement)
    write_image(files["displacement_png"], image)
    write_json(
        files["displacement_json"],
        {
            "scale_mm": scale,
            "decode": "d_mm = (png / 255 - 0.5) * 2 * scale_mm",
            "frame": "face",
            "layout": "row 0 is v = 1",
        },
    )
    return files


def _write_view_files(
    folder: Path, view: RenderedView, sample: TrainSample, avatar: Avatar, preview: bool
) -> RenderedSample:
    """The per-(frame, camera) files."""
    cam = sample.cam
    record = RenderedSample(sample.seq, sample.frame, cam)
    image = view.image.cpu().numpy()
    photo = sample.targets.image.permute(1, 2, 0).cpu().numpy()
    depth = view.depth.cpu().numpy().astype(np.float32)
    record.depth_range_mm = depth_range(depth)
    files = record.files
    files["image"] = folder / f"{cam}.png"
    files["compare"] = folder / f"{cam}_compare.png"
    files["depth_png"] = folder / f"{cam}_depth.png"
    files["normal_png"] = folder / f"{cam}_normal.png"
    write_image(files["image"], image)
    write_image(files["compare"], np.concatenate((image, photo), axis=1))
    write_image(files["depth_png"], depth_image(depth))
    write_image(files["normal_png"], normal_image(normal_map(view.depth, sample.camera.K).cpu().numpy()))
    if preview:
        return record
    files["depth_npy"] = folder / f"{cam}_depth.npy"
    with atomic_open(files["depth_npy"], "wb") as f:
        np.save(f, depth)
    files["points"] = folder / f"{cam}_points.ply"
    scene = view.output.scene
    colours = point_colours(avatar, scene)
    write_ply(
        files["points"],
        scene.points.positions.detach().cpu().numpy(),
        colours.cpu().numpy(),
        comment=f"npva neural points of {sample.seq} {sample.frame}, world frame, mm\n"
        f"colour: radiance decoded at each point, seen from camera {cam}",
    )
    return record


def render_samples(
    ctx: EvalContext,
    dataset: AvatarDataset,
    out_dir: Path,
    full: bool = False,
    preview: bool = False,
    progress: bool = True,
) -> list[RenderedSample]:
    """Render every sample of `dataset` into `out_dir` (layout in the module docstring) and write
    out_dir/render.json; returns what was written per sample, in dataset order."""
    out_dir = Path(out_dir)
    avatar = ctx.avatar
    records: list[RenderedSample] = []
    frames_done: set[tuple[str, str]] = set()
    for index in tqdm(range(len(dataset)), desc="npva render", unit="image", disable=not progress):
        sample = dataset.load(index).to(ctx.device)
        view = render_view(avatar, sample.drive, sample.camera, full)
        folder = inside(out_dir, out_dir / sample.seq / sample.frame)  # no symbolic link on the way
        record = _write_view_files(folder, view, sample, avatar, preview)
        if not preview and (sample.seq, sample.frame) not in frames_done:
            record.files.update(_write_frame_files(folder, view, sample, avatar))
            frames_done.add((sample.seq, sample.frame))
        records.append(record)
    write_json(
        out_dir / "render.json",
        {
            "checkpoint": str(ctx.checkpoint),
            "step": ctx.step,
            "full": full,
            "preview": preview,
            "samples": [
                {
                    "seq": r.seq,
                    "frame": r.frame,
                    "cam": r.cam,
                    "depth_range_mm": r.depth_range_mm,
                    "files": {kind: str(path.relative_to(out_dir)) for kind, path in r.files.items()},
                }
                for r in records
            ],
        },
    )
    return records
