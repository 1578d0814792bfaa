"""Write ``dymn_edge/data/parity_clip.flac``: the real recording export validation runs on.

The clip is 11 s of real speech: the "ask not what your country can do for you" passage of
President John F. Kennedy's inaugural address (20 January 1961), a work of the United States
federal government and so in the public domain. The copy used is ``samples/jfk.wav`` of
whisper.cpp (16 kHz mono 16-bit PCM), as shipped inside the PyPI source distribution
``pywhispercpp`` 1.5.1 (``pywhispercpp-1.5.1/whisper.cpp/samples/jfk.wav``). The samples are
stored unchanged, only re-encoded losslessly as FLAC; ``--check`` verifies that the shipped
file decodes to exactly those samples (no source file needed).

    python tests/data/make_parity_clip.py --source path/to/jfk.wav   # rewrite the file
    python tests/data/make_parity_clip.py --check                    # exit 1 if it differs
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

OUT = Path(__file__).resolve().parents[2] / "dymn_edge" / "data" / "parity_clip.flac"
#: sha256 of the source file (whisper.cpp samples/jfk.wav in pywhispercpp 1.5.1)
SOURCE_SHA256 = "59dfb9a4acb36fe2a2affc14bacbee2920ff435cb13cc314a08c13f66ba7860e"
RATE = 16000
FRAMES = 176000  # 11.0 s


def pcm_sha256(path: Path) -> str:
    """sha256 of the decoded samples (int16, little-endian): the same for WAV and FLAC."""
    x, sr = sf.read(str(path), dtype="int16")
    if sr != RATE or x.ndim != 1 or x.shape[0] != FRAMES:
        raise ValueError(f"{path}: expected {FRAMES} mono samples at {RATE} Hz, got {x.shape} at {sr} Hz")
    return hashlib.sha256(np.ascontiguousarray(x, "<i2").tobytes()).hexdigest()


#: sha256 of the decoded samples of the source (and so of the shipped FLAC)
PCM_SHA256 = "a29462b8ebd467318000e683b9117ade46230d3255ed2024e7db894abd9b38c9"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, help="whisper.cpp samples/jfk.wav (see the module docstring)")
    p.add_argument("--check", action="store_true", help="verify the shipped file instead of writing it")
    args = p.parse_args(argv)
    if args.check:
        got = pcm_sha256(OUT)
        if got != PCM_SHA256:
            print(f"{OUT}: decoded samples sha256 {got}, expected {PCM_SHA256}", file=sys.stderr)
            return 1
        return 0
    if args.source is None:
        p.error("--source is required to write the clip")
    if hashlib.sha256(args.source.read_bytes()).hexdigest() != SOURCE_SHA256:
        p.error(f"{args.source}: not the expected source file (sha256 {SOURCE_SHA256})")
    x, sr = sf.read(str(args.source), dtype="int16")
    sf.write(str(OUT), x, sr, format="FLAC", subtype="PCM_16")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, decoded sha256 {pcm_sha256(OUT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
