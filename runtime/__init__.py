"""Torch-free runtime: engines, file tagging, streaming scorer, events, microphone, CLIs.

Runs what ``dymn-export`` writes on devices without torch (a Raspberry Pi with a USB
microphone). Nothing here imports torch or :mod:`dymn_edge.export` / :mod:`dymn_edge.models`;
ONNX Runtime, LiteRT and sounddevice are imported only where they are used, so importing
this package is cheap and works with any subset of them installed.
"""

from __future__ import annotations

__all__ = ["load_engine", "Tagger", "StreamingScorer", "EventTracker"]


def __getattr__(name: str):  # lazy re-exports: importing the package loads no engine
    if name == "load_engine":
        from dymn_edge.runtime.engines import load_engine

        return load_engine
    if name == "Tagger":
        from dymn_edge.runtime.tagger import Tagger

        return Tagger
    if name == "StreamingScorer":
        from dymn_edge.runtime.stream import StreamingScorer

        return StreamingScorer
    if name == "EventTracker":
        from dymn_edge.runtime.events import EventTracker

        return EventTracker
    raise AttributeError(f"module 'dymn_edge.runtime' has no attribute {name!r}")
