"""Write ``dymn_edge/data/parity_clip.flac``: the synthetic clip export validation runs on.

SYNTHETIC, not a recording: a deterministic source-filter "voice" (a glottal pulse train
with an intonation contour through vowel formant resonators, syllables separated by
fricative noise and short pauses), a whistle chirp, a tone burst and a pink-ish room noise
floor. It exists so that every export (also from a wheel, with no data beside it) checks
parity on an input with speech-like spectro-temporal structure rather than on random
tensors. Made by this script alone (no third-party audio): public domain (CC0).

    python tests/data/make_parity_clip.py            # rewrite the file
    python tests/data/make_parity_clip.py --check    # exit 1 if the shipped file differs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

RATE = 16000  # speech band; the runtime resamples to the model rate like any user file
SECONDS = 6.0
OUT = Path(__file__).resolve().parents[2] / "dymn_edge" / "data" / "parity_clip.flac"

# (F1, F2, F3) Hz of five vowels (a, e, i, o, u), classic adult averages
VOWELS = [(730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410),
          (300, 870, 2240)]


def _resonator(x: np.ndarray, freq: float, bw: float, rate: int) -> np.ndarray:
    """Two-pole resonance at ``freq`` with bandwidth ``bw`` (direct form, pure NumPy)."""
    r = np.exp(-np.pi * bw / rate)
    a1, a2 = -2 * r * np.cos(2 * np.pi * freq / rate), r * r
    y = np.zeros_like(x)
    y1 = y2 = 0.0
    g = 1 - r
    for i, v in enumerate(x):
        y0 = g * v - a1 * y1 - a2 * y2
        y[i] = y0
        y2, y1 = y1, y0
    return y


def synthesize(rate: int = RATE, seconds: float = SECONDS, seed: int = 11) -> np.ndarray:
    """The clip as float32 in [-1, 1] (deterministic for a given seed)."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    t = np.arange(n) / rate
    out = np.zeros(n)
    pos = int(0.25 * rate)
    while pos < n - int(0.4 * rate):
        syl = int(rng.uniform(0.12, 0.28) * rate)
        f1, f2, f3 = VOWELS[int(rng.integers(len(VOWELS)))]
        f0 = rng.uniform(95, 210) * (1 + 0.15 * np.sin(np.linspace(0, np.pi, syl)))  # intonation
        phase = np.cumsum(f0 / rate)
        pulses = np.diff(np.floor(phase), prepend=0.0)  # one impulse per glottal period
        src = np.convolve(pulses, np.hanning(int(rate / 400)), mode="same")
        voiced = sum(_resonator(src, f, 60 + 0.05 * f, rate) for f in (f1, f2, f3))
        voiced *= np.hanning(syl) / (np.abs(voiced).max() + 1e-9)
        end = min(n, pos + syl)
        out[pos:end] += 0.6 * voiced[:end - pos]
        pos = end
        if rng.random() < 0.5:  # a fricative (s / sh like): high-passed noise burst
            k = int(rng.uniform(0.05, 0.12) * rate)
            noise = np.diff(rng.standard_normal(k + 1))
            noise = _resonator(noise, rng.uniform(3500, 6500), 1500, rate)
            end = min(n, pos + k)
            out[pos:end] += 0.3 * (noise * np.hanning(k) / (np.abs(noise).max() + 1e-9))[:end - pos]
            pos = end
        pos += int(rng.uniform(0.03, 0.25) * rate)  # pause
    chirp = np.sin(2 * np.pi * np.cumsum(1800 + 900 * np.sin(2 * np.pi * 3 * t)) / rate)
    out += 0.12 * chirp * ((t > 2.1) & (t < 2.9)) * np.sin(np.pi * np.clip((t - 2.1) / 0.8, 0, 1))
    out += 0.08 * np.sin(2 * np.pi * 1000 * t) * ((t > 4.4) & (t < 4.7))
    pink = np.cumsum(rng.standard_normal(n))
    pink -= np.convolve(pink, np.ones(256) / 256, mode="same")
    out += 0.01 * pink / (np.abs(pink).max() + 1e-9) + 0.002 * rng.standard_normal(n)
    return (0.8 * out / np.abs(out).max()).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    import soundfile as sf

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with the shipped file")
    args = p.parse_args(argv)
    pcm = (synthesize() * 32767).round().astype(np.int16)
    if args.check:
        shipped, sr = sf.read(str(OUT), dtype="int16")
        same = sr == RATE and shipped.shape == pcm.shape and int(np.abs(shipped.astype(int) - pcm).max()) <= 1
        print("parity clip " + ("matches" if same else "DIFFERS from") + " the generator")
        return 0 if same else 1
    sf.write(str(OUT), pcm, RATE, subtype="PCM_16", format="FLAC")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {SECONDS:g} s at {RATE} Hz)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
