"""What a synthetic capture holds: the camera dome, the sequences and their expressions and head
poses, and the presets that size all of it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from npva.errors import NpvaError
from npva.geometry.camera import Camera, look_at
from npva.synth.head import Expression, smoothstep

FULL_HEIGHT, FULL_WIDTH = 2048, 1334
FOCAL_AT_1M = 5600.0  # pixels at full size for a camera 1 m away: the head fills most of the frame
DOME_TARGET = np.array([0.0, -30.0, 10.0])  # face-frame point the cameras aim at (neutral pose)
FRONTAL_CAMERA = "400029"
_OTHER_CAMERAS = (
    "400002 400004 400007 400008 400009 400010 400012 400013 400015 400016 400017 400018 400019 "
    "400023 400026 400027 400028 400030 400031 400037 400039 400041 400042 400048 400049 400050 "
    "400051 400053 400055 400059 400060 400061 400063 400064 400067 400069 400070"
).split()
# (elevation, azimuths) of the rings of the dome in degrees; the frontal camera is the first of ring 0.
_RINGS = (
    (0.0, (0, -15, 15, -30, 30, -48, 48, -66, 66)),
    (17.0, (-8, 8, -24, 24, -40, 40, -58, 58, -75, 75)),
    (-17.0, (-8, 8, -24, 24, -40, 40, -58, 58)),
    (34.0, (0, -20, 20, -42, 42, -62, 62)),
    (-32.0, (-15, 15, -38, 38)),
)
CAMERA_NAMES = (FRONTAL_CAMERA, *_OTHER_CAMERAS)


def _dome_positions() -> dict[str, tuple[float, float]]:
    angles = [(elevation, float(az)) for elevation, azimuths in _RINGS for az in azimuths]
    return dict(zip(CAMERA_NAMES, angles, strict=True))


def view_direction(elevation_deg: float, azimuth_deg: float) -> np.ndarray:
    """(3,) unit vector towards (elevation, azimuth) in degrees: (0, 0) is +z (head-on), positive
    elevation towards +y, positive azimuth towards +x."""
    elevation, azimuth = np.deg2rad(elevation_deg), np.deg2rad(azimuth_deg)
    return np.array(
        [np.sin(azimuth) * np.cos(elevation), np.sin(elevation), np.cos(azimuth) * np.cos(elevation)]
    )


def camera_direction(name: str) -> np.ndarray:
    """(3,) unit vector from the dome's target towards camera `name` (before its small offsets)."""
    return view_direction(*_dome_positions()[name])


def frontal_directions(max_angle_deg: float) -> tuple[tuple[float, float], ...]:
    """(elevation, azimuth) in degrees of the dome cameras within max_angle_deg of head-on."""
    limit = np.cos(np.deg2rad(max_angle_deg))
    return tuple(
        (elevation, azimuth)
        for elevation, azimuth in _dome_positions().values()
        if view_direction(elevation, azimuth)[2] >= limit - 1e-9
    )


def dome_camera(name: str, height: int, width: int) -> Camera:
    """Camera `name` of the fixed dome, with intrinsics for images of (height, width).

    Distances (about 1 m), aim and principal points carry small fixed per-camera offsets, as a
    calibrated rig does."""
    wobble = np.random.default_rng(int(name)).uniform(-1.0, 1.0, size=6)
    distance = 1000.0 + 40.0 * wobble[0]
    direction = view_direction(*_dome_positions()[name])
    target = DOME_TARGET + 4.0 * wobble[1:4]
    focal = FOCAL_AT_1M * distance / 1000.0
    K = np.array(
        [
            [focal, 0.0, FULL_WIDTH / 2 + 8.0 * wobble[4]],
            [0.0, focal, FULL_HEIGHT / 2 + 8.0 * wobble[5]],
            [0.0, 0.0, 1.0],
        ]
    )
    camera = look_at(
        name, target + distance * direction, target, np.array([0.0, 1.0, 0.0]), K, FULL_HEIGHT, FULL_WIDTH
    )
    return camera.resized(height, width)


# -- sequences ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Per-subject variation of how a sequence is performed."""

    onset: float  # start of the expression, in [0, 0.25] of the sequence
    rate: float  # syllables (or gaze sweeps) over the sequence
    phase: float

    @staticmethod
    def sample(rng: np.random.Generator) -> Timing:
        return Timing(onset=rng.uniform(0.0, 0.25), rate=rng.uniform(2.5, 4.0), phase=rng.uniform(0.0, 1.0))


def _ramp(tau: float, timing: Timing) -> float:
    return float(smoothstep(np.asarray(tau), timing.onset, timing.onset + 0.45))


def _neutral(tau: float, timing: Timing) -> Expression:
    wave = np.sin(2 * np.pi * (tau + timing.phase))
    return Expression(gaze_yaw=0.05 * wave, gaze_pitch=0.02 * wave)


def _jaw_open(tau: float, timing: Timing) -> Expression:
    amount = _ramp(tau, timing)
    return Expression(jaw=0.02 + 0.28 * amount, smile=0.25 * amount, brow=0.4 * amount)


def _mouth_stretch(tau: float, timing: Timing) -> Expression:
    """The mouth opened wide with the face held still: the jaw range of the speech-free expressions."""
    amount = _ramp(tau, timing)
    return Expression(jaw=0.02 + 0.3 * amount, smile=0.08 * amount, eyes_open=1.0 - 0.2 * amount)


def _cheeks_puffed(tau: float, timing: Timing) -> Expression:
    return Expression(puff=_ramp(tau, timing))


def _sentence(tau: float, timing: Timing) -> Expression:
    syllable = abs(np.sin(np.pi * (timing.rate * tau + timing.phase)))
    return Expression(
        jaw=0.03 + 0.15 * syllable**1.5,
        smile=0.15 * (0.5 + 0.5 * np.sin(2 * np.pi * (tau + timing.phase))),
        brow=0.25 * syllable,
        eyes_open=0.85 + 0.15 * syllable,
    )


def _gaze(tau: float, timing: Timing) -> Expression:
    angle = 2 * np.pi * (0.5 * timing.rate * tau + timing.phase)
    return Expression(gaze_yaw=0.45 * np.sin(angle), gaze_pitch=0.2 * np.cos(angle))


@dataclass(frozen=True)
class SequenceSpec:
    name: str
    first_frame: int  # frame ids are first_frame + 3 i, zero-padded to 6 digits
    program: Callable[[float, Timing], Expression]


SEQUENCES = {
    spec.name: spec
    for spec in (
        SequenceSpec("E001_Neutral_Eyes_Open", 3, _neutral),
        SequenceSpec("E011_Jaw_Open_Sharp_Corner_Lip_Stretch", 3612, _jaw_open),
        SequenceSpec("E014_Open_Mouth_Stretch_Nose", 4521, _mouth_stretch),
        SequenceSpec("E057_Cheeks_Puffed", 12303, _cheeks_puffed),
        SequenceSpec("SEN_the_small_pup_gnawed_a_hole_in_the_sock", 20409, _sentence),
        SequenceSpec("SEN_take_charge_of_choosing_her_bridesmaids_gowns", 21903, _sentence),
        SequenceSpec("GAZ_Look_Around", 26004, _gaze),
    )
}


@dataclass(frozen=True)
class FrameKey:
    sequence: str
    frame: str  # 6 digits
    tau: float  # time within the sequence, 0 .. 1


def rotation_ypr(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """(3, 3) rotation: roll about z, then pitch about x, then yaw about y."""
    cy, sy, cp, sp, cr, sr = (
        np.cos(yaw),
        np.sin(yaw),
        np.cos(pitch),
        np.sin(pitch),
        np.cos(roll),
        np.sin(roll),
    )
    yaw_m = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    pitch_m = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    roll_m = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    return yaw_m @ pitch_m @ roll_m


def head_pose(tau: float, phases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Small smooth head motion over a sequence: (R, t) with x_world = R x_face + t; phases (6,)."""
    wave = np.sin(2 * np.pi * (tau * np.array([0.7, 0.5, 0.4, 0.6, 0.5, 0.3]) + phases))
    R = rotation_ypr(*(np.deg2rad([4.0, 3.0, 2.0]) * wave[:3]))
    return R, np.array([5.0, 3.0, 5.0]) * wave[3:]


# -- presets ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    name: str
    cameras: tuple[str, ...]
    test_cameras: tuple[str, ...]
    image_size: tuple[int, int]  # (H, W) of the images
    supersample: int  # samples per pixel per axis
    texture_size: int  # average UV texture side
    skin_texture_size: int  # side of the baked skin albedo the images sample
    fine_factor: int  # fine (true) grid = coarse grid refined by this factor
    train_sequences: tuple[str, ...]
    test_sequences: tuple[str, ...]
    frames: int  # per sequence
    hair_strands: int
    eye_resolution: tuple[int, int]  # rings, segments

    @property
    def sequences(self) -> tuple[str, ...]:
        return self.train_sequences + self.test_sequences


PRESETS = {
    "tiny": Preset(
        name="tiny",
        cameras=("400029", "400008", "400017", "400048", "400012"),
        test_cameras=("400029",),
        image_size=(128, 84),
        supersample=1,
        texture_size=128,
        skin_texture_size=256,
        fine_factor=1,  # pixels are 3 mm: the grid is fine enough; the mouth still opens
        train_sequences=("E001_Neutral_Eyes_Open", "SEN_the_small_pup_gnawed_a_hole_in_the_sock"),
        test_sequences=(
            "E011_Jaw_Open_Sharp_Corner_Lip_Stretch",
            "SEN_take_charge_of_choosing_her_bridesmaids_gowns",
        ),
        frames=3,
        hair_strands=500,
        eye_resolution=(12, 18),
    ),
    "demo": Preset(
        name="demo",
        cameras=(
            "400029",
            "400007",
            "400008",
            "400012",
            "400013",
            "400017",
            "400018",
            "400026",
            "400027",
            "400048",
            "400051",
            "400067",
        ),
        test_cameras=("400029", "400018"),
        image_size=(512, 334),
        supersample=1,
        texture_size=256,
        skin_texture_size=512,
        fine_factor=2,
        train_sequences=(
            "E001_Neutral_Eyes_Open",
            "E014_Open_Mouth_Stretch_Nose",
            "E057_Cheeks_Puffed",
            "SEN_the_small_pup_gnawed_a_hole_in_the_sock",
            "GAZ_Look_Around",
        ),
        test_sequences=(
            "E011_Jaw_Open_Sharp_Corner_Lip_Stretch",
            "SEN_take_charge_of_choosing_her_bridesmaids_gowns",
        ),
        frames=6,
        hair_strands=2500,
        eye_resolution=(20, 30),
    ),
    "full": Preset(
        name="full",
        cameras=CAMERA_NAMES,
        test_cameras=("400029", "400018", "400049"),
        image_size=(FULL_HEIGHT, FULL_WIDTH),
        supersample=1,
        texture_size=1024,
        skin_texture_size=2048,
        fine_factor=4,
        train_sequences=("E001_Neutral_Eyes_Open", "SEN_the_small_pup_gnawed_a_hole_in_the_sock"),
        test_sequences=(
            "E011_Jaw_Open_Sharp_Corner_Lip_Stretch",
            "SEN_take_charge_of_choosing_her_bridesmaids_gowns",
        ),
        frames=3,
        hair_strands=6000,
        eye_resolution=(32, 48),
    ),
}


# Camera layouts of a capture: the preset's own cameras, or every camera of the dome (38, about as many
# as a Multiface capture, 15-20 degrees apart around the face) at the preset's image size.
CAMERA_LAYOUTS = ("preset", "dome")


def get_preset(name: str, cameras: str = "preset") -> Preset:
    """The synth preset `name`, with the camera layout `cameras` (one of CAMERA_LAYOUTS)."""
    if name not in PRESETS:
        raise NpvaError(f"unknown synth preset {name!r}; choose one of {', '.join(PRESETS)}")
    if cameras not in CAMERA_LAYOUTS:
        raise NpvaError(f"unknown camera layout {cameras!r}; choose one of {', '.join(CAMERA_LAYOUTS)}")
    preset = PRESETS[name]
    return replace(preset, cameras=CAMERA_NAMES) if cameras == "dome" else preset


def capture_frames(preset: Preset) -> list[FrameKey]:
    """The frames of a preset, sequence by sequence: every 3rd frame from the sequence's first."""
    keys = []
    for name in preset.sequences:
        first = SEQUENCES[name].first_frame
        for i in range(preset.frames):
            keys.append(FrameKey(name, f"{first + 3 * i:06d}", i / max(preset.frames - 1, 1)))
    return keys
