"""The browser viewer: a viser server whose panel picks the frame, mode and camera, and a render thread.

Each browser (client) has its own free camera (orbit, pan, zoom in the page). One thread renders, for
every client, the picture of its camera whenever the camera, the frame, the mode or the avatar's weights
change, and shows it behind the page's 3-D scene. Progressive: after a change the picture is rendered
at 1/CPU_LEVELS[0] of the chosen height, then, once the camera has stopped, at each finer level in turn
(on CUDA at the full size at once); new weights seen from a stopped camera are drawn at the full size.
Playing renders the coarsest level of each frame and moves on; the timeline plays as fast as that
goes, at most at the capture's 30 frames per second. A sequence with sound (SUBJECT/audio/<seq>.wav)
plays with it: the page plays the sound from the shown frame on and the timeline follows the clock,
skipping the frames it cannot render in time (npva.view.audio).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npva.errors import FormatError, NpvaError
from npva.geometry.camera import Camera
from npva.io.multiface import write_image
from npva.view.audio import player_html, wav_from
from npva.view.export import turntable
from npva.view.render import IMAGE_MODES, MODES, POINT_COLOURS, neural_points, render_image
from npva.view.scene import CAPTURE_FPS, SCENE_SCALE, ViewSubject, photo_in_view, scene_point, view_camera

log = logging.getLogger(__name__)

VISER_REQUIREMENT = "viser>=1.1"  # also the `view` extra: pip install 'npva[view]'
CPU_LEVELS = (4, 2, 1)  # progressive divisors of the picture's height on CPU
CUDA_LEVELS = (1,)
SETTLE_SECONDS = 0.15  # a camera unchanged this long has stopped: refine
PHOTO = ("off", "beside", "blend")
POINT_SIZE_MM = 1.0


def viser_module():
    """The viser module (imported only by the viewer)."""
    try:
        import viser
    except ImportError:
        raise NpvaError(
            f"the viewer needs viser, which is not installed: pip install '{VISER_REQUIREMENT}' "
            "(or npva[view])"
        ) from None
    return viser


@dataclass
class ClientState:
    """What the render thread knows of one browser: its camera's change count and time, and the key and
    level of the last picture shown."""

    camera_changes: int = 0
    camera_changed_at: float = 0.0
    shown_key: tuple | None = None
    shown_level: int = -1


@dataclass
class PlayClock:
    """Playing with sound: the monotonic time and the sequence's seconds when the sound started, each
    frame's seconds, and the index of the frame the clock last showed."""

    started: float
    start_seconds: float
    frame_seconds: list[float]
    index: int

    def frame_now(self) -> int | None:
        """The index of the frame the sound has reached; None once past the sequence's last frame."""
        now = self.start_seconds + time.monotonic() - self.started
        if now >= self.frame_seconds[-1] + 1 / CAPTURE_FPS:
            return None
        return max(bisect.bisect_right(self.frame_seconds, now) - 1, 0)


class Viewer:
    """A viser server showing `subject`'s avatar; `start()` serves it, `close()` stops it.

    out_dir: where screenshots and turntables go. before_render: called by the render thread before
    each picture (the live view of a training loads its newest weights there).
    """

    def __init__(
        self,
        subject: ViewSubject,
        out_dir: Path,
        host: str = "127.0.0.1",
        port: int = 8080,
        before_render: Callable[[], None] | None = None,
    ):
        viser = viser_module()
        self.subject = subject
        self.out_dir = Path(out_dir)
        self.levels = CUDA_LEVELS if subject.ctx.device.type == "cuda" else CPU_LEVELS
        self.before_render = before_render
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self._clients: dict[int, ClientState] = {}
        self._changes = itertools.count(1)
        self._version = 0  # bumped by every change of what all clients see
        self._weights = 0  # bumped by new weights
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._jobs: list[Callable[[], None]] = []
        self._points_key: tuple | None = None
        self._points = None
        self._exports = itertools.count(1)
        self._last_played = 0.0
        self._clock: PlayClock | None = None
        self._sound_lock = threading.Lock()  # the panel's thread and the render thread both start sounds
        self._sound_starts = itertools.count(1)
        self._build_panel()
        self._set_initial_camera()
        self.server.on_client_connect(self._connect)
        self.server.on_client_disconnect(lambda client: self._clients.pop(client.client_id, None))
        self._thread = threading.Thread(target=self._loop, name="npva-view", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.server.get_host()}:{self.server.get_port()}"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        self.server.stop()

    def changed(self, weights: bool = False) -> None:
        """Everything shown is out of date: the frame or the mode changed, or (weights) the avatar's
        weights. New weights seen from a settled camera are drawn at the full size at once."""
        if weights:
            self._weights = next(self._changes)
        else:
            self._version = next(self._changes)
        self._wake.set()

    # ---- the panel ---------------------------------------------------------------------------------

    def _build_panel(self) -> None:
        gui = self.server.gui
        subject = self.subject
        seq = next(iter(subject.sequences))
        with gui.add_folder("Timeline"):
            self.sequence = gui.add_dropdown("sequence", tuple(subject.sequences), initial_value=seq)
            self.frame = gui.add_slider("frame", 0, max(len(subject.sequences[seq]) - 1, 1), 1, 0)
            self.step = gui.add_button_group("step", ("previous", "next"))
            self.play = gui.add_checkbox("play", False)
            self.sound = gui.add_markdown("")
            self.player = gui.add_html("")
        with gui.add_folder("Display"):
            self.mode = gui.add_dropdown("mode", MODES, initial_value="colour")
            self.point_colour = gui.add_dropdown("points by", POINT_COLOURS, initial_value="feature")
            self.photo = gui.add_dropdown("photo", PHOTO, initial_value="off")
            height = subject.cameras[subject.default_camera].height
            self.height = gui.add_number("height", height, min=16, max=4096, step=1)
            self.stats = gui.add_markdown("")
            self.photo_panel = gui.add_image(np.zeros((2, 2, 3), np.uint8), label="photo", visible=False)
        with gui.add_folder("Camera"):
            self.capture = gui.add_dropdown(
                "capture camera", tuple(subject.cameras), initial_value=subject.default_camera
            )
            snap = gui.add_button("snap to capture camera")
        with gui.add_folder("Export"):
            screenshot = gui.add_button("screenshot")
            turn = gui.add_button("turntable")
            self.status = gui.add_markdown("")

        self.sequence.on_update(lambda _: self._sequence_changed())
        self.step.on_click(lambda event: self._step_frame(1 if event.target.value == "next" else -1))
        for handle in (self.frame, self.mode, self.point_colour, self.photo, self.height):
            handle.on_update(lambda _: self.changed())
        self.play.on_update(lambda _: self._play_changed())
        snap.on_click(lambda event: self._snap(event.client))
        screenshot.on_click(lambda event: self._queue(lambda: self._screenshot(event.client)))
        turn.on_click(lambda event: self._queue(lambda: self._turntable(event.client)))
        self._play_changed()  # says whether the first sequence has sound

    def _sequence_changed(self) -> None:
        frames = self.subject.sequences[self.sequence.value]
        self.frame.max = max(len(frames) - 1, 1)
        self.frame.value = 0
        self.changed()
        self._play_changed()

    def _play_changed(self) -> None:
        """Start the sound with the timeline when the sequence has one; stop it otherwise."""
        with self._sound_lock:
            self._clock = None
            self.player.content = ""
            sound = self.subject.audio(self.sequence.value)
            self.sound.content = f"sound: {sound.name}, plays with the timeline" if sound is not None else ""
            if self.play.value and sound is not None:
                self._start_sound(sound)
        self._wake.set()

    def _start_sound(self, sound: Path) -> None:
        """Play `sound` from the shown frame on, and let the clock drive the timeline."""
        seq, frame = self.current
        start = self.subject.frame_seconds(seq, frame)
        try:
            wav = wav_from(sound, start)
        except FormatError as exc:  # the timeline plays without it
            self._clock = None
            self.status.content = f"**error:** {exc}"
            return
        self.player.content = player_html(wav, next(self._sound_starts))
        times = [self.subject.frame_seconds(seq, f) for f in self.subject.sequences[seq]]
        self._clock = PlayClock(time.monotonic(), start, times, int(self.frame.value))

    def _follow_clock(self, clock: PlayClock) -> None:
        """Show the frame the sound has reached; at the end, start again from the first frame. A frame
        picked by hand while playing restarts the sound there."""
        with self._sound_lock:
            if clock is not self._clock:  # stopped or restarted meanwhile
                return
            if int(self.frame.value) != clock.index:
                self._start_sound(self.subject.audio(self.sequence.value))
                return
            index = clock.frame_now()
            if index is None:
                self.frame.value = 0
                self._start_sound(self.subject.audio(self.sequence.value))
            elif index != clock.index:
                clock.index = index
                self.frame.value = index

    def _step_frame(self, by: int) -> None:
        self.frame.value = (int(self.frame.value) + by) % len(self.subject.sequences[self.sequence.value])

    @property
    def current(self) -> tuple[str, str]:
        """The (seq, frame) shown."""
        frames = self.subject.sequences[self.sequence.value]
        return self.sequence.value, frames[min(int(self.frame.value), len(frames) - 1)]

    # ---- cameras -----------------------------------------------------------------------------------

    def _set_initial_camera(self) -> None:
        """Every browser opens at the default capture camera, orbiting the head centre."""
        capture = self.subject.cameras[self.subject.default_camera]
        initial = self.server.initial_camera
        initial.position = scene_point(self.subject, capture.centre)
        initial.look_at = np.zeros(3)
        initial.up = self.subject.up
        initial.fov = 2 * np.arctan(0.5 * capture.height / capture.K[1, 1])
        self.server.scene.set_up_direction(self.subject.up)

    def _connect(self, client) -> None:
        state = self._clients.setdefault(client.client_id, ClientState())

        def moved(_) -> None:
            state.camera_changes += 1
            state.camera_changed_at = time.monotonic()
            self._wake.set()

        client.camera.on_update(moved)
        self._wake.set()

    def _snap(self, client) -> None:
        """Put the client's camera where the chosen capture camera is, looking the same way."""
        capture = self.subject.cameras[self.capture.value]
        position = scene_point(self.subject, capture.centre)
        forward = capture.R[2]  # camera z in the world
        distance = np.linalg.norm(capture.centre - self.subject.centre) * SCENE_SCALE
        with client.atomic():
            client.camera.fov = 2 * np.arctan(0.5 * capture.height / capture.K[1, 1])
            client.camera.up_direction = -capture.R[1]
            client.camera.position = position
            client.camera.look_at = position + forward * distance

    def client_camera(self, client, divisor: int = 1) -> Camera:
        """The npva camera of a client's view, at the chosen height / divisor and the page's aspect."""
        height = max(int(self.height.value) // divisor, 8)
        width = max(round(height * client.camera.aspect), 8)
        rotation = viser_module().transforms.SO3(client.camera.wxyz).as_matrix()
        return view_camera(self.subject, client.camera.position, rotation, client.camera.fov, height, width)

    # ---- rendering ---------------------------------------------------------------------------------

    def picture(self, camera: Camera) -> np.ndarray:
        """uint8 (H, W, 3) of the current frame from `camera` in the current image mode, with the
        nearest capture camera's photo blended in when asked."""
        seq, frame = self.current
        image = render_image(self.subject, seq, frame, camera, self.mode.value)
        if self.photo.value == "blend":
            name = self.subject.nearest_camera(camera)
            photo = self.subject.photo(seq, frame, name)
            if photo is not None:
                seen = photo_in_view(photo, self.subject.cameras[name], camera)
                image = ((image.astype(np.uint16) + seen) // 2).astype(np.uint8)
        return image

    def _loop(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(SETTLE_SECONDS / 3)
            self._wake.clear()
            while self._jobs:
                self._jobs.pop(0)()
            playing = bool(self.play.value)
            shown = [self._refresh(client, playing) for client in list(self.server.get_clients().values())]
            clock = self._clock  # the panel's thread may replace it
            if playing and clock is not None:
                self._follow_clock(clock)
            elif playing and shown and all(shown) and time.monotonic() - self._last_played >= 1 / CAPTURE_FPS:
                self._last_played = time.monotonic()
                self._step_frame(1)

    def _refresh(self, client, playing: bool) -> bool:
        """Render the client's next picture if it is out of date or can be refined; True when its
        picture is up to date at some level."""
        state = self._clients.get(client.client_id)
        if state is None or not client.camera.aspect:
            return False
        key = (self._version, state.camera_changes, self._weights)
        if key != state.shown_key:
            settled = state.shown_key is not None and state.shown_key[:2] == key[:2]
            level = len(self.levels) - 1 if settled and state.shown_level + 1 == len(self.levels) else 0
        elif playing or state.shown_level + 1 >= len(self.levels):
            return True
        elif time.monotonic() - state.camera_changed_at < SETTLE_SECONDS:
            self._wake.set()  # look again once the camera has settled
            return True
        else:
            level = state.shown_level + 1
        if self.before_render is not None:
            self.before_render()
        started = time.perf_counter()
        camera = self.client_camera(client, self.levels[level])
        try:
            size = self._show(client, camera)
        except Exception as exc:  # a damaged file, a view without the head: say so, keep serving
            log.exception("npva view: %s %s from the %s view", *self.current, self.mode.value)
            self.status.content = f"**error:** {exc}"
            size = "nothing"
        seconds = time.perf_counter() - started
        state.shown_key, state.shown_level = key, level
        seq, frame = self.current
        final = "" if level + 1 == len(self.levels) else f" (1/{self.levels[level]} size, refining)"
        self.stats.content = f"{seq} {frame}, {self.mode.value}: {1 / seconds:.1f} fps, {size}{final}"
        if level + 1 < len(self.levels):
            self._wake.set()
        return True

    def _show(self, client, camera: Camera) -> str:
        """Show the picture of `camera` to the client (or the point cloud), and the photo panel;
        returns what was shown ("W x H" or "N points")."""
        seq, frame = self.current
        if self.mode.value == "points":
            shown = f"{self._show_points(camera)} points"
            client.scene.set_background_image(None)
        else:
            self._hide_points()
            client.scene.set_background_image(self.picture(camera), format="jpeg", jpeg_quality=90)
            shown = f"{camera.width} x {camera.height}"
        self.photo_panel.visible = self.photo.value == "beside"
        if self.photo.value == "beside":
            name = self.subject.nearest_camera(camera)
            photo = self.subject.photo(seq, frame, name)
            self.photo_panel.label = f"photo: camera {name}" + ("" if photo is not None else " has none")
            if photo is not None:
                self.photo_panel.image = photo
        return shown

    def _show_points(self, camera: Camera) -> int:
        """Show the current frame's neural points (unless shown already); returns their number."""
        key = (self._version, self._weights, *self.current, self.point_colour.value)
        if key == self._points_key:
            return len(self._points.points)
        cloud = neural_points(self.subject, *self.current, camera, self.point_colour.value)
        self._points = self.server.scene.add_point_cloud(
            "/neural_points",
            points=scene_point(self.subject, cloud.positions).astype(np.float32),
            colors=cloud.colours,
            point_size=POINT_SIZE_MM * SCENE_SCALE,
        )
        self._points_key = key
        return len(cloud.positions)

    def _hide_points(self) -> None:
        if self._points is not None:
            self._points.remove()
            self._points, self._points_key = None, None

    # ---- exports -----------------------------------------------------------------------------------

    def _queue(self, job: Callable[[], None]) -> None:
        self._jobs.append(job)
        self._wake.set()

    def _export_name(self, kind: str, suffix: str) -> Path:
        seq, frame = self.current
        return self.out_dir / f"{kind}_{seq}_{frame}_{self.mode.value}_{next(self._exports):03d}{suffix}"

    def _screenshot(self, client) -> None:
        """The client's view at the chosen height as a PNG (the browser's own render for points)."""
        camera = self.client_camera(client)
        path = self._export_name("screenshot", ".png")
        if self.mode.value == "points":
            image = client.get_render(camera.height, camera.width)
        else:
            image = self.picture(camera)
        write_image(path, image)
        self.status.content = f"screenshot: {path}"

    def _turntable(self, client) -> None:
        """A swing around the head from the client's camera, the current frame held, as an MP4."""
        if self.mode.value not in IMAGE_MODES:
            self.status.content = f"turntables show image modes ({', '.join(IMAGE_MODES)})"
            return
        path = self._export_name("turntable", ".mp4")

        def progress(done: int, total: int) -> None:
            self.status.content = f"turntable: frame {done} of {total}"

        try:
            turntable(self.client_camera(client), self.subject.centre, self.picture, path, progress)
        except NpvaError as exc:
            self.status.content = f"**error:** {exc}"
            return
        self.status.content = f"turntable: {path}"


def serve(viewer: Viewer) -> None:
    """Serve until interrupted (Ctrl-C), then stop."""
    viewer.start()
    try:
        while True:
            time.sleep(1.0)
    finally:
        viewer.close()
