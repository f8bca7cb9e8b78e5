from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_subject(tmp_path_factory) -> Path:
    """The tiny synthetic subject, written once per test process."""
    from npva.synth import write_subject

    out = tmp_path_factory.mktemp("synth") / "tiny"
    write_subject(out, preset="tiny", seed=0)
    return out
