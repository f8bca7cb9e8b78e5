"""The contact sheet: a few views and textures of a few frames, for people to look at."""

from __future__ import annotations

import cv2
import numpy as np

from npva.synth.scene import FRONTAL_CAMERA, FrameKey, Preset

TEXTURE = "texture"  # the column of the average textures

Tile = tuple[str, str, str]  # (sequence, frame, camera name or TEXTURE)


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
        """(rows * h, columns * w, 3) uint8 image, tiles at least 256 pixels high, labelled."""
        scale = max(1, int(np.ceil(256 / self.height)))
        h, w = self.height * scale, self.width * scale
        sheet = np.zeros((len(self.rows) * h, len(self.columns) * w, 3), dtype=np.uint8)
        for i, key in enumerate(self.rows):
            for j, column in enumerate(self.columns):
                tile = self.tiles.get((key.sequence, key.frame, column))
                if tile is None:
                    continue
                side = min(h, w)
                size = (side, side) if column == TEXTURE else (w, h)
                tile = np.round(np.clip(tile, 0.0, 1.0) * 255).astype(np.uint8)
                tile = cv2.resize(tile, size, interpolation=cv2.INTER_AREA)
                sheet[i * h : i * h + tile.shape[0], j * w : j * w + tile.shape[1]] = tile
                label = f"{key.sequence[:4]} {key.frame} {column}"
                cv2.putText(
                    sheet, label, (j * w + 3, i * h + 12), cv2.FONT_HERSHEY_PLAIN, 0.8, (255, 255, 255), 1
                )
        return sheet
