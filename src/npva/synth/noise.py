"""Deterministic 3-D value noise for procedural textures (a seeded lattice, no global state)."""

from __future__ import annotations

import numpy as np

_HASH_PRIMES = (73856093, 19349663, 83492791)
_CORNERS = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.int64)


class ValueNoise:
    """Smoothly interpolated random values on an integer lattice, hashed into a seeded table."""

    def __init__(self, rng: np.random.Generator, table_bits: int = 16):
        self._table = rng.random(1 << table_bits)
        self._mask = (1 << table_bits) - 1

    def __call__(self, points: np.ndarray, feature_mm: float) -> np.ndarray:
        """points (N, 3) mm -> (N,) noise in [0, 1] varying over about `feature_mm`."""
        p = np.asarray(points, dtype=np.float64) / feature_mm
        cell = np.floor(p).astype(np.int64)
        frac = p - cell
        weight = frac * frac * (3.0 - 2.0 * frac)  # smoothstep: continuous derivative at cell faces
        out = np.zeros(len(p))
        for corner in _CORNERS:
            c = cell + corner
            key = (c[:, 0] * _HASH_PRIMES[0]) ^ (c[:, 1] * _HASH_PRIMES[1]) ^ (c[:, 2] * _HASH_PRIMES[2])
            w = np.prod(np.where(corner == 1, weight, 1.0 - weight), axis=1)
            out += w * self._table[key & self._mask]
        return out

    def fbm(self, points: np.ndarray, feature_mm: float, octaves: int, gain: float = 0.5) -> np.ndarray:
        """Sum of `octaves` layers, each half the feature size and `gain` times the amplitude of the
        one before; (N,) in [0, 1]."""
        total = np.zeros(len(points))
        amplitude, norm = 1.0, 0.0
        for octave in range(octaves):
            # Offset each octave so that lattice points of different octaves do not line up.
            total += amplitude * self(points + 17.0 * octave, feature_mm / 2**octave)
            norm += amplitude
            amplitude *= gain
        return total / norm
