"""Torch-free runtime: engines, file tagging, streaming scorer, events, microphone, CLIs.

Runs what ``dymn-export`` writes on devices without torch (a Raspberry Pi with a USB
microphone). Nothing here imports torch or :mod:`dymn_edge.export` / :mod:`dymn_edge.models`;
ONNX Runtime, LiteRT, OpenVINO and sounddevice are imported only where they are used, so
importing this package is cheap and works with any subset of them installed (checked for
every module by tests/test_torch_free.py).
"""

from __future__ import annotations

from dymn_edge.runtime.engines import load_engine
from dymn_edge.runtime.events import EventTracker
from dymn_edge.runtime.stream import StreamingScorer
from dymn_edge.runtime.tagger import Tagger

__all__ = ["load_engine", "Tagger", "StreamingScorer", "EventTracker"]
