"""The training engine on the tiny subject: learning, exact resume, checkpoints, settings, backgrounds."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from npva.cli import main
from npva.config import (
    ExperimentConfig,
    apply_overrides,
    describe_settings,
    load_config,
    merge_settings,
    resumable_settings,
    save_config,
)
from npva.data.prepared import PreparedSubject
from npva.data.samples import AvatarDataset
from npva.errors import ConfigError, FormatError, NpvaError
from npva.geometry.camera import look_at
from npva.io.multiface import read_frame_list, read_obj, write_frame_list
from npva.io.subject import SubjectLayout
from npva.model.avatar import Avatar, CameraBackground, CameraColour, calibrated
from npva.model.points import point_texels
from npva.model.render import UVTemplate
from npva.train import build_config, load_avatar, preset_config, train
from npva.train import checkpoint as ckpt
from npva.train.distributed import DistributedContext, StepOrder
from npva.train.engine import Trainer, check_resumable, check_settings, loader_workers, with_next

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def tiny_run(tiny_subject: Path, gendir: Path, tmp_path_factory):
    """An uninterrupted run of the tiny preset (35 steps through all three GEP phases)."""
    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    return train(tiny_subject, run_dir, preset_config("tiny"), gendir=gendir)


def test_training_lowers_the_loss_and_raises_held_out_psnr(tiny_run):
    assert tiny_run.finished and tiny_run.step == tiny_run.total_steps == 35
    first, last = tiny_run.log[0], tiny_run.log[-1]
    assert {record["phase"] for record in tiny_run.log} == {0.0, 1.0, 2.0}  # grid, error, patch
    # The patch phase samples the harder pixels around the face, so compare the sampled rays' loss up
    # to the last interval before it.
    before_patch = [record for record in tiny_run.log if record["phase"] < 2.0][-1]
    assert before_patch["rgb"] < 0.8 * first["rgb"]
    assert before_patch["psnr"] > first["psnr"] + 2.0
    assert "lpips" in last and "lpips" not in first  # the perceptual term in the patch phase only
    before, after = tiny_run.validation[0], tiny_run.validation[-1]
    assert (before.step, after.step) == (0, 35)
    assert after.psnr_image > before.psnr_image + 3.0
    assert after.psnr_mask > before.psnr_mask + 3.0
    assert tiny_run.lr == pytest.approx(1e-4)  # decayed x0.1 at epoch 15 of 35


def test_stopped_run_resumed_from_the_command_line_matches_an_uninterrupted_one(
    tiny_subject, gendir, tiny_run, tmp_path
):
    # Bit for bit with one thread per process, as `make test` runs it (docs/training.md).
    run_dir = tmp_path / "run"
    common = [str(tiny_subject), "--out", str(run_dir), "--gendir", str(gendir), "--preset", "tiny"]
    assert main(["train", *common, "--set", "train.stop_after=13"]) == 0
    stopped = ckpt.load_checkpoint(ckpt.list_checkpoints(run_dir)[-1])
    assert stopped["step"] == 13 and stopped["phase"] == "error"
    assert main(["train", str(tiny_subject), "--out", str(run_dir), "--gendir", str(gendir)]) == 0

    resumed = ckpt.load_checkpoint(ckpt.list_checkpoints(run_dir)[-1])
    reference = ckpt.load_checkpoint(tiny_run.checkpoint)
    for key in ("step", "epoch", "phase", "total_steps"):
        assert resumed[key] == reference[key], key
    assert resumed["scheduler"]["_last_lr"] == reference["scheduler"]["_last_lr"] == [pytest.approx(1e-4)]
    for name, tensor in reference["model"].items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(resumed["model"][name], tensor), name
    for name in ("error_map", "error_count"):
        assert torch.equal(resumed["gep"][name], reference["gep"][name]), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["resumed_from"] == 13


def test_preparing_the_next_step_during_the_backward_pass_changes_no_result(
    tiny_subject, gendir, tiny_run, tmp_path, monkeypatch
):
    drawn = []  # (the trainer's step when a step's input was prepared, that step)
    prepare = Trainer._prepare

    def spy(self, sample, step, index=0):
        drawn.append((self.step, step))
        return prepare(self, sample, step, index)

    monkeypatch.setattr(Trainer, "_prepare", spy)
    short = apply_overrides(preset_config("tiny"), ["train.stop_after=8", "train.val_every=0"])
    train(tiny_subject, tmp_path / "overlapped", short, gendir=gendir)
    assert len(drawn) == 8 and sum(now + 1 == step for now, step in drawn) >= 6  # the default

    # tiny_run prepared its steps that way; one step at a time gives the same run bit for bit.
    drawn.clear()
    config = apply_overrides(preset_config("tiny"), ["train.overlap_steps=false"])
    sequential = train(tiny_subject, tmp_path / "sequential", config, gendir=gendir)
    assert drawn == [(step, step) for step in range(35)]
    one_at_a_time = ckpt.load_checkpoint(sequential.checkpoint)
    reference = ckpt.load_checkpoint(tiny_run.checkpoint)
    for name, tensor in reference["model"].items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(one_at_a_time["model"][name], tensor), name
    for name in ("error_map", "error_count"):
        assert torch.equal(one_at_a_time["gep"][name], reference["gep"][name]), name


def test_with_next_pairs_each_item_with_the_following_one():
    assert list(with_next([])) == []
    assert list(with_next(iter([1, 2, 3]))) == [(1, 2), (2, 3), (3, None)]


def test_checkpoints_are_complete_and_render_without_the_gendir(tiny_run, tiny_subject):
    files = sorted(p.name for p in ckpt.checkpoint_dir(tiny_run.run_dir).iterdir())
    assert files == ["step_00000030.pt", "step_00000035.pt"]  # keep_checkpoints 2, no temporary files
    state = ckpt.load_checkpoint(tiny_run.checkpoint)
    assert set(ckpt.REQUIRED_KEYS) <= set(state)
    assert ckpt.checkpoint_config(state) == preset_config("tiny")
    assert load_config(tiny_run.run_dir / "config.yaml") == preset_config("tiny")
    assert list((tiny_run.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert state["perceptual"] == "st-lpips-vgg" and state["data"]["position"] == 35
    assert len(state["data"]["keys"]) == 30  # 6 training frames x 5 cameras
    avatar, config = load_avatar(tiny_run.checkpoint)
    assert config == preset_config("tiny") and not avatar.training
    assert state["rank_digests"] == [
        {
            "parameters": ckpt.parameter_digest(avatar),
            "error_maps": ckpt.tensor_digest((n, state["gep"][n]) for n in ("error_map", "error_count")),
        }
    ]


def test_interrupted_checkpoint_write_keeps_the_previous_file(tiny_run, tmp_path, monkeypatch):
    state = ckpt.load_checkpoint(tiny_run.checkpoint)
    path = ckpt.checkpoint_path(tmp_path, 35)
    ckpt.save_checkpoint(path, state)
    original = path.read_bytes()

    def failing_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, state)
    assert path.read_bytes() == original
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    with pytest.raises(ValueError, match="lacks step"):
        ckpt.save_checkpoint(path, {k: v for k, v in state.items() if k != "step"})


def test_damaged_newest_checkpoint_is_skipped_on_resume(tiny_run, tmp_path):
    older, newer = ckpt.checkpoint_path(tmp_path, 30), ckpt.checkpoint_path(tmp_path, 35)
    older.parent.mkdir()
    older.write_bytes(ckpt.list_checkpoints(tiny_run.run_dir)[0].read_bytes())
    newer.write_bytes(tiny_run.checkpoint.read_bytes()[:1000])
    with pytest.raises(FormatError, match="step_00000035.pt"):
        ckpt.load_checkpoint(newer)
    path, state = ckpt.latest_checkpoint(tmp_path)
    assert path == older and state["step"] == 30


def test_resume_with_other_model_settings_is_refused(tiny_subject, gendir, tiny_run):
    config = apply_overrides(preset_config("tiny"), ["render.query.k=4"])
    with pytest.raises(NpvaError, match="render.query.k"):
        train(tiny_subject, tiny_run.run_dir, config, gendir=gendir)


def test_the_settings_a_resumed_run_may_change_are_marked_on_their_fields(tiny_run, tmp_path):
    resumable = resumable_settings()
    assert {"train.epochs", "train.workers", "render.kernels", "render.query.backend"} <= resumable
    assert not any(key.startswith(("model.", "gep.")) for key in resumable)
    assert "train.lr" not in resumable and "loss.rgb_weight" not in resumable
    saved = ckpt.load_checkpoint(ckpt.list_checkpoints(tiny_run.run_dir)[-1])["config"]
    saved = merge_settings(ExperimentConfig(), saved)
    check_resumable(saved, apply_overrides(saved, ["train.epochs=70", "render.kernels=torch"]), tmp_path)
    with pytest.raises(NpvaError, match="train.lr"):
        check_resumable(saved, apply_overrides(saved, ["train.lr=0.5"]), tmp_path)


def test_train_help_lists_every_setting_with_its_value_and_description(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = capsys.readouterr().out
    setting_lines = [line for line in shown.splitlines() if line.startswith("  ") and line[2] != " "]
    listed = [line.split(" = ")[0].strip() for line in setting_lines if " = " in line]
    settings = describe_settings(ExperimentConfig())
    assert listed == [key for key, _, _ in settings]
    assert all(doc.replace("[resumable]", "").strip() for _, _, doc in settings)
    assert "  train.lr = 0.001\n      Adam's learning rate at the start" in shown
    assert (
        "  train.epochs = 35\n      length of the run in epochs of steps_per_epoch steps [resumable]" in shown
    )


def test_train_needs_a_preprocessed_subject(tiny_subject, tmp_path, capsys):
    empty = tmp_path / "nothing"
    empty.mkdir()
    args = ["train", str(tiny_subject), "--out", str(tmp_path / "run"), "--gendir", str(empty)]
    assert main([*args, "--preset", "tiny"]) == 3
    assert "npva preprocess" in capsys.readouterr().err
    assert main([*args, "--preset", "tiny", "--set", "train.lrr=1"]) == 3
    assert "unknown setting 'train.lrr'" in capsys.readouterr().err


def test_train_refuses_a_gendir_of_another_uv_size(tiny_subject, gendir, tmp_path):
    config = apply_overrides(
        preset_config("tiny"),
        ["model.posmap_size=16", "model.encoder_channels=8,8", "model.coarse_channels=8,3"],
    )
    with pytest.raises(NpvaError, match="--uv-size 16"):
        train(tiny_subject, tmp_path / "run", config, gendir=gendir)


# ---- settings -------------------------------------------------------------------------------------


def test_config_yaml_round_trip(tmp_path):
    config = apply_overrides(
        preset_config("demo"),
        ["data.cameras=000063,400029", "train.grad_clip=none", "gep.error_momentum=0.9"],
    )
    path = tmp_path / "config.yaml"
    save_config(config, path)
    assert load_config(path) == config
    assert load_config(path).data.cameras == ("000063", "400029")


def test_partial_yaml_changes_only_what_it_names(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  lr: 5e-4\n  lr_decay_epochs: [10, 20]\nrender:\n  query: {k: 4}\n")
    config = build_config("tiny", path, ["train.lr=2e-3"])
    expected = preset_config("tiny")
    expected.train.lr_decay_epochs = (10, 20)
    expected.train.lr = 2e-3  # --set comes after the file
    expected.render.query.k = 4
    assert config == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  lrr: 1\n", "unknown setting 'train.lrr'"),
        ("train:\n  epochs: many\n", "train.epochs: expected int"),
        ("render:\n  query: 3\n", "render.query: expected a mapping"),
        ("- a list\n", "expected a mapping"),
        ("train: [1\n", "not valid YAML"),
    ],
)
def test_bad_yaml_names_the_file_and_setting(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(FormatError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_set_overrides_are_typed_by_the_fields():
    config = apply_overrides(
        ExperimentConfig(),
        [
            "train.lr=5e-4",
            "train.epochs=3",
            "train.progress=false",
            "train.stop_after=none",
            "train.lr_decay_epochs=[1, 2]",
            "data.cameras=400029",
            "loss.lpips_weights=a.pth:b.pth",
            "render.decoder.variant=pointnerf",
        ],
    )
    assert config.train.lr == 5e-4 and config.train.epochs == 3 and config.train.progress is False
    assert config.train.stop_after is None and config.train.lr_decay_epochs == (1, 2)
    assert config.data.cameras == ("400029",) and config.loss.lpips_weights == "a.pth:b.pth"
    assert config.render.decoder.variant == "pointnerf"
    for bad, message in [
        ("train.lrr=1", "unknown setting 'train.lrr'"),
        ("train.epochs=1.5", "expected int"),
        ("train=1", "is a section"),
        ("train.lr.x=1", "is a setting, not a section"),
        ("lr", "expected key=value"),
    ]:
        with pytest.raises(NpvaError, match=message):
            apply_overrides(ExperimentConfig(), [bad])


def test_the_full_preset_is_the_published_configuration():
    assert preset_config("full") == ExperimentConfig()
    assert yaml.safe_load(yaml.safe_dump(dataclasses.asdict(preset_config("tiny"))))  # plain data


def _flat_template(config: ExperimentConfig) -> UVTemplate:
    size = config.model.posmap_size
    return UVTemplate.from_coverage(torch.zeros(3, size, size), 1.0, torch.ones(size, size))


def _no_mouth(config: ExperimentConfig) -> torch.Tensor:
    return torch.zeros(config.model.posmap_size, config.model.posmap_size, dtype=torch.bool)


@pytest.mark.parametrize(
    ("mode", "width", "residual", "lookup", "tracked"),
    [
        ("off", 8, False, False, False),
        ("features", 11, False, False, False),
        ("corrected", 11, True, False, False),
        ("lookup", 11, True, True, False),
        ("ray", 11, True, True, True),
    ],
)
def test_the_texture_mode_decides_the_decoder_and_the_inputs(mode, width, residual, lookup, tracked):
    config = apply_overrides(preset_config("tiny"), [f"model.texture={mode}"])
    avatar = Avatar(config.model, config.render, _flat_template(config), _no_mouth(config), "black")
    assert avatar.decoder.feature_dim == width and avatar.decoder.colour_residual == residual
    assert avatar.inputs.full_texture == lookup and avatar.inputs.tracked_mesh == tracked
    with pytest.raises(
        ConfigError, match="ModelConfig.texture must be one of off, features, corrected, lookup, ray"
    ):
        Avatar(replace(config.model, texture="on"), config.render, _flat_template(config), _no_mouth(config))


def test_the_template_follows_a_loaded_position_map_std():
    config = preset_config("tiny")
    size = config.model.posmap_size
    avatar = Avatar(config.model, config.render, _flat_template(config), _no_mouth(config), "black")
    other = UVTemplate.from_coverage(torch.zeros(3, size, size), 2.5, torch.ones(size, size))
    trained = Avatar(config.model, config.render, other, _no_mouth(config), "black")
    assert avatar.template.std == 1.0
    avatar.load_state_dict(trained.state_dict())
    assert avatar.template.std == 2.5  # what rendering reads, without reading the buffer per frame


def test_the_template_keeps_the_point_texels_of_its_coverage():
    config = preset_config("tiny")
    size, points = config.model.posmap_size, config.model.point_map_size
    coverage = torch.ones(size, size, dtype=torch.bool)
    coverage[: size // 2] = False
    template = UVTemplate.from_coverage(torch.zeros(3, size, size), 1.0, coverage)
    avatar = Avatar(config.model, config.render, template, _no_mouth(config), "black")
    # Found once, not per frame (a search of the coverage on a GPU makes the host wait).
    texels = avatar.template.point_texels[points]
    assert torch.equal(texels, point_texels(coverage, points))
    assert len(texels) == points * points // 2


def test_retired_settings_are_refused_on_the_command_line_and_read_from_older_runs():
    config = preset_config("tiny")
    with pytest.raises(NpvaError, match="render.decoder.feature_dim' is no longer a setting: it is derived"):
        apply_overrides(config, ["render.decoder.feature_dim=11"])
    with pytest.raises(
        NpvaError, match="render.texture_lookup' is no longer a setting: it is a mode of model"
    ):
        apply_overrides(config, ["render.texture_lookup=true"])
    with pytest.raises(NpvaError, match="model.tracked_uv_size' is no longer a setting: it is replaced"):
        apply_overrides(config, ["model.tracked_uv_size=256"])
    old = {
        "render": {"decoder": {"feature_dim": 11}},
        "data": {"texture_size": 64},
        "model": {"tracked_uv_size": 256},
    }
    assert merge_settings(config, old) == config  # derived or replaced now: dropped
    switches = {
        "model": {"texture_features": True},
        "render": {"texture_lookup": False, "decoder": {"colour_residual": True}},
    }
    assert merge_settings(config, switches).model.texture == "corrected"
    switches["render"]["texture_lookup"] = True
    assert merge_settings(config, switches).model.texture == "lookup"
    switches = {"model": {"texture_features": False}, "render": {"texture_lookup": False}}
    assert merge_settings(config, switches) == config


def test_mouth_points_term_and_texture_lookup_train_and_evaluate(tiny_subject, gendir, tmp_path):
    settings = [
        "model.texture=lookup",
        "train.epochs=1",
        "train.val_every=0",
    ]

    def first_step(weight: float, name: str):
        config = build_config("tiny", overrides=[*settings, f"loss.mouth_points_weight={weight}"])
        result = train(tiny_subject, tmp_path / name, config, gendir=gendir)
        return result.log[0], result

    # The same first step, with the term weighted next to nothing and then 1: the total the optimizer
    # minimizes grows by the term (the mouth's points' mean L1 distance to the tracked surface, mm).
    faint, _ = first_step(1e-9, "faint")
    full, result = first_step(1.0, "full")
    assert faint["mouth_points"] == pytest.approx(full["mouth_points"]) and full["mouth_points"] > 0.1
    assert full["loss"] - faint["loss"] == pytest.approx(full["mouth_points"], rel=1e-4)
    assert full["grad_norm"] != faint["grad_norm"]
    assert load_avatar(result.checkpoint)[0].inputs.full_texture
    # The evaluation commands give such an avatar the textures it looks its colours up in.
    frames = read_frame_list(SubjectLayout(tiny_subject).split_list("test"))[:2]
    frame_list = tmp_path / "frames.txt"
    write_frame_list(frame_list, frames)
    common = [str(result.checkpoint), "--img-list", str(frame_list), "--subject", str(tiny_subject)]
    common += ["--gendir", str(gendir), "--no-progress"]
    assert main(["render", *common, "--cameras", "400029", "--preview", "--out", str(tmp_path / "r")]) == 0
    assert main(["metrics", *common, "--cameras", "400029", "--out", str(tmp_path / "m")]) == 0
    assert main(["video", *common, "--out", str(tmp_path / "v.mp4")]) == 0
    assert (tmp_path / "v.mp4").stat().st_size > 0


# ---- data order and backgrounds -------------------------------------------------------------------


def _image_order(num, rank, world, seed, start, stop, per_step=1):
    """The sample indices of steps [start, stop), one list per step."""
    return list(StepOrder(num, rank, world, seed, start, stop, per_step))


def test_step_order_shards_each_pass_and_resumes_mid_way():
    num, world = 7, 3
    orders = [[i for (i,) in _image_order(num, rank, world, 5, 0, 6)] for rank in range(world)]
    first_pass = sorted(i for order in orders for i in order[:3])
    assert set(first_pass) == set(range(num)) and len(first_pass) == 9  # padded by 2 repeats
    assert orders[0][3:] != orders[0][:3]  # the second pass is reshuffled
    assert [i for (i,) in _image_order(num, 1, world, 5, 4, 6)] == orders[1][4:]
    assert [i for (i,) in _image_order(num, 1, world, 6, 0, 6)] != orders[1]

    # Two images a step take the same order, two at a time, and resume mid-way as well.
    pairs = _image_order(num, 1, world, 5, 0, 3, per_step=2)
    assert pairs == [orders[1][0:2], orders[1][2:4], orders[1][4:6]]
    assert _image_order(num, 1, world, 5, 1, 3, per_step=2) == pairs[1:]


@pytest.mark.parametrize(
    "device, graphs",
    [
        ("cpu", False),
        pytest.param("cuda", False, marks=[pytest.mark.gpu, needs_cuda]),
        pytest.param("cuda", True, marks=[pytest.mark.gpu, needs_cuda]),
    ],
)
def test_a_step_of_two_images_averages_their_gradients(tiny_subject, gendir, tmp_path, device, graphs):
    # Image j of step s draws its rays and latent sample as slot s * K + j: the two images of step 0
    # with K = 2 are those of steps 0 and 1 with one image a step, both from the initial parameters.
    # On CUDA in float32 without TF32, whose rounding of slightly different sums (atomics) would differ
    # by 1e-3; with the networks op by op and replaying their graphs (train.cuda_graphs).
    settings = [
        "train.steps_per_epoch=10",
        "train.val_every=0",
        f"train.device={device}",
        "train.precision=fp32",
        f"train.cuda_graphs={str(graphs).lower()}",
    ]

    def trainer(name, per_step):
        config = apply_overrides(preset_config("tiny"), [*settings, f"train.images_per_step={per_step}"])
        return Trainer(
            tiny_subject, tmp_path / name, config, gendir, DistributedContext(device=torch.device(device))
        )

    def gradients(trainer, samples):
        scalars = trainer.train_step(samples)
        grads = {name: p.grad.clone() for name, p in trainer.avatar.named_parameters() if p.grad is not None}
        return grads, scalars

    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        paired = trainer("paired", 2)
        first, second = paired.dataset[0], paired.dataset[1]
        averaged, both = gradients(paired, [first, second])
        alone = trainer("first", 1)
        of_first, one = gradients(alone, [first])
        alone = trainer("second", 1)
        alone.step = 1
        of_second, other = gradients(alone, [second])
    assert both["rays"] == one["rays"] + other["rays"]
    assert both["loss"] == pytest.approx((one["loss"] + other["loss"]) / 2, rel=1e-5)
    assert averaged.keys() == of_first.keys() == of_second.keys() and len(averaged) > 10
    for name, grad in averaged.items():
        expected = (of_first[name] + of_second[name]) / 2
        scale = expected.abs().max()
        worst = float((grad - expected).abs().max() / scale)
        assert worst < (1e-6 if device == "cpu" else 1e-4), f"{name}: {worst:.2e} of the largest gradient"
    # Each image's error map took its own rays' errors.
    counts = paired.gep.error_count.sum(dim=(1, 2))
    assert counts[0] > 0 and counts[1] > 0 and counts[2:].sum() == 0


def test_two_images_a_step_resume_and_overlap_exactly(tiny_subject, gendir, tmp_path):
    settings = ["train.images_per_step=2", "train.epochs=6", "gep.error_start=2", "gep.patch_start=4"]
    config = apply_overrides(preset_config("tiny"), [*settings, "train.val_every=0"])
    straight = train(tiny_subject, tmp_path / "straight", config, gendir=gendir)
    assert straight.step == 6

    run_dir = tmp_path / "resumed"
    common = [str(tiny_subject), "--out", str(run_dir), "--gendir", str(gendir), "--preset", "tiny"]
    overrides = [item for setting in settings for item in ("--set", setting)]
    one_at_a_time = ["--set", "train.overlap_steps=false", "--set", "train.val_every=0"]
    assert main(["train", *common, *overrides, *one_at_a_time, "--set", "train.stop_after=3"]) == 0
    assert main(["train", *common, *overrides, *one_at_a_time]) == 0
    resumed = ckpt.load_checkpoint(ckpt.list_checkpoints(run_dir)[-1])
    reference = ckpt.load_checkpoint(straight.checkpoint)
    assert resumed["step"] == reference["step"] == 6
    for name, tensor in reference["model"].items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(resumed["model"][name], tensor), name
    for name in ("error_map", "error_count"):
        assert torch.equal(resumed["gep"][name], reference["gep"][name]), name
    # 6 steps of 2 images: 12 slots of the first pass, so 12 different images (all, where there are fewer)
    assert int((reference["gep"]["error_count"].sum(dim=(1, 2)) > 0).sum()) == min(
        12, len(reference["data"]["keys"])
    )


def _camera_looking_away(name: str):
    """A 12x16 camera 5 m in front of the head, facing away from it."""
    K = np.array([[40.0, 0, 8], [0, 40, 6], [0, 0, 1]])
    return look_at(
        name, np.array([0, 0, 5000.0]), np.array([0, 0, 10000.0]), np.array([0, 1.0, 0]), K, 12, 16
    )


def test_learned_background_per_camera_and_mean_for_unknown_ones():
    background = CameraBackground(["a", "b"], torch.tensor([[0.2, 0.2, 0.2], [0.6, 0.4, 0.2]]))
    assert torch.allclose(background("b"), torch.tensor([0.6, 0.4, 0.2]))
    assert torch.allclose(background("unseen"), torch.tensor([0.4, 0.3, 0.2]))
    with pytest.raises(ValueError, match="cameras"):
        CameraBackground(["a", "c"]).load_state_dict(background.state_dict())


def test_missed_rays_show_the_background_and_mask_mode_compares_inside_only(gendir, tiny_subject):
    config = preset_config("tiny")
    avatar = Avatar.from_gendir(gendir, config.model, config.render, "learned", ["far"])
    with torch.no_grad():
        avatar.background.colours.copy_(torch.tensor([[0.1, 0.5, 0.9]]))
    prepared = PreparedSubject(tiny_subject, gendir)
    sample = AvatarDataset(
        prepared, [("E001_Neutral_Eyes_Open", "000003")], ["400029"], config.data, avatar.inputs
    )[0]
    image, out = avatar.render_image(sample.drive, _camera_looking_away("far"))
    assert out.rays.opacity.max() == 0
    assert torch.allclose(image, torch.tensor([0.1, 0.5, 0.9]).expand_as(image))
    black = Avatar.from_gendir(gendir, config.model, config.render, "black")
    assert black.background is None
    assert black.render_image(sample.drive, _camera_looking_away("far"))[0].abs().max() == 0

    masking = Avatar.from_gendir(gendir, config.model, config.render, "mask").eval()
    with torch.no_grad():
        out = masking.render(sample.drive, sample.camera)
    colour = out.rays.colour
    masked, target = masking.compared_colours(out, sample.targets)
    inside = sample.targets.mask.reshape(-1)
    assert inside.any() and (~inside).any()
    assert masked[~inside].abs().max() == 0 and target[~inside].abs().max() == 0
    assert torch.equal(masked[inside], colour[inside])
    unmasked, _ = black.compared_colours(out, sample.targets)
    assert torch.equal(unmasked, colour)


@pytest.mark.gpu
@needs_cuda
def test_a_few_bf16_steps_on_cuda(tiny_subject, gendir, tmp_path):
    config = apply_overrides(
        preset_config("tiny"),
        ["train.epochs=35", "train.device=cuda", "train.precision=bf16"],
    )
    result = train(tiny_subject, tmp_path / "run", config, gendir=gendir)
    assert result.finished and all(torch.isfinite(torch.tensor(r["loss"])) for r in result.log)
    assert result.validation[-1].psnr_image > result.validation[0].psnr_image


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("autotune", [False, True])
def test_cudnn_autotune_setting_decides_cudnn_benchmark(tiny_subject, gendir, tmp_path, autotune):
    config = apply_overrides(
        preset_config("tiny"),
        ["train.epochs=1", "train.device=cuda", f"train.cudnn_autotune={str(autotune).lower()}"],
    )
    train(tiny_subject, tmp_path / "run", config, gendir=gendir)
    assert torch.backends.cudnn.benchmark is autotune


def test_settings_check_refuses_steps_of_no_images():
    with pytest.raises(NpvaError, match="train.images_per_step must be at least 1, got 0"):
        check_settings(apply_overrides(preset_config("tiny"), ["train.images_per_step=0"]))


def test_settings_check_takes_the_machine_chosen_workers_and_refuses_negative_ones():
    check_settings(preset_config("full"))  # train.workers None: chosen by the machine
    with pytest.raises(NpvaError, match="train.workers must be at least 0"):
        check_settings(apply_overrides(preset_config("full"), ["train.workers=-1"]))


def test_loader_workers_default_leaves_a_core_per_training_process_on_cuda():
    assert loader_workers(3, "cuda", world_size=1, cores=16) == 3  # asked for: kept
    assert loader_workers(None, "cpu", world_size=1, cores=16) == 2
    assert loader_workers(None, "cuda", world_size=1, cores=16) == 6
    assert loader_workers(None, "cuda", world_size=4, cores=16) == 3
    assert loader_workers(None, "cuda", world_size=2, cores=2) == 0


# ---- colour calibration per camera ---------------------------------------------------------------


def test_camera_colour_learns_each_cameras_gain_relative_to_the_average_camera():
    calibration = CameraColour(["dim", "bright"])
    gain, bias = calibration("dim")
    assert torch.equal(gain, torch.ones(3)) and torch.equal(bias, torch.zeros(3))  # starts neutral
    colour = torch.rand(64, 3, generator=torch.Generator().manual_seed(0))
    opacity = torch.ones(64)
    optimizer = torch.optim.Adam(calibration.parameters(), lr=0.05)
    for _ in range(300):  # camera "bright" sees the avatar 1.25 / 0.8 times as bright as camera "dim"
        optimizer.zero_grad()
        loss = sum(
            ((calibrated(colour, opacity, None, *calibration(name)) - factor * colour) ** 2).mean()
            for name, factor in (("dim", 0.8), ("bright", 1.25))
        )
        loss.backward()
        optimizer.step()
    (dim, dim_bias), (bright, _) = calibration("dim"), calibration("bright")
    torch.testing.assert_close(bright / dim, torch.full((3,), 1.25 / 0.8), atol=0.02, rtol=0)
    torch.testing.assert_close(dim * bright, torch.ones(3), atol=1e-5, rtol=0)  # normalized: mean log 0
    assert dim_bias.abs().max() < 0.02
    gain, bias = calibration("unseen")
    assert torch.equal(gain, torch.ones(3)) and torch.equal(bias, torch.zeros(3))
    # Rays that reach no point keep the camera's background whatever the calibration.
    background = torch.tensor([0.1, 0.5, 0.9])
    empty = calibrated(background.expand(5, 3), torch.zeros(5), background, bright, dim_bias)
    torch.testing.assert_close(empty, background.expand(5, 3))


def test_camera_colour_trains_and_is_restored_from_the_checkpoint(tiny_subject, gendir, tmp_path):
    config = build_config(
        "tiny", overrides=["train.camera_colour=true", "train.epochs=1", "train.val_every=0"]
    )
    result = train(tiny_subject, tmp_path / "run", config, gendir=gendir)
    avatar, saved = load_avatar(result.checkpoint)
    assert saved.train.camera_colour and avatar.camera_colour is not None
    assert avatar.camera_colour.log_gains.abs().max() > 0  # the calibrations moved from the start
    assert avatar.camera_colour.camera_names == avatar.background.camera_names


def test_the_texture_mode_ray_trains_and_its_checkpoint_renders_from_the_tracked_mesh(
    tiny_subject, gendir, tmp_path
):
    overrides = ["model.texture=ray", "train.epochs=1", "train.val_every=0"]
    result = train(tiny_subject, tmp_path / "run", build_config("tiny", overrides=overrides), gendir=gendir)
    avatar, saved = load_avatar(result.checkpoint)
    assert saved.model.texture == "ray" and avatar.inputs.tracked_mesh
    subject = PreparedSubject(tiny_subject, gendir)
    seq, frame = read_frame_list(SubjectLayout(tiny_subject).split_list("test"))[0]
    drive = subject.drive(seq, frame, avatar.inputs)
    mesh = read_obj(SubjectLayout(tiny_subject).mesh_obj(seq, frame))
    assert drive.tracked_mesh.verts.shape == (len(mesh.verts), 3)
    camera = subject.camera("400029")
    image, out = avatar.render_image(drive, camera)
    hits = torch.isfinite(out.scene.ray_uv).all(-1)
    assert hits.float().mean() > 0.1 and torch.isfinite(image).all()
