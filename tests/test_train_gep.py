"""Grid-Error-Patch ray sampling: lattice, error-proportional allocation, error maps, patches, phases."""

from __future__ import annotations

import pytest
import torch

from npva.config import GEPConfig
from npva.train.gep import GEPSampler

# 64 x 48 images; 4 x 4 cells of 16 x 12 = 192 pixels each.
H, W = 64, 48
CONFIG = GEPConfig(grid_stride_x=2, grid_stride_y=3, error_rays=160, error_cells=4, patch_size=20)


def _sampler(num_images: int = 3, **changes) -> GEPSampler:
    config = GEPConfig(**{**CONFIG.__dict__, **changes})
    return GEPSampler(num_images, H, W, config)


def _cell_of(sampler: GEPSampler, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell row and column (R,) of pixels (R, 2) (x, y), from the cell edges."""
    rows = torch.bucketize(pixels[:, 1].contiguous(), sampler.row_edges[1:], right=True)
    cols = torch.bucketize(pixels[:, 0].contiguous(), sampler.col_edges[1:], right=True)
    return rows, cols


def _cell_counts(sampler: GEPSampler, pixels: torch.Tensor) -> torch.Tensor:
    """Rays per cell (C, C) of pixels (R, 2) (x, y), from the cell edges."""
    rows, cols = _cell_of(sampler, pixels)
    cells = sampler.config.error_cells
    return torch.bincount(rows * cells + cols, minlength=cells * cells).reshape(cells, cells)


def _hot_cell_errors(
    sampler: GEPSampler, index: int, hot: tuple[int, int], hot_error: float, cold_error: float
):
    """Tell `sampler` that image `index` has errors of hot_error in cell `hot` and cold_error elsewhere."""
    pixels = sampler.grid_pixels(torch.Generator().manual_seed(1))
    rows, cols = _cell_of(sampler, pixels)
    in_hot = (rows == hot[0]) & (cols == hot[1])
    sampler.update(index, pixels, torch.where(in_hot, hot_error, cold_error))


def test_grid_is_the_strided_lattice_from_an_offset_within_the_stride():
    sampler = _sampler()
    generator = torch.Generator().manual_seed(0)
    offsets = set()
    for _ in range(40):
        pixels = sampler.sample(0, "grid", generator=generator)
        ox, oy = int(pixels[0, 0]), int(pixels[0, 1])
        assert 0 <= ox < 2 and 0 <= oy < 3
        expected_x = torch.arange(ox, W, 2)
        expected_y = torch.arange(oy, H, 3)
        assert pixels.shape == (len(expected_x) * len(expected_y), 2) and pixels.dtype == torch.long
        assert torch.equal(pixels[:, 0].unique(), expected_x) and torch.equal(
            pixels[:, 1].unique(), expected_y
        )
        assert len({tuple(p) for p in pixels.tolist()}) == len(pixels)  # no pixel twice
        offsets.add((ox, oy))
    assert offsets == {(x, y) for x in range(2) for y in range(3)}


def test_error_allocation_follows_the_map():
    sampler = _sampler()
    # Nothing seen yet: uniform over the image (equal cells here).
    assert torch.equal(sampler.error_allocation(0), torch.full((4, 4), 10))
    # One hot cell: error 0.95 there, 0.01 in the 15 others: 160 * 0.95 / 1.1 = 138.2 rays there,
    # 160 * 0.01 / 1.1 = 1.45 in each other cell -> 1 or 2 by largest remainders.
    _hot_cell_errors(sampler, 1, (2, 1), 0.95, 0.01)
    allocation = sampler.error_allocation(1)
    assert int(allocation.sum()) == 160
    assert int(allocation[2, 1]) == 138
    others = allocation.flatten()[torch.arange(16) != 2 * 4 + 1]
    assert set(others.tolist()) <= {1, 2} and int(others.sum()) == 22
    # Pixels follow the allocation: distinct, inside their cells, most in the hot cell.
    pixels = sampler.sample(1, "error", generator=torch.Generator().manual_seed(0))
    assert pixels.shape == (160, 2) and len({tuple(p) for p in pixels.tolist()}) == 160
    assert torch.equal(_cell_counts(sampler, pixels), allocation)
    # Image 0 was not touched.
    assert torch.equal(sampler.error_allocation(0), torch.full((4, 4), 10))


def test_full_cells_pass_their_excess_on():
    sampler = _sampler(error_rays=1000)
    _hot_cell_errors(sampler, 0, (0, 0), 10.0, 0.1)
    allocation = sampler.error_allocation(0)
    assert int(allocation[0, 0]) == 192  # every pixel of the hot cell, no more
    assert int(allocation.sum()) == 1000
    assert int(allocation.flatten()[1:].max() - allocation.flatten()[1:].min()) <= 1  # the rest is shared
    pixels = sampler.sample(0, "error", generator=torch.Generator().manual_seed(0))
    assert len({tuple(p) for p in pixels.tolist()}) == 1000
    # More rays than pixels: every pixel once.
    everything = _sampler(error_rays=H * W + 50).sample(0, "error")
    assert everything.shape == (H * W, 2) and len({tuple(p) for p in everything.tolist()}) == H * W


def test_update_takes_effect_at_once_and_is_a_running_mean():
    sampler = _sampler()
    pixels = torch.tensor([[0, 0], [1, 1], [20, 40], [47, 63]])  # cells (0,0), (0,0), (2,1), (3,3)
    sampler.update(0, pixels, torch.tensor([1.0, 3.0, 5.0, float("nan")]))  # non-finite errors are ignored
    assert sampler.error_map[0, 0, 0] == 2.0 and sampler.error_map[0, 2, 1] == 5.0
    assert sampler.error_count[0, 0, 0] == 2 and sampler.error_count[0, 3, 3] == 0
    sampler.update(0, pixels[:1], torch.tensor([8.0]))
    assert sampler.error_map[0, 0, 0] == pytest.approx((1 + 3 + 8) / 3)  # mean of every error seen
    # Unseen cells count as the mean of the seen ones: (4 + 5) / 2 = 4.5 each.
    allocation = sampler.error_allocation(0)
    weights = torch.full((4, 4), 4.5)
    weights[0, 0], weights[2, 1] = 4.0, 5.0
    expected = 160 * weights / weights.sum()
    assert (allocation - expected).abs().max() < 1
    assert int(allocation[2, 1]) > int(allocation[0, 0])


def test_momentum_gives_an_exponential_running_mean():
    sampler = _sampler(error_momentum=0.75)
    pixel = torch.tensor([[0, 0]])
    sampler.update(0, pixel, torch.tensor([4.0]))
    assert sampler.error_map[0, 0, 0] == 4.0  # the first observation is taken as it is
    sampler.update(0, torch.tensor([[0, 0], [1, 0]]), torch.tensor([0.0, 2.0]))
    assert sampler.error_map[0, 0, 0] == pytest.approx(0.75 * 4.0 + 0.25 * 1.0)


def test_state_dict_round_trips():
    sampler = _sampler()
    _hot_cell_errors(sampler, 2, (3, 0), 1.0, 0.2)
    restored = _sampler()
    restored.load_state_dict(sampler.state_dict())
    assert torch.equal(restored.error_map, sampler.error_map)
    assert torch.equal(restored.error_count, sampler.error_count)
    a = sampler.sample(2, "error", generator=torch.Generator().manual_seed(5))
    b = restored.sample(2, "error", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="does not fit"):
        _sampler(num_images=4).load_state_dict(sampler.state_dict())


def test_patch_is_inside_the_image_and_centred_on_a_mask_pixel():
    sampler = _sampler()
    assert sampler.patch_shape == (20, 20)
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[30, 25] = True
    pixels = sampler.sample(0, "patch", mask, generator)
    assert pixels.shape == (400, 2)
    patch = pixels.reshape(20, 20, 2)  # row by row
    assert torch.equal(patch[0, :, 0], torch.arange(15, 35)) and torch.equal(
        patch[:, 0, 1], torch.arange(20, 40)
    )
    assert patch[10, 10].tolist() == [25, 30]  # the centre is the mask pixel
    # A mask pixel near a corner: the patch moves inside the image and still holds it.
    mask[:] = False
    mask[62, 1] = True
    pixels = sampler.sample(0, "patch", mask, generator)
    assert pixels[:, 0].min() == 0 and pixels[:, 1].max() == H - 1 and [1, 62] in pixels.tolist()
    # Random mask pixels: always inside; the centre is a mask pixel unless the patch had to move.
    mask = torch.rand(H, W, generator=generator) < 0.05
    for _ in range(20):
        patch = sampler.sample(0, "patch", mask, generator).reshape(20, 20, 2)
        left, top = patch[0, 0].tolist()
        right, bottom = patch[-1, -1].tolist()
        assert 0 <= left and right < W and 0 <= top and bottom < H
        x, y = patch[10, 10].tolist()
        assert mask[y, x] or left == 0 or top == 0 or right == W - 1 or bottom == H - 1
    # An image smaller than the patch: the patch is the whole image.
    small = GEPSampler(1, 12, 16, GEPConfig(patch_size=20, error_cells=4))
    assert small.patch_shape == (12, 16)
    assert small.sample(0, "patch", torch.zeros(12, 16, dtype=torch.bool)).shape == (12 * 16, 2)


def test_phase_boundaries():
    published = GEPSampler(1, H, W, GEPConfig(error_cells=4))
    assert [published.phase_at(e) for e in (0, 9, 9.99, 10, 24, 25, 34)] == [
        "grid",
        "grid",
        "grid",
        "error",
        "error",
        "patch",
        "patch",
    ]
    short = _sampler(error_start=1, patch_start=2)
    assert [short.phase_at(e) for e in (0.5, 1, 1.5, 2)] == ["grid", "error", "error", "patch"]
    with pytest.raises(ValueError, match="error_start <= patch_start"):
        _sampler(error_start=5, patch_start=2)
    with pytest.raises(ValueError, match="phase must be"):
        _sampler().sample(0, "random")


def test_allocation_is_proportional_below_the_caps_on_random_maps():
    generator = torch.Generator().manual_seed(3)
    for trial in range(30):
        rays = int(torch.randint(1, H * W + 100, (), generator=generator))
        sampler = _sampler(error_rays=rays)
        errors = torch.rand(H * W // 6, generator=generator) ** 4  # uneven maps
        pixels = sampler.grid_pixels(generator)[: len(errors)]
        sampler.update(0, pixels, errors[: len(pixels)])
        weights = sampler.error_map[0].flatten().double()
        seen = sampler.error_count[0].flatten() > 0
        weights[~seen] = weights[seen].mean()
        counts = sampler.error_allocation(0).flatten()
        capacity = sampler.cell_pixels.flatten()
        assert int(counts.sum()) == min(rays, H * W), trial
        assert (counts <= capacity).all()
        full = counts == capacity
        if (~full).any():
            # One scale for every cell that is not full; full cells deserved at least their pixels.
            scale = (counts.sum() - capacity[full].sum()) / weights[~full].sum()
            assert ((counts[~full] - scale * weights[~full]).abs() < 1).all(), trial
            assert (scale * weights[full] >= capacity[full] - 1e-9).all(), trial
