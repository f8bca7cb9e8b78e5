import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from npva.cli import main
from npva.config import DataConfig
from npva.data.frames import FrameInputs
from npva.data.gendir import GenDir, read_uv_layout
from npva.data.prepared import PreparedSubject
from npva.data.samples import AvatarDataset
from npva.errors import NpvaError
from npva.eval.baseline import mouth_region, textured_mesh_image
from npva.eval.loading import evaluation_dataset, open_checkpoint
from npva.eval.metrics import (
    PROTOCOLS,
    PerceptualMetrics,
    evaluate_checkpoint,
    legacy_scores,
    protocol_cameras,
    ssim,
    standard_scores,
    summarize,
)
from npva.geometry.camera import Camera
from npva.geometry.mesh import Mesh
from npva.io.multiface import write_image, write_krt, write_obj
from npva.io.subject import SubjectLayout
from npva.quality.psnr import psnr

JAW_OPEN = ("E011_Jaw_Open_Sharp_Corner_Lip_Stretch", "003615")
NEUTRAL = ("E001_Neutral_Eyes_Open", "000003")


class RecordingDistance:
    """A stand-in perceptual network: records its inputs, returns the mean absolute difference."""

    name = "recording"

    def __init__(self, min_size: int = 1):
        self.min_size = min_size
        self.calls = []

    def distance(self, images, references):
        """images (N, 3, H, W), references (N or 1, 3, H, W): one recorded pair per image."""
        references = references.expand_as(images)
        self.calls.extend((image.clone(), ref.clone()) for image, ref in zip(images, references, strict=True))
        return (images - references).abs().mean(dim=(1, 2, 3))


def recording_metrics(min_size: int = 1) -> tuple[PerceptualMetrics, RecordingDistance]:
    network = RecordingDistance(min_size)
    return PerceptualMetrics({"lpips": network, "st_lpips": None}, {"st_lpips": "unavailable: test"}), network


def images_with_error_in_mask(error: float, seed: int = 0):
    """photo (H, W, 3) in [0.2, 0.8], mask (H, W) and a render that is the photo plus `error` inside it."""
    generator = torch.Generator().manual_seed(seed)
    photo = 0.2 + 0.6 * torch.rand(24, 20, 3, generator=generator)
    mask = torch.zeros(24, 20, dtype=torch.bool)
    mask[4:16, 3:11] = True
    rendered = photo + error * mask[..., None]
    return rendered, photo, mask


# ---- image metrics ---------------------------------------------------------------------------------


def test_standard_psnr_of_a_constant_error_inside_the_mask():
    rendered, photo, mask = images_with_error_in_mask(0.1)
    perceptual, network = recording_metrics()
    scores = standard_scores({"avatar": rendered}, photo, {"image": None, "mask": mask}, perceptual)["avatar"]
    assert scores["mask"]["psnr"] == pytest.approx(20.0, abs=1e-4)  # 10 log10(1 / 0.1^2)
    fraction = mask.float().mean().item()
    assert scores["image"]["psnr"] == pytest.approx(10 * math.log10(1 / (0.01 * fraction)), abs=1e-4)
    assert math.isnan(scores["mask"]["st_lpips"])  # unavailable metrics stay NaN
    # LPIPS of the mask region sees both images with every pixel outside the mask set to 0.
    masked_image, masked_photo = network.calls[1]
    outside = ~mask
    assert masked_image[:, outside].abs().max() == 0 and masked_photo[:, outside].abs().max() == 0
    assert torch.equal(masked_photo[:, mask], photo.permute(2, 0, 1)[:, mask])


def test_standard_ssim_averages_the_whole_image_map_inside_the_region():
    rendered, photo, mask = images_with_error_in_mask(0.0)
    rendered[:, 17:] = 0.0  # differs only more than one window half (5 px) away from the region
    perceptual, _ = recording_metrics()
    scores = standard_scores({"avatar": rendered}, photo, {"image": None, "mask": mask}, perceptual)["avatar"]
    assert scores["mask"]["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert scores["mask"]["psnr"] == pytest.approx(100.0)  # the MSE floor
    assert scores["image"]["ssim"] < 0.9


def test_images_scored_together_score_as_alone():
    """standard_scores of several images against one photo (the avatar and the baseline, whose
    perceptual scores share the photo's features) equals scoring each image alone."""
    rendered, photo, mask = images_with_error_in_mask(0.1, seed=2)
    other = (photo + 0.05 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(5))).clamp(0, 1)
    regions = {"image": None, "mask": mask}
    together = standard_scores(
        {"avatar": rendered, "baseline": other}, photo, regions, recording_metrics()[0]
    )
    for name, image in (("avatar", rendered), ("baseline", other)):
        alone = standard_scores({name: image}, photo, regions, recording_metrics()[0])[name]
        for region in regions:
            assert together[name][region] == pytest.approx(alone[region], nan_ok=True)
    assert together["avatar"]["mask"]["lpips"] != together["baseline"]["mask"]["lpips"]


def test_empty_region_scores_nan():
    rendered, photo, _ = images_with_error_in_mask(0.1)
    perceptual, _ = recording_metrics()
    empty = torch.zeros(photo.shape[:2], dtype=torch.bool)
    scores = standard_scores({"avatar": rendered}, photo, {"mouth": empty}, perceptual)["avatar"]
    assert set(scores["mouth"]) == {"psnr", "ssim"} and all(math.isnan(v) for v in scores["mouth"].values())


def test_legacy_zeroes_outside_coverage_and_mask():
    rendered, photo, mask = images_with_error_in_mask(0.1, seed=1)
    coverage = torch.zeros_like(mask)
    coverage[8:20, 3:11] = True  # overlaps the mask in rows 8..15
    rendered[~(coverage & mask)] = torch.rand(3)  # anything outside the kept pixels must not count
    perceptual, network = recording_metrics()
    scores = legacy_scores(rendered, photo, coverage, mask, perceptual)["image"]
    kept = int((coverage & mask).sum())
    expected_mse = (0.1 * 255) ** 2 * kept / mask.numel()
    assert scores["mse"] == pytest.approx(expected_mse, rel=1e-5)
    assert scores["psnr"] == pytest.approx(10 * math.log10(255**2 / expected_mse), abs=1e-4)
    zeroed_image, zeroed_photo = network.calls[0]
    assert zeroed_image[:, ~(coverage & mask)].abs().max() == 0
    assert zeroed_photo[:, ~(coverage & mask)].abs().max() == 0


def test_legacy_summary_psnr_is_that_of_the_mean_mse():
    rows = [
        {
            "seq": "s",
            "frame": "1",
            "cam": "400029",
            "avatar_image_mse": 10.0,
            "avatar_image_psnr": psnr(10.0, 255),
        },
        {
            "seq": "s",
            "frame": "2",
            "cam": "400029",
            "avatar_image_mse": 40.0,
            "avatar_image_psnr": psnr(40.0, 255),
        },
    ]
    entry = summarize(rows, PROTOCOLS["npva-legacy"])["avatar"]["image"]
    assert entry["mse"] == 25.0
    assert entry["psnr"] == pytest.approx(10 * math.log10(255**2 / 25.0))
    assert entry["images"] == 2


def test_standard_summary_leaves_out_images_without_a_region():
    rows = [
        {"seq": "s", "frame": "1", "cam": "c", "avatar_mouth_psnr": 20.0, "avatar_mouth_ssim": 0.5},
        {"seq": "s", "frame": "2", "cam": "c", "avatar_mouth_psnr": math.nan, "avatar_mouth_ssim": math.nan},
        {"seq": "s", "frame": "3", "cam": "c", "avatar_mouth_psnr": 30.0, "avatar_mouth_ssim": 0.7},
    ]
    entry = summarize(rows, PROTOCOLS["standard"])["avatar"]["mouth"]
    assert entry == {"images": 2, "psnr": 25.0, "ssim": pytest.approx(0.6)}


@pytest.mark.parametrize("size", [(32, 32), (37, 29), (12, 50)])
def test_ssim_matches_torchmetrics(size):
    ssim_reference = pytest.importorskip("torchmetrics.functional.image").structural_similarity_index_measure
    generator = torch.Generator().manual_seed(sum(size))
    image = torch.rand(*size, 3, generator=generator)
    reference = (image + 0.3 * torch.rand(*size, 3, generator=generator) - 0.15).clamp(0, 1)
    expected = ssim_reference(image.permute(2, 0, 1)[None], reference.permute(2, 0, 1)[None], data_range=1.0)
    assert float(ssim(image, reference).mean()) == pytest.approx(float(expected), abs=1e-4)


def test_ssim_of_identical_images_is_one():
    image = torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(ssim(image, image), torch.ones(16, 16), atol=1e-6)


def test_perceptual_scores_skip_images_below_the_network_size():
    perceptual, network = recording_metrics(min_size=32)
    scores = perceptual.scores([torch.rand(16, 40, 3)], torch.rand(16, 40, 3))
    assert math.isnan(scores[0]["lpips"]) and not network.calls


def test_legacy_protocol_needs_camera_400029(tmp_path):
    krt = tmp_path / "KRT"
    K = np.array([[100.0, 0, 8], [0, 100.0, 8], [0, 0, 1]])
    write_krt(krt, [Camera("400008", K, np.eye(3), np.zeros(3))])
    with pytest.raises(NpvaError, match=str(krt)):
        protocol_cameras("npva-legacy", (), krt)
    assert protocol_cameras("standard", ("test",), krt) == ("test",)


# ---- baseline ----------------------------------------------------------------------------------------


def quad_subject(root: Path, texture: np.ndarray) -> tuple[SubjectLayout, SimpleNamespace]:
    """A 16 x 16 mm textured quad 1000 mm in front of a 20 x 20 px camera (f = 1000 px) that sees it
    head-on, each of its 16 x 16 texel centres on a pixel centre of the middle 16 x 16 pixels."""
    layout = SubjectLayout(root)
    seq, frame = "SEQ", "000001"
    verts = np.array([[-8, -8, 1000], [8, -8, 1000], [-8, 8, 1000], [8, 8, 1000]], np.float32)
    uvs = np.array([[0, 1], [1, 1], [0, 0], [1, 0]], np.float32)  # top of the image is v = 1
    faces = np.array([[0, 2, 1], [1, 2, 3]], np.int64)
    write_obj(layout.mesh_obj(seq, frame), Mesh(verts, faces, uvs, faces.copy()))
    write_image(layout.average_texture(seq, frame), texture)
    K = np.array([[1000.0, 0, 10], [0, 1000.0, 10], [0, 0, 1]])
    camera = Camera("400029", K, np.eye(3), np.zeros(3), height=20, width=20)
    targets = SimpleNamespace(image=torch.zeros(3, 20, 20))
    sample = SimpleNamespace(seq=seq, frame=frame, cam="400029", camera=camera, targets=targets)
    return layout, sample


def test_baseline_of_a_head_on_quad_gives_the_texture_back(tmp_path):
    texture = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    layout, sample = quad_subject(tmp_path, texture)
    background = torch.tensor([0.1, 0.2, 0.3])
    image, coverage = textured_mesh_image(layout, sample, background)
    inside = torch.zeros(20, 20, dtype=torch.bool)
    inside[2:18, 2:18] = True
    assert torch.equal(coverage, inside)
    assert torch.allclose(image[2:18, 2:18], torch.from_numpy(texture).float() / 255, atol=1e-5)
    assert torch.equal(image[~inside], background.expand(int((~inside).sum()), 3))


def test_mouth_region_is_the_pixels_of_the_mouth_texels(tmp_path):
    layout, sample = quad_subject(tmp_path, np.zeros((16, 16, 3), np.uint8))
    mouth = torch.zeros(4, 4, dtype=torch.bool)
    mouth[0, 1] = True  # u in [0.25, 0.5), v in (0.75, 1]: image rows 2..5, columns 6..9
    expected = torch.zeros(20, 20, dtype=torch.bool)
    expected[2:6, 6:10] = True
    assert torch.equal(mouth_region(layout, sample, mouth), expected)


@pytest.fixture(scope="module")
def tiny_samples(tiny_subject, gendir):
    prepared = PreparedSubject(tiny_subject, gendir)
    inputs = FrameInputs(texture_size=32, posmap_size=32)
    dataset = AvatarDataset(prepared, [JAW_OPEN, NEUTRAL], ["400029", "400008"], DataConfig(), inputs)
    return SubjectLayout(tiny_subject), [dataset.load(i) for i in range(len(dataset))]


def test_baseline_matches_the_tiny_photos_inside_the_mesh(tiny_samples):
    layout, samples = tiny_samples
    for sample in samples:
        image, coverage = textured_mesh_image(layout, sample)
        error = (image - sample.targets.image.permute(1, 2, 0)).abs().mean(-1)
        assert coverage.sum() > 0.8 * sample.targets.mask.sum()  # the mesh covers the mask (up to its rim)
        assert not (coverage & ~sample.targets.mask).any()
        assert error[coverage].mean() < 0.05 and error[coverage].median() < 0.025


def test_mouth_region_on_a_jaw_open_frame(tiny_samples, gendir):
    layout, samples = tiny_samples
    _, _, mouth = read_uv_layout(GenDir(gendir))
    jaw_open = next(s for s in samples if (s.seq, s.frame) == JAW_OPEN)
    region = mouth_region(layout, jaw_open, torch.from_numpy(mouth.astype(bool)))
    assert region.sum() > 20 and not (region & ~jaw_open.targets.mask).any()


# ---- the command -------------------------------------------------------------------------------------


def test_cli_standard_with_baseline(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("NPVA_LPIPS_WEIGHTS", raising=False)
    frames = tmp_path / "two_frames.txt"
    frames.write_text(f"{JAW_OPEN[0]} {JAW_OPEN[1]}\n{NEUTRAL[0]} {NEUTRAL[1]}\n")
    out = tmp_path / "standard"
    argv = [str(tiny_checkpoint), "--img-list", str(frames), "--cameras", "400029", "400008"]
    code = main(["metrics", *argv, "--baseline", "mesh", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "baseline  mask" in printed and "st-lpips" in printed
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["cam"] for r in rows} == {"400029", "400008"}
    report = json.loads((out / "metrics.json").read_text())
    assert report["protocol"] == "standard" and report["step"] == 10
    assert report["settings"]["ssim"]["window"] == 11 and report["settings"]["cameras"] == [
        "400029",
        "400008",
    ]
    assert report["settings"]["perceptual"]["lpips"]["available"] is False
    assert report["counts"] == {"images": 4, "frames": 2, "cameras": 2, "skipped": 0}
    for subject in ("avatar", "baseline"):
        for region in ("image", "mask", "mouth"):
            entry = report["summary"][subject][region]
            assert entry["images"] >= 2 and 5 < entry["psnr"] < 60 and 0 < entry["ssim"] <= 1
        assert report["summary"][subject]["mask"]["lpips"] is None
        assert 0 <= report["summary"][subject]["mask"]["st_lpips"] < 1
    assert report["summary"]["baseline"]["mask"]["psnr"] > report["summary"]["avatar"]["mask"]["psnr"]


def test_cli_legacy_uses_camera_400029(tiny_checkpoint, tmp_path):
    frames = tmp_path / "one_frame.txt"
    frames.write_text(f"{JAW_OPEN[0]} {JAW_OPEN[1]}\n")
    out = tmp_path / "legacy"
    argv = [str(tiny_checkpoint), "--img-list", str(frames), "--protocol", "npva-legacy"]
    assert main(["metrics", *argv, "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["settings"]["cameras"] == ["400029"] and report["settings"]["coverage_opacity"] == 0.5
    entry = report["summary"]["avatar"]["image"]
    assert entry["psnr"] == pytest.approx(10 * math.log10(255**2 / entry["mse"]))
    assert len((out / "metrics.csv").read_text().splitlines()) == 2
    assert main(["metrics", *argv, "--cameras", "400008", "--out", str(out), "--no-progress"]) == 3


def test_cli_bad_checkpoint_path(tmp_path, capsys):
    missing = tmp_path / "no_such_run"
    assert main(["metrics", str(missing), "--img-list", "test", "--no-progress"]) == 3
    assert str(missing) in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_on_cuda_match_cpu(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    frames = tmp_path / "one_frame.txt"
    frames.write_text(f"{JAW_OPEN[0]} {JAW_OPEN[1]}\n")
    summaries = {}
    for device in ("cpu", "cuda"):
        ctx = open_checkpoint(tiny_checkpoint, device=device)
        dataset = evaluation_dataset(ctx, frames, ["400029", "400008"])
        summaries[device] = evaluate_checkpoint(
            ctx, dataset, "standard", baseline=True, progress=False
        ).summary
    tolerances = {"baseline": (0.01, 1e-4), "avatar": (0.2, 0.01)}  # (PSNR dB, SSIM)
    for subject, (psnr_tolerance, ssim_tolerance) in tolerances.items():
        for region in ("image", "mask", "mouth"):
            cpu, cuda = summaries["cpu"][subject][region], summaries["cuda"][subject][region]
            assert cuda["psnr"] == pytest.approx(cpu["psnr"], abs=psnr_tolerance)
            assert cuda["ssim"] == pytest.approx(cpu["ssim"], abs=ssim_tolerance)


def test_the_floors_score_in_the_mask_does_not_follow_the_avatars_background(tiny_checkpoint, tmp_path):
    # The floor shows the avatar's background where the tracked mesh does not cover a pixel's centre; the
    # mask region leaves out the rim of preprocessing's masks where that happens.
    frames = tmp_path / "one_frame.txt"
    frames.write_text(f"{JAW_OPEN[0]} {JAW_OPEN[1]}\n")
    ctx = open_checkpoint(tiny_checkpoint)
    dataset = evaluation_dataset(ctx, frames, ["400029", "400008"])
    floors = []
    for colour in (0.0, 1.0):
        with torch.no_grad():
            ctx.avatar.background.colours.fill_(colour)
        summary = evaluate_checkpoint(ctx, dataset, "standard", baseline=True, progress=False).summary
        floors.append(summary["baseline"])
    assert floors[0]["mask"]["psnr"] == floors[1]["mask"]["psnr"]
    assert floors[0]["image"]["psnr"] != floors[1]["image"]["psnr"]
