"""npva demo: the whole pipeline on the tiny synthetic subject, its table and files, and a re-run."""

from __future__ import annotations

import importlib.util
import json

from npva.cli import main
from npva.io.multiface import read_frame_list, read_image


def test_tiny_demo_end_to_end_then_continued(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--preset", "tiny", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "avatar (npva)" in printed and "tracked mesh, avg tex" in printed
    assert "mouth region" in printed and "total" in printed
    # The tiny preset trains on every camera: the table says its test camera was seen in training.
    assert (
        "protocol: held-out frames (novel expressions, a novel sentence) from cameras 400029, which"
        in printed
    )
    assert "training also saw" in printed

    state = json.loads((out / "demo.json").read_text())
    assert set(state["seconds"]) == {"synth", "preprocess", "train", "metrics", "render", "video"}
    for subject in ("avatar", "baseline"):
        for region in ("image", "mask", "mouth"):
            scores = state["summary"][subject][region]
            assert 5 < scores["psnr"] < 60 and 0 < scores["ssim"] <= 1
    run = out / "run"
    assert (run / "metrics" / "standard" / "metrics.csv").is_file()
    compares = [line.split(": ", 1)[1] for line in printed.splitlines() if line.startswith("image: ")]
    assert compares and all(read_image(path).shape[1] == 2 * 42 for path in compares)  # render | photo

    if importlib.util.find_spec("av") is not None:  # PyAV (the video extra): the video was made
        import av

        held_out = read_frame_list(out / "subject" / "splits" / "test_list.txt")
        with av.open(str(run / "video" / "held_out_orbit.mp4")) as container:
            assert sum(1 for _ in container.decode(video=0)) == len(held_out)

    # Again: the synthetic subject is kept, training resumes at its end, the evaluation runs again.
    assert main(["demo", "--preset", "tiny", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "synth: done before, kept" in printed
    assert "training finished at step 35 of 35 (resumed at step 35" in printed


def test_demo_refuses_a_directory_of_another_preset(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo.json").write_text(json.dumps({"preset": "demo", "seed": 0}))
    assert main(["demo", "--preset", "tiny", "--out", str(out)]) == 3
    assert "demo.json" in capsys.readouterr().err
