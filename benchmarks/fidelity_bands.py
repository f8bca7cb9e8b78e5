"""Where on the face the avatar wins or loses against the floor (the textured tracked mesh).

    python benchmarks/fidelity_bands.py RUN_DIR [--camera 400029] [--bands 8] [--image diff.png]

Renders the test frames of the run's subject from one camera (as `npva metrics --img-list test`), with
the avatar and with the floor of `--baseline mesh`, and prints the PSNR of each inside horizontal bands
of the face mask, top to bottom (hair, brow, eyes, nose, mouth, chin, neck on a frontal camera), over
all frames. --image writes, for the first frame, the photo, the avatar, the floor and where the avatar's
squared error is above the floor's (red) or below it (green).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from npva.eval.baseline import textured_mesh_image
from npva.eval.loading import evaluation_dataset, open_checkpoint
from npva.io.multiface import write_image


def band_masks(mask: torch.Tensor, bands: int) -> list[torch.Tensor]:
    """mask (H, W) bool split into `bands` horizontal bands of equal height over its rows."""
    rows = mask.any(1).nonzero().squeeze(1)
    top, bottom = int(rows.min()), int(rows.max()) + 1
    parts = []
    for b in range(bands):
        part = torch.zeros_like(mask)
        lo, hi = top + (bottom - top) * b // bands, top + (bottom - top) * (b + 1) // bands
        part[lo:hi] = mask[lo:hi]
        parts.append(part)
    return parts


def comparison_image(photo, avatar, floor, mask) -> np.ndarray:
    """(H, 4W, 3) uint8: photo, avatar, floor, and red/green where the avatar's error is above/below."""
    gain = (((avatar - photo) ** 2).sum(-1) - ((floor - photo) ** 2).sum(-1)) * mask
    scaled = (gain / 0.05).clamp(-1, 1)
    diff = torch.stack((scaled.clamp_min(0), (-scaled).clamp_min(0), torch.zeros_like(scaled)), -1)
    return (torch.cat((photo, avatar, floor, diff), 1).numpy() * 255).round().astype(np.uint8)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run directory or checkpoint")
    parser.add_argument("--camera", default="400029")
    parser.add_argument("--bands", type=int, default=8)
    parser.add_argument("--image", help="write the first frame's comparison here (PNG)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    ctx = open_checkpoint(args.run, device=args.device)
    dataset = evaluation_dataset(ctx, "test", [args.camera])
    squared = np.zeros((2, args.bands))
    pixels = np.zeros(args.bands)
    for index in range(len(dataset)):
        sample = dataset.load(index).to(ctx.device)
        photo = sample.targets.image.permute(1, 2, 0)
        avatar = ctx.avatar.render_image(sample.drive, sample.camera)[0].clamp(0, 1)
        floor, covered = textured_mesh_image(ctx.layout, sample, ctx.avatar.background_colour(sample.cam))
        mask = sample.targets.mask & covered  # the mask region of npva metrics
        for b, band in enumerate(band_masks(mask, args.bands)):
            pixels[b] += 3 * int(band.sum())
            for row, image in enumerate((avatar, floor)):
                squared[row, b] += float(((image - photo)[band] ** 2).sum())
        if index == 0 and args.image:
            write_image(args.image, comparison_image(photo.cpu(), avatar.cpu(), floor.cpu(), mask.cpu()))
    print(f"{len(dataset)} frames from camera {args.camera}, PSNR dB in bands of the mask, top to bottom")
    print(f"{'band':>4} {'pixels':>8} {'avatar':>7} {'floor':>7} {'margin':>7}")
    for b in range(args.bands):
        avatar_psnr, floor_psnr = (-10 * math.log10(squared[r, b] / pixels[b]) for r in (0, 1))
        print(
            f"{b:>4} {pixels[b] / 3 / len(dataset):8.0f} {avatar_psnr:7.2f} {floor_psnr:7.2f} "
            f"{avatar_psnr - floor_psnr:+7.2f}"
        )


if __name__ == "__main__":
    main()
