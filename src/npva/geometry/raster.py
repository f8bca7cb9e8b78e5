"""Triangle rasterization in PyTorch, on CPU and GPU, in two passes.

1. A z-buffer pass without gradient finds the front triangle of every pixel. Each triangle proposes
   candidate pixels (on GPU those of its bounding box; on CPU those of each row of the box within the
   triangle's span on that row); an edge-function test keeps those whose centre (x + 0.5, y + 0.5) lies
   inside; the nearest candidate per pixel wins through a scatter-reduce ('amin') of int64 keys
   `depth_bits << 32 | face_id` (the bits of a positive float32 order like the float, so the key orders
   by depth, then by face id: the result is deterministic). Candidates are processed in chunks of bounded
   size, so one triangle covering the whole image costs time, not memory. On GPU the pass has one host
   sync (the number of candidates) and about 120 kernel launches.
2. A differentiable pass recomputes, for the face found at each pixel, the barycentrics from the vertex
   positions (perspective-correct when asked) and the depth; `interpolate` then blends any attribute.

Watertightness: an edge shared by two triangles is evaluated from the same endpoint in both (the
lexicographically smaller one) as A (px - X) + B (py - Y), so its edge function has exactly opposite
signs in the two triangles and is exactly 0 at both endpoints. A pixel centre with an edge function of
exactly 0 is inside if the edge's inward normal points to +x (or along +y when vertical): as if the centre
were moved by (e, e^2) for a tiny e, which puts it in exactly one triangle, at a shared vertex too.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from npva.geometry.camera import Camera, host_to_device, project

# rasterize_camera skips triangles with a vertex this close to the camera plane or behind it (mm).
NEAR_MM = 1.0
# Triangles whose doubled screen area is at most this (pixels^2) are degenerate and skipped.
MIN_DOUBLE_AREA = 1e-10
# Candidate pixels tested at once by the z-buffer pass; bounds its memory (about 200 bytes each).
DEFAULT_CHUNK = 1 << 21

_EMPTY_KEY = torch.iinfo(torch.int64).max
_FACE_BITS = 0xFFFFFFFF


@dataclass
class Fragments:
    """What a rasterization found per pixel.

    face_id: (H, W) int64 index of the front face, -1 on background.
    bary: (H, W, 3) barycentrics of the pixel centre in that face (perspective-correct for a perspective
        rasterization), 0 on background; differentiable w.r.t. the vertex positions.
    depth: (H, W) interpolated z (camera depth), 0 on background; differentiable likewise.
    """

    face_id: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor


def rasterize(
    verts_screen: torch.Tensor,
    faces: torch.Tensor,
    height: int,
    width: int,
    perspective: bool = True,
    *,
    near: float = 0.0,
    cull_backfaces: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
) -> Fragments:
    """Rasterize triangles given in screen space.

    verts_screen: (V, 3) [x, y, z]: continuous pixel coordinates (pixel (x, y) spans [x, x + 1) with its
        centre at x + 0.5) and depth z.
    faces: (F, 3) int64 vertex indices. Both windings are drawn unless `cull_backfaces`, which drops the
        faces that appear clockwise on screen: those whose normal (right-hand rule) points away from the
        camera.
    perspective: z is camera depth of a pinhole projection, so 1/z (not z) is linear on screen and the
        barycentrics are corrected for it; False for orthographic or UV-space rasterization.
    near: faces with a vertex at z <= near are skipped. Zero-area faces are skipped too.
    chunk_size: candidate pixels tested at once (memory bound of the z-buffer pass).
    Returns Fragments; nearest z wins, ties go to the lower face id.
    """
    _check_mesh_shapes(verts_screen, faces)
    faces = faces.to(device=verts_screen.device, dtype=torch.int64)
    if len(faces) == 0:
        return Fragments(
            face_id=torch.full((height, width), -1, dtype=torch.int64, device=verts_screen.device),
            bary=verts_screen.new_zeros((height, width, 3)),
            depth=verts_screen.new_zeros((height, width)),
        )
    face_id = _front_faces(
        verts_screen.detach(), faces, height, width, perspective, near, cull_backfaces, chunk_size
    )
    bary, depth = _barycentrics(verts_screen, faces, face_id, perspective)
    return Fragments(face_id=face_id, bary=bary, depth=depth)


def rasterize_camera(
    verts_world: torch.Tensor,
    faces: torch.Tensor,
    camera: Camera,
    height: int | None = None,
    width: int | None = None,
    *,
    near: float = NEAR_MM,
    cull_backfaces: bool = False,
) -> Fragments:
    """Rasterize a world-space mesh into a pinhole camera (distortion ignored).

    verts_world: (V, 3) mm; faces: (F, 3) int64.
    height, width: image size; default the camera's own. When the camera records a different size, its
        intrinsics are scaled to the requested one (Camera.resized).
    Faces with a vertex at camera depth <= `near` (mm) are skipped (no clipping).
    Returns Fragments with depth = camera z, differentiable w.r.t. verts_world.
    """
    if (height is None) != (width is None):
        raise ValueError("rasterize_camera: give both height and width, or neither")
    if height is None:
        if camera.height is None or camera.width is None:
            raise ValueError(f"camera {camera.name}: image size unknown, pass height and width")
        height, width = camera.height, camera.width
    elif camera.height is not None and (camera.height, camera.width) != (height, width):
        camera = camera.resized(height, width)
    verts_screen = _to_screen(verts_world, camera)
    return rasterize(verts_screen, faces, height, width, True, near=near, cull_backfaces=cull_backfaces)


def rasterize_uv(uvs: torch.Tensor | np.ndarray, face_uvs: torch.Tensor | np.ndarray, size: int) -> Fragments:
    """Rasterize a UV layout into a (size, size) texel grid in image layout.

    uvs: (T, 2) u right, v up, in [0, 1]; face_uvs: (F, 3) indices into uvs.
    Texel (i, j) has its centre at u = (j + 0.5) / size, v = 1 - (i + 0.5) / size, so row 0 is v = 1.
    Returns Fragments (linear barycentrics, depth 1 on covered texels).
    """
    uvs = torch.as_tensor(uvs)
    if not uvs.is_floating_point():
        uvs = uvs.to(torch.float32)
    face_uvs = torch.as_tensor(face_uvs, device=uvs.device)
    if uvs.ndim != 2 or uvs.shape[1] != 2:
        raise ValueError(f"rasterize_uv: uvs must have shape (T, 2), got {tuple(uvs.shape)}")
    verts_screen = torch.stack((uvs[:, 0] * size, (1 - uvs[:, 1]) * size, torch.ones_like(uvs[:, 0])), dim=1)
    return rasterize(verts_screen, face_uvs, size, size, perspective=False)


def interpolate(attrs: torch.Tensor, attr_faces: torch.Tensor, frags: Fragments) -> torch.Tensor:
    """Blend per-vertex attributes with the fragments' barycentrics.

    attrs: (N, C); attr_faces: (F, 3) indices into attrs, one row per rasterized face (the same faces,
    possibly indexing another array, e.g. UV-space faces rasterized and vertex positions interpolated).
    Returns (H, W, C), 0 on background; differentiable w.r.t. attrs and frags.bary.
    """
    if attrs.ndim != 2:
        raise ValueError(f"interpolate: attrs must have shape (N, C), got {tuple(attrs.shape)}")
    height, width = frags.face_id.shape
    if len(attr_faces) == 0:
        return attrs.new_zeros((height, width, attrs.shape[1]))
    pixel, face, covered = _pixel_faces(frags.face_id, len(attr_faces))
    bary = frags.bary.reshape(-1, 3).to(attrs.dtype)
    if pixel is not None:
        bary = bary[pixel]
    corners = attr_faces.to(device=attrs.device, dtype=torch.int64)[face]  # (P, 3)
    out = bary[:, 0:1] * _rows(attrs, corners[:, 0])
    for k in (1, 2):  # corner by corner, in place: peak memory P*C, not 3*P*C
        out.addcmul_(bary[:, k : k + 1], _rows(attrs, corners[:, k]))
    return _scatter_pixels(out, pixel, covered, height, width)


def _to_screen(verts_world: torch.Tensor, camera: Camera) -> torch.Tensor:
    """(V, 3) world points -> (V, 3) [x_pix, y_pix, camera z], through one 3x4 matrix K [R | t]."""
    matrix = camera.K @ np.concatenate((camera.R, camera.t[:, None]), axis=1)
    matrix = host_to_device(matrix, verts_world.device, verts_world.dtype)
    homogeneous = torch.addmm(matrix[:, 3], verts_world, matrix[:, :3].T)
    z = homogeneous[:, 2:]
    # Points at z ~ 0 get huge but finite coordinates (their faces are culled), so gradients stay finite.
    safe_z = torch.where(z.abs() > 1e-12, z, 1e-12)
    return torch.cat((homogeneous[:, :2] / safe_z, z), dim=1)


def _check_mesh_shapes(verts: torch.Tensor, faces: torch.Tensor) -> None:
    if verts.ndim != 2 or verts.shape[1] != 3:
        raise ValueError(f"rasterize: verts must have shape (V, 3), got {tuple(verts.shape)}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"rasterize: faces must have shape (F, 3), got {tuple(faces.shape)}")
    if faces.is_floating_point():
        raise ValueError("rasterize: faces must hold integer indices")


def _rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] for table (F, K) and index (N,), differentiable. On CPU through torch.gather:
    index_select and indexing are several times slower there for some row widths."""
    if table.is_cuda:
        return table[index]
    return torch.gather(table, 0, index[:, None].expand(-1, table.shape[1]))


# The z-buffer pass ----------------------------------------------------------------------------------


def _front_faces(
    verts: torch.Tensor,
    faces: torch.Tensor,
    height: int,
    width: int,
    perspective: bool,
    near: float,
    cull_backfaces: bool,
    chunk_size: int,
) -> torch.Tensor:
    """(H, W) int64 front face id per pixel, -1 where none, from screen verts (V, 3). No gradient.

    Candidates come in units, rectangles of pixels of one face: on GPU the bounding box of each face; on
    CPU, where host syncs cost nothing, each row of the box cut to the face's span on it, which cuts
    the candidates by 2 to 3 times. Unit u owns candidates start[u] .. start[u] + count[u] - 1 of one
    numbering, which is processed in chunks of `chunk_size`.
    """
    tri = verts[faces]
    planes, valid = _edge_functions(tri, perspective, near, cull_backfaces)
    boxes = _candidate_boxes(tri[..., :2], valid, height, width)
    if verts.is_cuda:
        units = torch.cat((torch.arange(len(faces), device=verts.device)[:, None], boxes), dim=1)
    else:
        units = _row_spans(boxes, planes, width, height)
    counts = units[:, 3] * units[:, 4]
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    units[:, 4] = starts  # now (face, first column, first row, columns, first candidate)
    total = int(ends[-1]) if len(ends) else 0  # the one host sync on GPU: the number of candidates
    unit_ids = torch.arange(len(units), device=verts.device)
    zbuf = torch.full((height * width,), _EMPTY_KEY, dtype=torch.int64, device=verts.device)
    for lo in range(0, total, chunk_size):
        hi = min(lo + chunk_size, total)
        in_chunk = counts if hi - lo == total else (ends.clamp(max=hi) - starts.clamp(min=lo)).clamp(min=0)
        unit = torch.repeat_interleave(unit_ids, in_chunk, output_size=hi - lo)
        pixel, key = _candidate_keys(lo, hi, unit, units, planes, width, perspective)
        zbuf.scatter_reduce_(0, pixel, key, "amin")
    face_id = torch.where(zbuf == _EMPTY_KEY, -1, zbuf & _FACE_BITS)
    return face_id.view(height, width)


def _edge_functions(
    tri: torch.Tensor, perspective: bool, near: float, cull_backfaces: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-face data of the z-buffer pass, from the screen-space corners tri (F, 3, 3).

    Returns planes (F, 18) float, in groups of three columns (one per edge k, opposite corner k):
        the inward normal A_k, B_k and origin X_k, Y_k of the edge function
        E_k = A_k (px - X_k) + B_k (py - Y_k) (positive inside) at a pixel centre (px, py); the tie
        flags T_k (1 where a centre with E_k == 0 is inside); then P, Q, R, the plane of 1/z
        (perspective) or z: value = R + P px + Q py.
    And valid (F,) bool: the faces to draw.
    """
    xy, z = tri[..., :2], tri[..., 2]
    start, end = xy.roll(-1, 1), xy.roll(-2, 1)  # edge k runs from corner k+1 to corner k+2
    direction = end - start
    swap = (start[..., 0] > end[..., 0]) | ((start[..., 0] == end[..., 0]) & (start[..., 1] > end[..., 1]))
    origin = torch.where(swap[..., None], end, start)  # (F, 3, 2) the lexicographically smaller end
    double_area = direction[:, 0, 0] * direction[:, 1, 1] - direction[:, 0, 1] * direction[:, 1, 0]
    # The inward normal of the canonical direction (origin to the other end), flipped (exactly) by the
    # swap and by the winding.
    canonical = torch.where(swap[..., None], -direction, direction)
    sign = 1 - 2 * (swap ^ (double_area < 0)[:, None]).to(xy.dtype)
    a, b = -canonical[..., 1] * sign, canonical[..., 0] * sign
    tie = (a > 0) | ((a == 0) & (b > 0))  # the normal points to +x, or along +y
    abs_area = double_area.abs()
    valid = (abs_area > MIN_DOUBLE_AREA) & (z > near).all(1) & torch.isfinite(tri).flatten(1).all(1)
    if cull_backfaces:
        valid &= double_area < 0
    # E_k / doubled area is the screen-space barycentric of corner k, so the plane of the interpolated
    # value (1/z with perspective, z without) is sum_k E_k value_k / doubled area.
    coef = (1 / z if perspective else z) / torch.where(valid, abs_area, 1.0)[:, None]
    offset = -(a * origin[..., 0] + b * origin[..., 1])
    plane = torch.stack((a, b, offset), dim=1).mul(coef[:, None]).sum(2)
    planes = torch.cat((a, b, origin[..., 0], origin[..., 1], tie.to(xy.dtype), plane), dim=1)
    return planes, valid


def _candidate_boxes(xy: torch.Tensor, valid: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(F, 4) int64: first column, first row, number of columns and of rows of the pixels whose centre
    lies in the bounding box of each face's corners xy (F, 3, 2), clipped to the image; 0 if not valid."""
    first = torch.ceil(xy.amin(1) - 0.5).clamp(min=0)
    last = torch.floor(xy.amax(1) - 0.5)
    for axis, extent in ((0, width), (1, height)):
        first[:, axis].clamp_(max=extent)
        last[:, axis].clamp_(max=extent - 1)
    size = (last - first + 1).clamp(min=0)
    return torch.where(valid[:, None], torch.cat((first, size), dim=1), 0).long()


def _row_spans(boxes: torch.Tensor, planes: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Units (U, 5) int64 (face, first column, row, columns, 1) for the rows of the boxes (F, 4) of
    _candidate_boxes, each cut to the columns whose centre may lie inside its face.

    On the centre line y of a row, edge k bounds x from below where A_k > 0 and from above where A_k < 0,
    at the root x_k = X_k + S_k (y - Y_k), S_k = -B_k / A_k, of its edge function. Edges within 1e-6 of
    horizontal are left to the exact test; the others' roots are widened by a margin well above the
    rounding of the exact test, so no inside pixel is lost.
    """
    a, b, origin_x, origin_y = planes[:, :12].split(3, dim=1)
    slope = -b / a
    usable = slope.abs() < 1e6
    margin = 1e-3 + 1e-5 * (origin_x.abs() + width + slope.abs() * (height + origin_y.abs()))
    at_row0 = origin_x + slope * (0.5 - origin_y)  # the root on the centre line of row 0
    lower_ok, upper_ok = usable & (a > 0), usable & (a < 0)
    bounds = torch.cat(
        (
            torch.where(lower_ok, at_row0 - margin, -torch.inf),
            torch.where(lower_ok, slope, 0.0),
            torch.where(upper_ok, at_row0 + margin, torch.inf),
            torch.where(upper_ok, slope, 0.0),
        ),
        dim=1,
    )  # (F, 12): per edge, x bound = constant + slope * row
    num_rows = boxes[:, 3]
    total = int(num_rows.sum())
    face = torch.repeat_interleave(torch.arange(len(boxes)), num_rows, output_size=total)
    first_unit = torch.cumsum(num_rows, 0) - num_rows
    col0, row0, num_cols, first_unit = _rows(torch.cat((boxes[:, :3], first_unit[:, None]), 1), face).unbind(
        1
    )
    row = row0 + (torch.arange(total) - first_unit)
    lower_c, lower_s, upper_c, upper_s = _rows(bounds, face).split(3, dim=1)
    row_f = row.to(bounds.dtype)[:, None]
    lower = torch.addcmul(lower_c, lower_s, row_f).amax(1)
    upper = torch.addcmul(upper_c, upper_s, row_f).amin(1)
    first = torch.ceil(lower.clamp(min=col0 - 1.0) - 0.5).long().maximum(col0)
    last = torch.floor(upper.clamp(max=col0 + num_cols + 1.0) - 0.5).long().minimum(col0 + num_cols - 1)
    return torch.stack((face, first, row, (last - first + 1).clamp(min=0), torch.ones_like(face)), dim=1)


def _candidate_keys(
    lo: int,
    hi: int,
    unit: torch.Tensor,
    units: torch.Tensor,
    planes: torch.Tensor,
    width: int,
    perspective: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel index (N,) and z-buffer key (N,) of the candidates lo .. hi - 1 of units unit (N,);
    the empty key where the pixel centre is outside.

    units (U, 5): face, first column, first row, columns, first candidate number of each unit.
    """
    face, col0, row0, num_cols, start = _rows(units, unit).unbind(1)
    local = torch.arange(lo, hi, device=unit.device) - start
    row = torch.div(local, num_cols, rounding_mode="floor")
    col = col0 + (local - row * num_cols)
    row = row0 + row
    a, b, origin_x, origin_y, tie, plane = _rows(planes, face).split(3, dim=1)
    px, py = (col.to(planes.dtype) + 0.5)[:, None], (row.to(planes.dtype) + 0.5)[:, None]
    # Differences from the edge origin make E exactly 0 at both ends of the edge (see module doc);
    # a fused multiply-add would not.
    edge = a * (px - origin_x) + b * (py - origin_y)  # (N, 3)
    inside = (edge.sign() + tie).amin(1) > 0.5  # every edge: E > 0, or E == 0 and tie
    value = torch.addcmul(torch.addcmul(plane[:, 2:], plane[:, :1], px), plane[:, 1:2], py)
    depth = (value.reciprocal() if perspective else value).squeeze(1)
    bits = depth.to(torch.float32).view(torch.int32).to(torch.int64)
    key = torch.where(inside, (bits << 32) | face, _EMPTY_KEY)
    return row * width + col, key


# The differentiable pass ----------------------------------------------------------------------------


def _barycentrics(
    verts: torch.Tensor, faces: torch.Tensor, face_id: torch.Tensor, perspective: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Barycentrics (H, W, 3) and depth (H, W) of the pixel centres in their front faces face_id (H, W),
    recomputed from verts (V, 3) so that gradients reach them; 0 on background."""
    height, width = face_id.shape
    planes = _barycentric_planes(verts[faces], perspective)
    pixel, face, covered = _pixel_faces(face_id, len(faces))
    index = torch.arange(height * width, device=verts.device) if pixel is None else pixel
    px = (index % width).to(verts.dtype)[:, None] + 0.5
    py = torch.div(index, width, rounding_mode="floor").to(verts.dtype)[:, None] + 0.5
    origin_x, origin_y, alpha, beta, value = _rows(planes, face).split((1, 1, 3, 3, 3), dim=1)
    first = torch.eye(3, dtype=verts.dtype, device=verts.device)[0]  # (1, 0, 0) without a host copy
    screen_bary = torch.addcmul(torch.addcmul(first, alpha, px - origin_x), beta, py - origin_y)
    weighted = screen_bary * value  # (P, 3)
    if perspective:  # 1/z is linear on screen: blend 1/z, then renormalize
        inv_depth = weighted.sum(1, keepdim=True)
        if covered is not None:  # finite values (and gradients) on the masked background rows
            inv_depth = torch.where(covered[:, None], inv_depth, 1.0)
        bary, depth = weighted / inv_depth, inv_depth.reciprocal().squeeze(1)
    else:
        bary, depth = screen_bary, weighted.sum(1)
    return (
        _scatter_pixels(bary, pixel, covered, height, width),
        _scatter_pixels(depth, pixel, covered, height, width),
    )


def _barycentric_planes(tri: torch.Tensor, perspective: bool) -> torch.Tensor:
    """(F, 11) per face: corner 0 (x0, y0); rows alpha (3) and beta (3) with screen-space barycentrics
    l = (1, 0, 0) + alpha (px - x0) + beta (py - y0); the blended value per corner, 1/z or z (3).
    Differentiable; degenerate faces get finite rows (they are never drawn)."""
    xy, z = tri[..., :2], tri[..., 2]
    start, end = xy.roll(-1, 1), xy.roll(-2, 1)  # edge k runs from corner k+1 to corner k+2
    direction = end - start
    double_area = direction[:, 0, 0] * direction[:, 1, 1] - direction[:, 0, 1] * direction[:, 1, 0]
    safe_area = torch.where(double_area.abs() > MIN_DOUBLE_AREA, double_area, 1.0)[:, None]
    # l_k = E_k / doubled area, E_k = -dy_k (px - x_k) + dx_k (py - y_k) is 0 on edge k.
    alpha, beta = -direction[..., 1] / safe_area, direction[..., 0] / safe_area
    value = 1 / torch.where(z > 1e-12, z, 1.0) if perspective else z
    return torch.cat((xy[:, 0], alpha, beta, value), dim=1)


def _pixel_faces(
    face_id: torch.Tensor, num_faces: int
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """The pixels the differentiable passes compute, for face_id (H, W).

    On CPU: pixel (P,), the covered pixels, with their faces face (P,); covered None (all are).
    On CUDA every pixel, where selecting the covered ones would cost a host sync: pixel None, face
    (H*W,), covered (H*W,) bool. Background pixels there read faces spread over all faces, so that their
    (zero) gradients do not pile up on one face in the backward pass.
    """
    flat = face_id.reshape(-1)
    if not flat.is_cuda:
        pixel = torch.nonzero(flat >= 0).squeeze(1)
        return pixel, flat[pixel], None
    covered = flat >= 0
    spread = torch.arange(len(flat), device=flat.device) % num_faces
    return None, torch.where(covered, flat, spread), covered


def _scatter_pixels(
    values: torch.Tensor, pixel: torch.Tensor | None, covered: torch.Tensor | None, height: int, width: int
) -> torch.Tensor:
    """Per-pixel values (P, ...) at pixel (P,), or at every pixel if None, masked by covered (H*W,),
    as an (H, W, ...) image with 0 on background; differentiable."""
    if pixel is None:
        shape = covered.shape + (1,) * (values.ndim - 1)
        image = torch.where(covered.view(shape), values, 0.0)
    else:
        image = values.new_zeros((height * width,) + values.shape[1:]).index_put((pixel,), values)
    return image.view((height, width) + values.shape[1:])


def coverage_mask(
    verts_world: torch.Tensor, faces: torch.Tensor, camera: Camera, near: float = NEAR_MM
) -> np.ndarray:
    """(H, W) bool pixels that any face touches, at the camera's image size: a fast CPU silhouette.

    OpenCV fills each projected triangle (1/256 px precision), so this is the coverage of
    `rasterize_camera` (pixel centres inside a face) plus at most a one-pixel rim along the silhouette,
    in a few tens of milliseconds for a tracked mesh at 1024x667 on one thread, where the z-buffer takes
    several times longer. Faces with a vertex at camera depth <= `near` are skipped, as there.
    """
    if camera.height is None or camera.width is None:
        raise ValueError(f"camera {camera.name}: image size unknown")
    faces_np = torch.as_tensor(faces).cpu().numpy()
    pixels, z = project(torch.as_tensor(verts_world, dtype=torch.float32).cpu(), camera)
    fixed = np.round((pixels.numpy().astype(np.float64) - 0.5) * 256).astype(np.int32)  # cv2: centre at 0
    in_front = (z.numpy()[faces_np] > near).all(axis=1)
    image = np.zeros((camera.height, camera.width), np.uint8)
    for triangle in fixed[faces_np[in_front]]:
        cv2.fillConvexPoly(image, triangle, 1, cv2.LINE_8, 8)
    return image > 0
