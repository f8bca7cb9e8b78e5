"""The embedded default subject: a synthetic head written in the Multiface layout.

A parametric head (coarse tracked mesh plus a finer true surface with an opening mouth, teeth, eyes and
hair strands) is captured by a dome of cameras over several sequences; the same seed gives the same
files, byte for byte. The "capture" variant adds the variety and the defects of real captures
(variant.py, docs/synth.md)."""

from npva.synth.subject import SynthSummary, write_subject

__all__ = ["SynthSummary", "write_subject"]
