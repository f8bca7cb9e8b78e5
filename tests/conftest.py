from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_subject(tmp_path_factory) -> Path:
    """The tiny synthetic subject, written once per test process."""
    from npva.synth import write_subject

    out = tmp_path_factory.mktemp("synth") / "tiny"
    write_subject(out, preset="tiny", seed=0)
    return out


@pytest.fixture(scope="session")
def gendir(tiny_subject: Path, tmp_path_factory) -> Path:
    """The tiny subject preprocessed at the tiny training preset's UV size, once per test process.

    Shared: a test that damages a gendir works on its own copy.
    """
    from npva.config import PreprocessConfig
    from npva.preprocess import preprocess_subject
    from npva.train.presets import preset_config

    uv_size = preset_config("tiny").model.posmap_size
    out = tmp_path_factory.mktemp("prep_tiny") / "gendir"
    summary = preprocess_subject(tiny_subject, PreprocessConfig(uv_size=uv_size), out, progress=False)
    assert not summary.failed, summary
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_subject: Path, gendir: Path, tmp_path_factory) -> Path:
    """A short tiny-preset run (10 steps) for the evaluation commands: its final checkpoint file."""
    from npva.train import build_config, train

    run_dir = tmp_path_factory.mktemp("tiny_eval_run") / "run"
    config = build_config("tiny", overrides=["train.epochs=10", "train.val_every=0"])
    result = train(tiny_subject, run_dir, config, gendir=gendir)
    assert result.checkpoint is not None
    return result.checkpoint
