"""npva view: the viewer's cameras and pictures, and the viewer itself in headless Chromium."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from npva.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-unsafe-swiftshader",  # WebGL without a GPU
    "--use-angle=swiftshader",
    "--window-size=1200,900",
    "--remote-debugging-port=0",
)
WAIT_S = 60.0
DRAW_S = 20.0  # the longest wait for a picture to be drawn after its text


@pytest.fixture(scope="module")
def ctx(tiny_checkpoint):
    from npva.eval.loading import open_checkpoint

    return open_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def subject(ctx):
    from npva.view import open_subject

    return open_subject(ctx)


def test_view_camera_of_a_capture_camera_is_that_camera(subject):
    from npva.view.scene import scene_point, view_camera

    capture = subject.cameras[subject.default_camera]
    fov = 2 * np.arctan(0.5 * capture.height / capture.K[1, 1])
    camera = view_camera(
        subject, scene_point(subject, capture.centre), capture.R.T, fov, capture.height, capture.width
    )
    np.testing.assert_allclose(camera.R, capture.R, atol=1e-9)
    np.testing.assert_allclose(camera.centre, capture.centre, atol=1e-6)
    assert camera.K[1, 1] == pytest.approx(capture.K[1, 1])
    assert subject.capture_name(camera) == capture.name
    assert subject.nearest_camera(camera) == capture.name


def test_photo_in_view_is_the_photo_from_its_own_camera(subject):
    from npva.view.scene import photo_in_view

    seq, frames = next(iter(subject.sequences.items()))
    capture = subject.cameras[subject.default_camera]
    photo = subject.photo(seq, frames[0], capture.name)
    assert photo is not None and photo.shape == (capture.height, capture.width, 3)
    np.testing.assert_array_equal(photo_in_view(photo, capture, capture), photo)


def test_every_mode_draws_the_avatar(subject):
    from npva.view.render import IMAGE_MODES, neural_points, render_image

    seq, frames = next(iter(subject.sequences.items()))
    capture = subject.cameras[subject.default_camera]
    camera = capture.resized(capture.height // 2, capture.width // 2)  # the pictures' cost is per pixel
    pictures = {mode: render_image(subject, seq, frames[0], camera, mode) for mode in IMAGE_MODES}
    for mode, picture in pictures.items():
        assert picture.shape == (camera.height, camera.width, 3) and picture.dtype == np.uint8, mode
        assert picture.std() > 5, f"{mode}: a uniform picture"
    for a, b in itertools.combinations(IMAGE_MODES, 2):
        assert np.abs(pictures[a].astype(int) - pictures[b]).mean() > 5, (a, b)
    for colour_by in ("feature", "displacement"):
        cloud = neural_points(subject, seq, frames[0], camera, colour_by)
        assert cloud.positions.shape == cloud.colours.shape and len(cloud.positions) > 100
        assert cloud.colours.std(0).min() > 1, f"points by {colour_by}: one colour"


def test_turntable_swings_around_the_head(subject, tmp_path):
    from npva.eval.video import pyav
    from npva.view.export import turntable
    from npva.view.render import render_image

    seq, frames = next(iter(subject.sequences.items()))
    camera = subject.cameras[subject.default_camera]
    seen = []

    def picture(view):
        seen.append(view.centre)
        return render_image(subject, seq, frames[0], view, "colour")

    path = turntable(camera, subject.centre, picture, tmp_path / "turn.mp4", frames=4)
    with pyav().open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 4
    assert decoded[0].shape[:2] == (camera.height + camera.height % 2, camera.width + camera.width % 2)
    np.testing.assert_allclose(seen[0], camera.centre, atol=1e-6)
    radius = [np.linalg.norm(c - subject.centre) for c in seen]
    np.testing.assert_allclose(radius, radius[0], rtol=1e-6)
    assert np.abs(decoded[1].astype(int) - decoded[0]).mean() > 1, "the head did not turn"


def write_tone(path: Path, seconds: float, rate: int = 8000) -> np.ndarray:
    """A mono 16-bit WAV of a ramp of samples (each sample tells its own position); returns the samples."""
    import wave

    samples = (np.arange(round(seconds * rate)) % 30000).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return samples


def read_wav(data: bytes) -> tuple[int, np.ndarray]:
    import io
    import wave

    with wave.open(io.BytesIO(data), "rb") as source:
        return source.getframerate(), np.frombuffer(source.readframes(source.getnframes()), "<i2")


def test_sound_is_cut_at_the_frame_where_playing_starts(tmp_path):
    from npva.errors import FormatError
    from npva.view.audio import wav_from

    samples = write_tone(tmp_path / "seq.wav", 2.0)
    rate, cut = read_wav(wav_from(tmp_path / "seq.wav", 0.5))
    assert rate == 8000
    np.testing.assert_array_equal(cut, samples[4000:])
    assert len(read_wav(wav_from(tmp_path / "seq.wav", 5.0))[1]) == 0  # past the end: silence
    (tmp_path / "bad.wav").write_bytes(b"RIFF0000WAVEfmt garbage")
    with pytest.raises(FormatError, match="bad.wav"):
        wav_from(tmp_path / "bad.wav", 0.0)


def test_frame_seconds_follow_the_frame_numbers(subject):
    seq, frames = next(iter(subject.sequences.items()))
    assert subject.frame_seconds(seq, frames[0]) == 0.0
    assert subject.frame_seconds(seq, frames[1]) == pytest.approx((int(frames[1]) - int(frames[0])) / 30)


def test_playing_a_sequence_with_sound_plays_it_from_the_shown_frame(subject, tmp_path, monkeypatch):
    from npva.view import Viewer

    seq, frames = next(iter(subject.sequences.items()))
    samples = write_tone(tmp_path / f"{seq}.wav", subject.frame_seconds(seq, frames[-1]) + 0.5)
    monkeypatch.setattr(subject, "audio", lambda name: tmp_path / f"{name}.wav" if name == seq else None)
    viewer = Viewer(subject, tmp_path / "exports", port=0)
    try:
        assert f"{seq}.wav" in viewer.sound.content and viewer.player.content == ""
        viewer.frame.value = 1
        viewer.play.value = True
        html = viewer.player.content
        assert html.startswith("<audio autoplay")
        data = base64.b64decode(html.split("base64,")[1].split('"')[0])
        start = round(subject.frame_seconds(seq, frames[1]) * 8000)
        np.testing.assert_array_equal(read_wav(data)[1], samples[start:])

        viewer.start()  # the timeline now follows the sound's clock: the last frame, then the first again
        wait_for(lambda: viewer.current == (seq, frames[-1]), "the timeline to reach the last frame")
        wait_for(lambda: viewer.current == (seq, frames[0]), "the timeline to start again")
        assert viewer.player.content.startswith("<audio autoplay") and viewer.player.content != html

        viewer.play.value = False
        assert viewer.player.content == ""
    finally:
        viewer.close()


def test_view_without_viser_names_the_package(tiny_checkpoint, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "viser", None)  # import viser raises ImportError
    assert main(["view", str(tiny_checkpoint)]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "viser" in err and "npva[view]" in err


def test_train_with_the_viewer(tiny_subject, gendir, tmp_path, capsys):
    import torch

    from npva.train import build_config, load_checkpoint, train
    from npva.view import LiveView

    config = build_config("tiny", overrides=["train.epochs=2", "train.val_every=0"])
    live = LiveView(tiny_subject, gendir, tmp_path / "run", config, every=1, port=0)
    try:
        result = train(tiny_subject, tmp_path / "run", config, gendir=gendir, on_step=live)
        assert "npva train: viewer at http://127.0.0.1:" in capsys.readouterr().out
        live.viewer.before_render()  # what the viewer does before its next picture
        shown = live.viewer.subject.ctx
        assert shown.step == result.step == 2
        trained = load_checkpoint(result.checkpoint)["model"]
        for name, value in shown.avatar.state_dict().items():
            if torch.is_tensor(value):
                torch.testing.assert_close(value, trained[name], msg=name)
    finally:
        live.close()


# ---------------------------------------------------------------------------------------------------
# The viewer in a browser


class Browser:
    """Headless Chromium driven through its DevTools protocol (one page)."""

    def __init__(self, profile: Path):
        from websockets.sync.client import connect

        self.process = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        wait_for(port_file.exists, "Chromium's DevTools port")
        port = port_file.read_text().split()[0]
        targets = wait_for(lambda: self._targets(port), "Chromium's DevTools to answer")
        page = next(t for t in targets if t["type"] == "page")
        self.socket = connect(page["webSocketDebuggerUrl"], max_size=2**28)
        self._ids = itertools.count(1)

    @staticmethod
    def _targets(port: str) -> list[dict] | None:
        try:
            return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10).read())
        except OSError:  # not listening yet
            return None

    def call(self, method: str, **params):
        message_id = next(self._ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.socket.recv(timeout=WAIT_S))
            if reply.get("id") == message_id:
                assert "error" not in reply, reply
                return reply["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def click(self, element: str) -> None:
        """A mouse click at the centre of the element the JavaScript expression `element` finds."""
        centre = self.evaluate(
            f"(() => {{ const e = {element}; if (!e) return null; const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        assert centre is not None, f"nothing on the page matches {element}"
        for kind in ("mousePressed", "mouseReleased"):
            self.call(
                "Input.dispatchMouseEvent", type=kind, x=centre[0], y=centre[1], button="left", clickCount=1
            )

    def screenshot(self) -> np.ndarray:
        """uint8 (H, W, 3) RGB of the page."""
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=10)


def wait_for(condition, what: str, seconds: float = WAIT_S):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"waited {seconds:.0f} s for {what}")


def options(label: str) -> str:
    """JavaScript: the input showing `label`'s current value is found by its value (the panel's
    dropdowns show their value in an input)."""
    return f"Array.from(document.querySelectorAll('input')).find(i => i.value === '{label}')"


def button(text: str) -> str:
    """JavaScript: the panel's button showing `text`."""
    return f"Array.from(document.querySelectorAll('button')).find(b => b.textContent === '{text}')"


def shown(browser: Browser, frame: str, mode: str, drawn) -> np.ndarray:
    """The screenshot once the viewer says it shows `frame` in `mode` at full size (the viewport's
    centre, where the head is and the panel is not), taken again until `drawn(crop)` holds (for up to
    DRAW_S): software WebGL on a loaded machine may draw the picture seconds after its text."""
    wait_for(
        lambda: (text := browser.text()) and f"{frame}, {mode}:" in text and "refining" not in text,
        f"the viewer to show frame {frame} in {mode}",
    )

    def drawn_crop() -> tuple[np.ndarray] | None:
        shot = browser.screenshot()
        height, width = shot.shape[:2]
        crop = shot[height // 4 : 3 * height // 4, width // 4 : width // 2 + width // 8]
        return (crop,) if drawn(crop) else None

    return wait_for(drawn_crop, f"frame {frame} in {mode} to be drawn", DRAW_S)[0]


def differs_from(before: np.ndarray, by: float):
    """A test of a crop: its mean absolute difference from `before` is above `by`."""
    return lambda crop: np.abs(crop.astype(int) - before).mean() > by


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (make test installs it with apt-get when it can)")
def test_view_in_a_browser(tiny_checkpoint, subject, tmp_path):
    seq, frames = next(iter(subject.sequences.items()))
    sound = subject.ctx.layout.audio(seq)  # the subject's optional audio/<seq>.wav, 1 s past the last frame
    write_tone(sound, subject.frame_seconds(seq, frames[-1]) + 1.0)
    log = tmp_path / "view.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "npva",
                "view",
                str(tiny_checkpoint),
                "--port",
                "0",
                "--out",
                str(tmp_path / "exports"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    browser = None
    try:

        def started() -> str | None:
            assert server.poll() is None, f"npva view ended: {log.read_text()}"
            lines = [line for line in log.read_text().splitlines() if line.startswith("npva view:")]
            return lines[0].split()[2] if lines else None

        url = wait_for(started, "npva view to start")
        profile = tmp_path / "chromium"
        profile.mkdir()
        browser = Browser(profile)
        browser.call("Page.navigate", url=url)

        colour = shown(browser, frames[0], "colour", lambda crop: crop.std() > 10)
        assert colour.std() > 10, "a blank canvas"
        assert len(np.unique(colour.reshape(-1, 3), axis=0)) > 50, "a blank canvas"

        browser.click(button("next"))
        next_frame = shown(browser, frames[1], "colour", differs_from(colour, 0.5))
        assert np.abs(next_frame.astype(int) - colour).mean() > 0.5, "the next frame looks the same"

        browser.click(options("colour"))
        browser.click(
            "Array.from(document.querySelectorAll('[role=option]')).find(o => o.textContent === 'depth')"
        )
        depth = shown(browser, frames[1], "depth", differs_from(next_frame, 10))
        assert np.abs(depth.astype(int) - next_frame).mean() > 10, "depth looks like colour"

        browser.click(button("screenshot"))
        path = wait_for(
            lambda: next((tmp_path / "exports").glob("screenshot_*_depth_*.png"), None), "a screenshot"
        )
        camera = subject.cameras[subject.default_camera]
        assert cv2.imread(str(path)).shape[0] == camera.height

        assert f"sound: {sound.name}" in browser.text()
        browser.click(  # play: the panel's one visible checkbox
            "Array.from(document.querySelectorAll('input[type=checkbox]'))"
            ".find(e => e.getBoundingClientRect().width > 0)"
        )
        duration = wait_for(
            lambda: browser.evaluate(
                "(a => a && a.duration > 0 && !a.paused ? a.duration : 0)(document.querySelector('audio'))"
            ),
            "the page to play the sound",
        )
        # the sound from the frame shown (the timeline may have come round to the first one again)
        length = 1.0 + subject.frame_seconds(seq, frames[-1])
        starts = [subject.frame_seconds(seq, frame) for frame in frames]
        assert min(abs(duration - (length - start)) for start in starts) < 0.05, duration
    finally:
        sound.unlink(missing_ok=True)
        if browser is not None:
            browser.close()
        server.terminate()
        server.wait(timeout=20)
