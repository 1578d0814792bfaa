"""Accuracy of every artifact against the fp32 PyTorch reference, on the same clips.

The log-mels are computed once (NumPy frontend of the runtime, the model's window) and fed to
the eager reference and to every file through the runtime's engines, so differences are the
export's and the quantization's alone. FSDD clips follow the reference recipe exactly
(:func:`dymn_edge.datasets.fsdd_eval_wave`): with the trained FSDD DyMN-S the reference reaches
accuracy 0.9667 / mAP 0.9771 on the 300 test clips.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

from dymn_edge.datasets import Dataset
from dymn_edge.errors import DymnEdgeError
from dymn_edge.export.validate import torch_runner  # the one PyTorch runner (exporter's oracle)
from dymn_edge.metrics import (
    accuracy, max_prob_diff, mean_average_precision, to_probabilities, topk_overlap,
)
from dymn_edge.registry import FrontendConfig
from dymn_edge.runtime.archive import ArchiveOptions, run_archive
from dymn_edge.audio import fit_to_length
from dymn_edge.frontend import LogMelFrontend

log = logging.getLogger(__name__)

__all__ = ["EvalSet", "Scores", "archive_scores", "predict", "prepare", "score", "torch_runner"]

BATCH = 32


@dataclass
class EvalSet:
    """Log-mels (N, 1, 128, T) and targets of a dataset, ready for any artifact."""

    name: str
    mels: np.ndarray
    targets: np.ndarray  # (N, C) one-hot / multi-hot
    multilabel: bool
    window_s: float


@dataclass
class Scores:
    """One artifact's metrics and its agreement with the reference."""

    accuracy: float | None
    map: float
    delta_accuracy: float | None = None
    delta_map: float | None = None
    top1_agreement: float | None = None
    top5_overlap: float | None = None
    max_prob_diff: float | None = None
    clips: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare(dataset: Dataset, *, window_s: float, frontend: FrontendConfig | None = None,
            limit: int | None = None, progress: bool = True) -> EvalSet:
    """Read, fit to the window and log-mel every clip (FSDD clips by the reference recipe)."""
    cfg = frontend or FrontendConfig()
    fe = LogMelFrontend(cfg)
    n_samples = int(round(window_s * cfg.sample_rate))
    clips = dataset.clips[:limit] if limit else dataset.clips
    mels = []
    for clip in tqdm(clips, desc=f"log-mel {dataset.name}", unit="clip", disable=not progress,
                     leave=False):
        wave = dataset.read(clip, cfg.sample_rate)  # the layout's recipe (FSDD: the reference one)
        mels.append(fe(fit_to_length(wave, n_samples)))
    targets = dataset.targets_onehot()[: len(clips)]
    return EvalSet(dataset.name, np.stack(mels)[:, None].astype(np.float32), targets,
                   dataset.multilabel, window_s)


def predict(run: Callable[[np.ndarray], Any], data: EvalSet, *, batch: int = BATCH) -> np.ndarray:
    """Logits (N, C) of ``run(mel batch) -> (logits, embedding)`` over the whole set."""
    out = [np.asarray(run(data.mels[i:i + batch])[0], dtype=np.float32)
           for i in range(0, len(data.mels), batch)]
    return np.concatenate(out)


def score(logits: np.ndarray, data: EvalSet, *, reference: np.ndarray | None = None,
          activation: str = "sigmoid") -> Scores:
    """Metrics of ``logits``; with ``reference`` logits also the deltas and agreement."""
    t = data.targets
    acc = None if data.multilabel else accuracy(logits, t)
    s = Scores(acc, mean_average_precision(logits, t), clips=len(t))
    if reference is not None:
        ref = score(reference, data)
        s.delta_map = s.map - ref.map
        s.delta_accuracy = None if acc is None or ref.accuracy is None else acc - ref.accuracy
        s.top1_agreement = topk_overlap(reference, logits, 1)
        s.top5_overlap = topk_overlap(reference, logits, 5)
        s.max_prob_diff = max_prob_diff(to_probabilities(reference, activation),
                                        to_probabilities(logits, activation))
    return s


def archive_scores(model_file: str | Path, dataset: Dataset, output: str | Path, *,
                   workers: int | None = None, scheduler: str | None = None,
                   task_size: int = 50, progress: bool = True,
                   overwrite: bool = False) -> tuple[Scores | None, Any]:
    """Accuracy / mAP of one exported file on a large labelled set, via ``dymn-tag --output``.

    :func:`prepare` holds every clip's log-mel in memory (AudioSet's 20k 10 s clips would be
    ~10 GB); this path streams the clips through the runtime's archive job instead (whole
    clip as ``dymn-tag`` scores it, resumable parts beside ``output``, optionally on a Dask
    cluster), then reads the score vectors back. ``output`` holds exactly the rows of these
    clips (the archive job's contract, checked here), so only this run's clips are counted.
    ``Scores.clips`` is the number scored; the others are error rows of ``output`` (a
    failure the caller reports). Returns the scores (None when no clip could be scored) and
    the job's summary; ``overwrite`` replaces an ``output`` of another model or options.
    """
    import pyarrow.parquet as pq  # noqa: PLC0415  (the cluster extra)

    output = Path(output)
    paths = [str(Path(c.path).absolute()) for c in dataset.clips]
    manifest = output.with_name(output.stem + ".clips.txt")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text("".join(p + "\n" for p in paths), encoding="utf-8")
    except OSError as exc:
        raise DymnEdgeError(f"cannot write in {output.parent}: {exc.strerror or exc}") from None
    summary = run_archive(model_file, [manifest], output, task_size=task_size, workers=workers,
                          scheduler=scheduler, progress=progress, overwrite=overwrite,
                          opts=ArchiveOptions(top_k=1, scores=True, fmt="parquet"))
    rows = pq.read_table(output, columns=["file", "scores", "error"]).to_pydict()
    if len(rows["file"]) != len(set(paths)) or set(rows["file"]) != set(paths):  # a path listed twice is tagged once
        raise DymnEdgeError(f"{output} does not hold exactly the {len(paths)} clips of this run")
    by_file = {f: s for f, s, e in zip(rows["file"], rows["scores"], rows["error"]) if e is None}
    keep = [i for i, p in enumerate(paths) if p in by_file]
    if not keep:
        return None, summary
    scores = np.asarray([by_file[paths[i]] for i in keep], dtype=np.float32)
    if scores.shape[1] != dataset.num_classes:
        raise DymnEdgeError(f"{Path(model_file).name} has {scores.shape[1]} classes, "
                            f"{dataset.name} has {dataset.num_classes}")
    targets = dataset.targets_onehot()[keep]
    acc = None if dataset.multilabel else accuracy(scores, targets)
    return Scores(acc, mean_average_precision(scores, targets), clips=len(keep)), summary
