"""Accuracy of every artifact against the fp32 PyTorch reference, on the same clips.

The log-mels are computed once (NumPy frontend of the runtime, the model's window) and fed to
the eager reference and to every file through the runtime's engines, so differences are the
export's and the quantization's alone. FSDD clips follow the reference recipe exactly
(:func:`dymn_edge.datasets.fsdd_eval_wave`): with ``fsdd_dymn04.pt`` the reference reaches
accuracy 0.9667 / mAP 0.9771 on the 300 test clips.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from dymn_edge.datasets import Dataset, fsdd_eval_wave
from dymn_edge.metrics import (
    accuracy, max_prob_diff, mean_average_precision, to_probabilities, topk_overlap,
)
from dymn_edge.registry import FrontendConfig

log = logging.getLogger(__name__)

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
    from tqdm.auto import tqdm  # noqa: PLC0415

    from dymn_edge.audio import fit_to_length, read_audio  # noqa: PLC0415
    from dymn_edge.frontend import LogMelFrontend  # noqa: PLC0415

    cfg = frontend or FrontendConfig()
    fe = LogMelFrontend(cfg)
    n_samples = int(round(window_s * cfg.sample_rate))
    clips = dataset.clips[:limit] if limit else dataset.clips
    mels = []
    for clip in tqdm(clips, desc=f"log-mel {dataset.name}", unit="clip", disable=not progress,
                     leave=False):
        if dataset.layout == "fsdd":
            wave = fsdd_eval_wave(clip.path)
        else:
            wave = read_audio(clip.path, cfg.sample_rate)
        mels.append(fe(fit_to_length(wave, n_samples)))
    targets = dataset.targets_onehot()[: len(clips)]
    return EvalSet(dataset.name, np.stack(mels)[:, None].astype(np.float32), targets,
                   dataset.multilabel, window_s)


def predict(run: Callable[[np.ndarray], Any], data: EvalSet, *, batch: int = BATCH) -> np.ndarray:
    """Logits (N, C) of ``run(mel batch) -> (logits, embedding)`` over the whole set."""
    out = [np.asarray(run(data.mels[i:i + batch])[0], dtype=np.float32)
           for i in range(0, len(data.mels), batch)]
    return np.concatenate(out)


def torch_runner(model: Any) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``run`` for the eager PyTorch reference."""
    import torch  # noqa: PLC0415

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            logits, emb = model(torch.from_numpy(np.ascontiguousarray(x)))
        return logits.numpy(), emb.numpy()

    return run


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
