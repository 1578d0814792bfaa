"""The accuracy stored in a file at export is the accuracy dymn-tag delivers on the same clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dymn_edge.datasets import load_dataset
from dymn_edge.metadata import read_metadata
from dymn_edge.runtime.engines import load_engine
from dymn_edge.runtime.tagger import Tagger


def test_stored_accuracy_is_what_the_runtime_delivers(fsdd_export, fsdd_dir: Path) -> None:
    path = Path(fsdd_export("onnx").path)
    acc = read_metadata(path).validation["accuracy"]
    assert acc["audio_path"] == "runtime (dymn-tag)" and acc["clips"] == 300
    ds = load_dataset(fsdd_dir, split="test")
    tagger = Tagger(load_engine(path, threads=1))
    labels = ds.targets_onehot().argmax(axis=1)
    hits = [int(np.argmax(tagger.tag_file(c.path)[0].probabilities)) == int(y)
            for c, y in zip(ds.clips, labels)]
    assert len(hits) == 300
    assert float(np.mean(hits)) == acc["accuracy"]
