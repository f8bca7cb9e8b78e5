"""The contact sheet: a few views and textures of a few frames, for people to look at."""

from __future__ import annotations

import cv2
import numpy as np

from npva.synth.scene import FRONTAL_CAMERA, FrameKey, Preset

TEXTURE = "texture"  # the column of the average textures
TILE_HEIGHT = 384  # pixels: images are shrunk or enlarged to it, whatever the preset

Tile = tuple[str, str, str]  # (sequence, frame, camera name or TEXTURE)


def to_tile(image: np.ndarray) -> np.ndarray:
    """A float image (H, W, 3) in [0, 1] as uint8, shrunk by an integer factor to at most TILE_HEIGHT
    rows: what worker processes send back for the sheet."""
    tile = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    factor = -(-tile.shape[0] // TILE_HEIGHT)
    if factor == 1:
        return tile
    size = (tile.shape[1] // factor, tile.shape[0] // factor)
    return cv2.resize(tile, size, interpolation=cv2.INTER_AREA)


class ContactSheet:
    """Rows are frames (the first, the widest open jaw, the middle of a sentence, the last), columns
    are cameras (frontal first) and the frame's average texture."""

    def __init__(self, preset: Preset, frames: list[FrameKey]):
        self.height, self.width = preset.image_size
        by_sequence: dict[str, list[FrameKey]] = {}
        for key in frames:
            by_sequence.setdefault(key.sequence, []).append(key)
        rows = [frames[0]]
        rows += [keys[-1] for name, keys in by_sequence.items() if "Jaw_Open" in name][:1]
        rows += [keys[len(keys) // 2] for name, keys in by_sequence.items() if name.startswith("SEN_")][:1]
        rows.append(frames[-1])
        self.rows = list(dict.fromkeys(rows))
        others = [name for name in preset.cameras if name != FRONTAL_CAMERA]
        self.columns = [FRONTAL_CAMERA, *others[:3], TEXTURE]
        self.tiles: dict[Tile, np.ndarray] = {}

    def wanted(self) -> set[Tile]:
        return {(key.sequence, key.frame, column) for key in self.rows for column in self.columns}

    def add(self, tiles: dict[Tile, np.ndarray]) -> None:
        self.tiles.update(tiles)

    def image(self) -> np.ndarray:
        """(rows * h, columns * w, 3) uint8 image of labelled tiles TILE_HEIGHT pixels high, from the
        tiles added (see to_tile)."""
        h, w = TILE_HEIGHT, round(self.width * TILE_HEIGHT / self.height)
        sheet = np.zeros((len(self.rows) * h, len(self.columns) * w, 3), dtype=np.uint8)
        for i, key in enumerate(self.rows):
            for j, column in enumerate(self.columns):
                tile = self.tiles.get((key.sequence, key.frame, column))
                if tile is None:
                    continue
                side = min(h, w)
                size = (side, side) if column == TEXTURE else (w, h)
                shrink = tile.shape[0] > size[1]
                tile = cv2.resize(tile, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_NEAREST)
                sheet[i * h : i * h + tile.shape[0], j * w : j * w + tile.shape[1]] = tile
                label = f"{key.sequence[:4]} {key.frame} {column}"
                cv2.putText(
                    sheet, label, (j * w + 3, i * h + 12), cv2.FONT_HERSHEY_PLAIN, 0.8, (255, 255, 255), 1
                )
        return sheet
