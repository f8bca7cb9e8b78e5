"""Geometry: pinhole cameras, triangle meshes with UV layouts, and a rasterizer (image and UV space)
written in PyTorch that runs on CPU and GPU."""

from npva.geometry.camera import Camera
from npva.geometry.mesh import (
    Mesh,
    to_face_frame,
    to_world,
    uv_grid_faces,
    uv_position_map,
    uv_sphere,
    vertex_normals,
)
from npva.geometry.raster import Fragments, interpolate, rasterize, rasterize_camera, rasterize_uv

__all__ = [
    "Camera",
    "Fragments",
    "Mesh",
    "interpolate",
    "rasterize",
    "rasterize_camera",
    "rasterize_uv",
    "to_face_frame",
    "to_world",
    "uv_grid_faces",
    "uv_position_map",
    "uv_sphere",
    "vertex_normals",
]
