"""benchmarks/count_host_syncs.py: the census of operations that make the host wait, on the CPU."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from npva.config import GEPConfig
from npva.geometry.camera import camera_tensors, look_at
from npva.model.losses import mesh_loss, points_loss, smoothness_loss
from npva.model.sampling import OccupancyGrid, optical_axis, probe_depths
from npva.train.gep import GEPSampler

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "count_host_syncs.py"
_SPEC = importlib.util.spec_from_file_location("count_host_syncs", _PATH)
census_script = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = census_script
_SPEC.loader.exec_module(census_script)


def test_the_census_counts_waiting_operations_by_op_and_call_site():
    census = census_script.WaitingOpCensus()
    values = torch.tensor([0.0, 2.0, 0.0, 3.0])
    with census:
        values.nonzero()
        values[values > 1]  # a boolean index
        values[torch.tensor([1, 3])]  # an index of positions: no wait
        float(values.sum())
    sites = list(census.sites)
    assert census.sites.total() == 3
    assert [site.split()[0] for site in sites] == ["nonzero", "index", "_local_scalar_dense"]


def test_the_script_lists_the_waits_of_a_training_step(tiny_subject, gendir, capsys, monkeypatch):
    argv = ["count_host_syncs.py", str(tiny_subject), "--preset", "tiny", "--steps", "2"]
    monkeypatch.setattr(sys, "argv", [*argv, "--gendir", str(gendir), "--set", "train.device=cpu"])
    census_script.main()
    lines = capsys.readouterr().out.splitlines()
    assert "operations that would wait for a GPU in 2 steps" in lines[0]
    assert any("render.py" in line and "nonzero" in line for line in lines[1:])
    # The neural points' texels are found once, not by a boolean index per frame.
    assert not any("build_neural_points" in line for line in lines[1:])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_census_counts_the_waits_that_cuda_reports():
    values = torch.tensor([0.0, 2.0, 0.0, 3.0], device="cuda")
    with census_script.cuda_sync_census() as waiting:
        values.nonzero()  # CUDA may report its copy of the count and the wait for it separately
    assert set(waiting) == {"(outside npva)"}  # called from this test, in no frame of the package


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_per_frame_structures_wait_once_each():
    from npva.model.fast.query import TritonNeighbourIndex

    K = np.array([[100.0, 0.0, 48.0], [0.0, 100.0, 32.0], [0.0, 0.0, 1.0]])
    camera = look_at("cam", np.array([0.0, 0.0, -400.0]), np.zeros(3), np.array([0.0, -1.0, 0.0]), K, 64, 96)
    points = torch.randn(5000, 3, device="cuda") * 40.0
    depth = torch.rand(64, 96, device="cuda") * 500.0
    pixels = torch.randint(0, 64, (300, 2), device="cuda")
    sampler = GEPSampler(1, 64, 96, GEPConfig())
    errors = torch.rand(300, device="cuda")
    sampler.cell_statistics(pixels, errors)  # copies its tables to the device once
    with census_script.cuda_sync_census() as none:
        camera_tensors(camera, "cuda")
        optical_axis(camera, "cuda")
        probe_depths(depth, pixels, 4)
        sampler.cell_statistics(pixels, errors)
    with census_script.cuda_sync_census() as occupancy:
        OccupancyGrid(points, 2.0, 1)
    with census_script.cuda_sync_census() as index:
        TritonNeighbourIndex(points, 5.0, 8)
    assert (none.total(), occupancy.total(), index.total()) == (0, 1, 1)


def test_the_geometry_loss_terms_make_the_host_wait_for_nothing():
    coarse = torch.randn(1, 3, 8, 8, requires_grad=True)
    coverage, mouth = torch.rand(8, 8) > 0.3, torch.rand(8, 8) > 0.8
    census = census_script.WaitingOpCensus()
    with census:
        total = mesh_loss(coarse, torch.randn(1, 3, 8, 8), coverage, mouth, mouth_weight=10.0)
        total = total + points_loss(coarse, torch.randn(1, 3, 8, 8), mouth)
        total = total + smoothness_loss(coarse, coverage, 4.0)
        total.backward()
    assert not census.sites
