"""Which frames and cameras train an avatar and which are held out: the subject's splits/, or a protocol.

A subject with a `splits/` folder is split as its files say (`train_list.txt`, `test_list.txt`,
`camera_split.json`; without the camera split every camera is on both sides). A subject without one,
as Multiface ships it, is split by the default protocol, `auto`: `npva-paper` when the subject has any
of the sequences the authors held out, else `generic` with its defaults. A protocol depends only on
frame_list.txt and the KRT, so every command that splits the same subject finds the same split.

Protocols (`npva split SUBJECT --protocol NAME` writes one into splits/):
- `npva-paper`: the authors' protocol on their Multiface subjects: the sequences of PAPER_TEST_SEQUENCES
  the subject has are held out whole (about 10 % of the frames); both lists take every third frame (by
  frame number, from each sequence's first listed frame); no camera is held out (evaluation uses every
  camera).
- `generic`: for other captures: the sequences named, else a fraction of the sequences (at least one
  when there are two or more, never all) spread evenly over their sorted names, are held out; both lists
  take every `every`-th frame (by number) of each sequence (default every frame); the cameras named
  are held out of training and are the test cameras (default none: every camera on both sides).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from npva.errors import NpvaError
from npva.fileio import atomic_open
from npva.io.multiface import (
    read_camera_split,
    read_frame_list,
    read_krt,
    write_camera_split,
    write_frame_list,
)
from npva.io.subject import SubjectLayout

Frame = tuple[str, str]  # (sequence, frame id)

PROTOCOLS = ("auto", "npva-paper", "generic")
DEFAULT_PROTOCOL = "auto"
SUBJECT_SPLIT = "subject"  # the protocol name of a subject's own splits/ files
SIDES = ("train", "test")
PROTOCOL_FILE = "protocol.txt"

PAPER_EVERY = 3
PAPER_TEST_SEQUENCES = (
    "E005_Eyes_Wide_Open",
    "E015_Jaw_Open_Upper_Lip_Raised",
    "E025_Shh",
    "E040_Lips_Open_Left",
    "E054_Tongue_Out_Right_Teeth_Showing",
    *(f"GAZ_G1_Regular_Full-led_{n}" for n in (6, 7, 21, 23)),
    *(f"GAZ_G2_Wide_eyes_Full-led_{n}" for n in (5, 8, 10, 22)),
    "SEN_approach_your_interview_with_statuesque_composure",
    "SEN_george_is_paranoid_about_a_future_gas_shortage",
    "SEN_have_you_got_our_keys_handy",
    "SEN_take_charge_of_choosing_her_bridesmaids_gowns",
    "SEN_they_enjoy_it_when_I_audition",
    "SEN_they_werent_as_well_paid_as_they_should_have_been",
    "SEN_theyve_never_met_you_know",
    "SEN_why_charge_money_for_such_garbage",
)
GENERIC_TEST_FRACTION = 0.1


@dataclass(frozen=True)
class Split:
    """Train and test frames and cameras of a subject, and the protocol that chose them."""

    protocol: str
    train: list[Frame]
    test: list[Frame]
    train_cameras: list[str]
    test_cameras: list[str]

    def frames(self, side: str) -> list[Frame]:
        return self.train if side == "train" else self.test

    def cameras(self, side: str) -> list[str]:
        return self.train_cameras if side == "train" else self.test_cameras

    def describe(self) -> str:
        """One line: the protocol, the held-out sequences and the frame and camera counts."""
        held_out = sorted({seq for seq, _ in self.test})
        names = ", ".join(held_out[:3]) + (f" and {len(held_out) - 3} more" if len(held_out) > 3 else "")
        return (
            f"split {self.protocol}: {len(self.train)} train and {len(self.test)} test frames "
            f"(held out: {names or 'none'}), {len(self.train_cameras)} train and "
            f"{len(self.test_cameras)} test cameras"
        )

    def write(self, directory: Path) -> None:
        """train_list.txt, test_list.txt, camera_split.json and protocol.txt (the describe() line) in
        `directory`, each written atomically."""
        directory = Path(directory)
        with atomic_open(directory / PROTOCOL_FILE, "w") as f:
            f.write(self.describe() + "\n")
        write_frame_list(directory / "train_list.txt", self.train)
        write_frame_list(directory / "test_list.txt", self.test)
        write_camera_split(directory / "camera_split.json", self.train_cameras, self.test_cameras)


def _every_nth(frames: Sequence[Frame], every: int) -> list[Frame]:
    """The frames whose number is a multiple of `every` past their sequence's first listed frame
    (every third frame of a capture; a list that already steps by three keeps all), in list order."""
    first: dict[str, int] = {}
    kept = []
    for seq, frame in frames:
        start = first.setdefault(seq, int(frame))
        if (int(frame) - start) % every == 0:
            kept.append((seq, frame))
    return kept


def _spread(names: list[str], fraction: float) -> list[str]:
    """round(fraction * len(names)) names spread evenly (at least one of two or more, never all)."""
    if len(names) < 2:
        return []
    count = min(len(names) - 1, max(1, round(fraction * len(names))))
    return [names[int((i + 0.5) * len(names) / count)] for i in range(count)]


def protocol_split(
    subject: Path,
    protocol: str = DEFAULT_PROTOCOL,
    *,
    test_sequences: Sequence[str] = (),
    test_fraction: float = GENERIC_TEST_FRACTION,
    test_cameras: Sequence[str] = (),
    every: int = 1,
) -> Split:
    """The split that `protocol` (see the module docstring) makes of a subject's frame list and KRT;
    the keyword options are generic's."""
    if protocol not in PROTOCOLS:
        raise NpvaError(f"unknown split protocol {protocol!r} (known: {', '.join(PROTOCOLS)})")
    if every < 1 or not 0 < test_fraction < 1:
        raise NpvaError(f"split needs every >= 1 and 0 < test fraction < 1, got {every} and {test_fraction}")
    layout = SubjectLayout(subject)
    frames = read_frame_list(layout.frame_list)
    cameras = list(read_krt(layout.krt))
    sequences = sorted({seq for seq, _ in frames})
    paper = [seq for seq in PAPER_TEST_SEQUENCES if seq in sequences]
    if protocol == "auto":
        protocol = "npva-paper" if paper else "generic"
    if protocol == "npva-paper":
        if not paper:
            raise NpvaError(f"{layout.frame_list}: none of the npva-paper held-out sequences is listed")
        held_out, every, test_cameras = paper, PAPER_EVERY, ()
    else:
        held_out = list(test_sequences) or _spread(sequences, test_fraction)
    unknown = [name for name in held_out if name not in sequences]
    if unknown:
        raise NpvaError(f"{layout.frame_list}: no sequence named {', '.join(unknown)}")
    unknown = [name for name in test_cameras if name not in cameras]
    if unknown:
        raise NpvaError(f"{layout.krt}: no camera named {', '.join(unknown)}")
    kept = _every_nth(frames, every)
    held = set(held_out)
    train_cameras = [name for name in cameras if name not in test_cameras]
    return Split(
        protocol=protocol,
        train=[f for f in kept if f[0] not in held],
        test=[f for f in kept if f[0] in held],
        train_cameras=train_cameras,
        test_cameras=list(test_cameras) or cameras,
    )


def subject_split(subject: Path) -> Split:
    """The subject's own split (splits/, the protocol "subject") or else the default protocol's."""
    layout = SubjectLayout(subject)
    if not layout.splits_dir.is_dir():
        return protocol_split(subject)
    lists = [read_frame_list(p) if p.is_file() else [] for p in map(layout.split_list, SIDES)]
    if layout.camera_split.is_file():
        cameras = read_camera_split(layout.camera_split)
        train_cameras, test_cameras = cameras["train"], cameras["test"]
    else:
        train_cameras = test_cameras = list(read_krt(layout.krt))
    return Split(SUBJECT_SPLIT, *lists, train_cameras, test_cameras)


def split_frames(subject: Path, name: str) -> list[Frame]:
    """The frames of split `name`: splits/<name>_list.txt, or without splits/ the default protocol's
    side ("train" or "test")."""
    layout = SubjectLayout(subject)
    if name in SIDES and not layout.splits_dir.is_dir():
        return protocol_split(subject).frames(name)
    return read_frame_list(layout.split_list(name))


def split_cameras(subject: Path, side: str) -> list[str]:
    """The cameras of `side` ("train" or "test"): splits/camera_split.json, else the default protocol's
    without splits/, else every KRT camera."""
    layout = SubjectLayout(subject)
    if layout.camera_split.is_file():
        return read_camera_split(layout.camera_split)[side]
    if not layout.splits_dir.is_dir():
        return protocol_split(subject).cameras(side)
    return list(read_krt(layout.krt))
