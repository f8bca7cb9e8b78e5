"""A sequence's sound in the viewer: the WAV cut at the frame where playing starts, for the page's player.

The page has no script of its own, so the sound is handed over as an HTML <audio autoplay> element whose
source is the WAV itself (a data URL), cut to start at the shown frame; the timeline then follows the
clock rather than the renders, so that picture and sound stay together (frames that cannot be rendered
in time are skipped).
"""

from __future__ import annotations

import base64
import io
import wave
from pathlib import Path

from npva.errors import FormatError


def wav_from(path: Path, start_seconds: float) -> bytes:
    """The WAV file `path` from `start_seconds` to its end, as the bytes of a WAV file of the same format
    (empty of samples when it starts past the end). Raises FormatError for a file `wave` cannot read
    (compressed or floating-point samples)."""
    try:
        with wave.open(str(path), "rb") as source:
            params = source.getparams()
            first = min(max(round(start_seconds * params.framerate), 0), params.nframes)
            source.setpos(first)
            samples = source.readframes(params.nframes - first)
    except (wave.Error, EOFError) as exc:
        raise FormatError(path, f"expected a WAV file of integer PCM samples ({exc})") from None
    out = io.BytesIO()
    with wave.open(out, "wb") as cut:
        cut.setparams(params)
        cut.writeframes(samples)
    return out.getvalue()


def player_html(wav: bytes, serial: int) -> str:
    """An HTML element that starts playing `wav` as soon as the page shows it. `serial` tells one start
    from the next, so that the same sound started again is a new element (the page keeps an element
    whose HTML did not change)."""
    source = base64.b64encode(wav).decode("ascii")
    return f'<audio autoplay data-start="{serial}" src="data:audio/wav;base64,{source}"></audio>'
