"""Ranking and thresholds never depend on probabilities that saturated to equal floats."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dymn_edge.audio import read_audio
from dymn_edge.labels import generic_labels
from dymn_edge.runtime.output import TagFilter
from dymn_edge.runtime.tagger import activation


def test_saturated_sigmoid_ranks_by_logit() -> None:
    """The issue's window: seven = 1672, one = 69.5; both probabilities round to 1.0."""
    logits = np.full(10, -3.0)
    logits[7], logits[1], logits[4] = 1672.0, 69.5, 2.0
    probs = activation(logits, "sigmoid")
    assert probs[1] == probs[7] == 1.0  # saturated: a probability-only sort cannot tell them apart
    filt = TagFilter.build(generic_labels(10), top_k=3, threshold=0.5)
    assert [i for i, _ in filt.select(probs, logits)] == [7, 1, 4]
    assert [i for i, _ in filt.select(probs)][0] == 1  # what ranking on saturated values gave


def test_softmax_is_stable_for_huge_logits() -> None:
    logits = np.array([1672.0, 69.5, -1e4, 0.0])
    p = activation(logits, "softmax")
    assert np.all(np.isfinite(p)) and p[0] == 1.0 and abs(p.sum() - 1.0) < 1e-6
    filt = TagFilter.build(generic_labels(4), top_k=4)
    assert [i for i, _ in filt.select(p, logits)] == [0, 1, 3, 2]


def test_clip_aggregate_keeps_a_ranking_key(fsdd_tflite: Path, fsdd_dir: Path) -> None:
    """A fixed-window file scoring a 3 s clip aggregates windows; the key ranks like the mean."""
    from dymn_edge.runtime.engines import load_engine
    from dymn_edge.runtime.tagger import Tagger

    tagger = Tagger(load_engine(fsdd_tflite))
    wave = np.concatenate([read_audio(fsdd_dir / "recordings" / f"{d}_jackson_0.wav", 32000)
                           for d in (3, 3, 3, 3, 3, 3)])
    assert len(wave) > tagger.window_samples
    clip = tagger.tag_clip(wave)
    assert clip.logits is not None and clip.logits.shape == clip.probabilities.shape
    assert int(np.argmax(clip.logits)) == int(np.argmax(clip.probabilities)) == 3
    assert abs(float(clip.probabilities.sum()) - 1.0) < 1e-4  # mean of softmax stays a distribution
