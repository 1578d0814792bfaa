"""Scoring of artifacts against the reference (synthetic logits)."""

from __future__ import annotations

import numpy as np
import pytest

from dymn_edge.benchmarks.accuracy import EvalSet, predict, score


def _data() -> EvalSet:
    targets = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    return EvalSet("toy", np.zeros((4, 1, 128, 10), np.float32), targets, False, 1.0)


def test_score_deltas_and_agreement() -> None:
    data = _data()
    ref = np.array([[3, 0, 0], [0, 3, 0], [0, 0, 3], [0, 2, 1]], dtype=np.float32)  # acc 0.75
    art = ref.copy()
    art[3] = [2, 1, 0]  # now right: acc 1.0, top-1 differs on one clip
    s = score(art, data, reference=ref, activation="softmax")
    assert s.accuracy == 1.0 and s.delta_accuracy == pytest.approx(0.25)
    assert s.top1_agreement == pytest.approx(0.75)
    assert s.max_prob_diff > 0 and s.clips == 4
    same = score(ref, data, reference=ref)
    assert same.delta_map == 0.0 and same.max_prob_diff == 0.0 and same.top5_overlap == 1.0


def test_predict_batches() -> None:
    data = _data()
    calls = []

    def run(x: np.ndarray):
        calls.append(len(x))
        return np.ones((len(x), 3), np.float32), np.zeros((len(x), 8), np.float32)

    assert predict(run, data, batch=3).shape == (4, 3)
    assert calls == [3, 1]


def test_eval_split_is_the_layouts_own(tmp_path) -> None:
    """FSDD (split.csv + labels.csv) is scored on its test split unless asked; a folder that
    only happens to hold a split.csv is not FSDD and gets no split."""
    from dymn_edge.benchmarks.config import eval_split

    (tmp_path / "split.csv").write_text("file,split\n")
    assert eval_split(tmp_path, None) is None
    (tmp_path / "labels.csv").write_text("index,name\n")
    assert eval_split(tmp_path, None) == "test" and eval_split(tmp_path, "train") == "train"
