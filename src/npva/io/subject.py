"""Where each file of a Multiface subject lives: pure path arithmetic, no file system access."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SubjectLayout:
    """Paths of one subject directory in the Multiface layout (see design/data-format.md)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def krt(self) -> Path:
        return self.root / "KRT"

    @property
    def frame_list(self) -> Path:
        return self.root / "frame_list.txt"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def image(self, sequence: str, camera: str, frame: str) -> Path:
        return self.images_dir / sequence / camera / f"{frame}.png"

    @property
    def tracked_mesh_dir(self) -> Path:
        return self.root / "tracked_mesh"

    def mesh_obj(self, sequence: str, frame: str) -> Path:
        return self.tracked_mesh_dir / sequence / f"{frame}.obj"

    def mesh_bin(self, sequence: str, frame: str) -> Path:
        return self.tracked_mesh_dir / sequence / f"{frame}.bin"

    def transform(self, sequence: str, frame: str) -> Path:
        return self.tracked_mesh_dir / sequence / f"{frame}_transform.txt"

    def average_texture(self, sequence: str, frame: str) -> Path:
        return self.root / "unwrapped_uv_1024" / sequence / "average" / f"{frame}.png"

    @property
    def audio_dir(self) -> Path:
        return self.root / "audio"

    def audio(self, sequence: str) -> Path:
        return self.audio_dir / f"{sequence}.wav"

    @property
    def splits_dir(self) -> Path:
        return self.root / "splits"

    def split_list(self, name: str) -> Path:
        """Split list "<seq> <frame>" per line; NPVA's names are "train" and "test"."""
        return self.splits_dir / f"{name}_list.txt"

    @property
    def camera_split(self) -> Path:
        return self.splits_dir / "camera_split.json"

    @property
    def mvs_depth_dir(self) -> Path:
        return self.root / "mvs_depth"

    def mvs_depth(self, sequence: str, camera: str, frame: str) -> Path:
        """Depth from an external multi-view stereo tool (EXR, metres as such tools deliver it)."""
        return self.mvs_depth_dir / sequence / camera / f"{frame}.exr"

    @property
    def tex_mean(self) -> Path:
        return self.root / "tex_mean.png"

    @property
    def tex_var(self) -> Path:
        return self.root / "tex_var.txt"
