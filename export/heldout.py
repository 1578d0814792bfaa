"""int8 against fp32 on audio its calibration did not use (the held-out part of ``--calibration``).

Why: calibrated int8 was judged on the calibration folder's own kind of audio. A second
trained DyMN-S, calibrated on five FSDD speakers and scored on the sixth, lost 1.2 accuracy
points with static QDQ where the README promised 0.5. :func:`measure` scores the int8 file
and the fp32 graph on the held-out clips (:func:`dymn_edge.export.calibration.split_folder`)
through the runtime's engines:

- ``top1_agreement``: share of clips whose top class is fp32's;
- ``sqnr_db``: SQNR of the int8 logits against the fp32 logits over all held-out clips;
- accuracy / mAP of both when the folder is a labelled set with the model's classes. mAP ranks
  the logits (the FSDD reference's definition, 0.9771): a softmax head's probabilities reach
  1.0 in float64 on loud clips, and the ties left the FSDD model's fp32 mAP at 0.9956 on its
  test split where its logits give 0.9787.

The drop, in points (1 point = 0.01), is what ``--max-int8-drop`` bounds: fp32 minus int8
accuracy for a 1-of-N labelled set, mAP for a multi-label one, and without labels the top-1
disagreement with fp32, which bounds any accuracy drop from above (accuracy can only move on
a clip whose top class moved).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from dymn_edge.export.calibration import MelSet
from dymn_edge.export.quant_report import sqnr_db
from dymn_edge.metrics import accuracy, mean_average_precision, topk_overlap

log = logging.getLogger(__name__)

__all__ = ["HeldOutCheck", "logits", "measure"]

Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

#: clips per engine call (engines with a fixed batch of 1 split it themselves)
BATCH = 32


@dataclass
class HeldOutCheck:
    """One int8 recipe measured against fp32 on the held-out clips."""

    recipe: str  # quantization scheme id (int8_static_qdq, int8_dynamic, full_int8)
    clips: int
    split: str  # how the calibration folder was divided
    measure: str  # what the drop is of: "accuracy", "mAP" or "top-1 disagreement"
    drop_points: float  # fp32 minus int8, in points; negative: int8 did better
    bound_points: float
    top1_agreement: float
    sqnr_db: float  # logits, int8 against fp32
    fp32_accuracy: float | None = None
    int8_accuracy: float | None = None
    fp32_map: float | None = None
    int8_map: float | None = None
    enforced: bool = True  # False for an untrained model: recorded, the bound not applied

    @property
    def passed(self) -> bool:
        return self.drop_points <= self.bound_points

    def summary(self) -> str:
        """One line with the numbers (the warning, the error and the metadata's text)."""
        if self.measure == "accuracy":
            what = f"accuracy {self.int8_accuracy:.4f} vs fp32 {self.fp32_accuracy:.4f}"
        elif self.measure == "mAP":
            what = f"mAP {self.int8_map:.4f} vs fp32 {self.fp32_map:.4f}"
        else:
            what = "no labels"
        verdict = f"{'within' if self.passed else 'over'} {self.bound_points:g}" + (
            "" if self.enforced else ", not enforced: untrained model")
        return (f"{self.recipe} on {self.clips} held-out clips: {what}, {self.measure} drop "
                f"{self.drop_points:+.2f} points ({verdict}), top-1 agreement "
                f"{100 * self.top1_agreement:.1f} %, logits SQNR {self.sqnr_db:.1f} dB")

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def logits(run: Runner, mels: np.ndarray) -> np.ndarray:
    """Logits (N, C) float64 of ``run`` over ``mels``, in batches of :data:`BATCH`."""
    out = [np.asarray(run(mels[i:i + BATCH])[0], np.float64) for i in range(0, len(mels), BATCH)]
    return np.concatenate(out)


def measure(run: Runner, reference: np.ndarray, heldout: MelSet, *, recipe: str, split: str,
            bound_points: float) -> HeldOutCheck:
    """Score the int8 file ``run`` against fp32's ``reference`` logits on ``heldout``."""
    got = logits(run, heldout.mels)
    check = HeldOutCheck(recipe, len(got), split, "top-1 disagreement", 0.0, bound_points,
                         topk_overlap(reference, got, 1), sqnr_db(reference, got))
    t = heldout.targets
    if t is not None and t.shape[1] != got.shape[1]:
        log.warning("held-out check: the calibration set has %d classes, the model %d: its labels "
                    "are not the model's, judged by agreement with fp32", t.shape[1], got.shape[1])
        t = None
    if t is not None:
        check.fp32_map, check.int8_map = mean_average_precision(reference, t), mean_average_precision(got, t)
    if t is not None and not heldout.multilabel:
        check.fp32_accuracy, check.int8_accuracy = accuracy(reference, t), accuracy(got, t)
        check.measure = "accuracy"
        check.drop_points = 100.0 * (check.fp32_accuracy - check.int8_accuracy)
    elif t is not None:
        check.measure = "mAP"
        check.drop_points = 100.0 * (check.fp32_map - check.int8_map)
    else:
        check.drop_points = 100.0 * (1.0 - check.top1_agreement)
    check.drop_points = round(check.drop_points, 6)  # 0.8, not 0.8000000000000007
    return check
