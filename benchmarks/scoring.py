"""Accuracy of every row of a model on its labelled set, and the checks made before exporting.

Each exported file is scored through :func:`dymn_edge.runtime.engines.load_engine` on the
same prepared clips as the eager PyTorch reference, so a row's delta is the export's alone.
"""

from __future__ import annotations

from typing import Any

from dymn_edge.benchmarks import accuracy as acc
from dymn_edge.benchmarks.config import BenchConfig, ModelRun, eval_split
from dymn_edge.datasets import load_dataset
from dymn_edge.errors import DymnEdgeError
from dymn_edge.runtime.engines import load_engine


def check_runs(cfg: BenchConfig, runs: list[ModelRun]) -> None:
    """Checkpoint, head and dataset problems as one line before minutes of exporting.

    Each would otherwise fail every row of its model (the export refuses a non-AudioSet head
    without --activation; a checkpoint of another architecture does not load) or end the run
    after the exports (a dataset whose classes do not match the head).
    """
    from dymn_edge.models import create_model  # noqa: PLC0415  (torch)

    for mr in runs:
        if mr.weights is None:
            continue
        create_model(mr.name, weights=mr.weights, allow_download=False)  # WeightsError: one line
        if mr.activation is None and mr.num_classes != 527:
            raise DymnEdgeError(f"{mr.weights} has a {mr.num_classes}-class head: say how its logits "
                                "become probabilities with --activation softmax (one class per "
                                "clip) or --activation sigmoid (multi-label)")
        if mr.data_dir is not None:
            ds = load_dataset(mr.data_dir, split=eval_split(mr.data_dir, cfg.split))
            if len(ds.labels) != mr.num_classes:
                raise DymnEdgeError(f"dataset {ds.name} has {len(ds.labels)} classes, {mr.name} "
                                    f"{mr.num_classes}: pass matching --weights and --data")


def score_model(cfg: BenchConfig, mr: ModelRun, notes: list[str]) -> dict[str, Any]:
    """Score every artifact of one model; returns dataset info (or why accuracy is missing)."""
    from dymn_edge.models import create_model  # noqa: PLC0415  (torch)

    data_dir = mr.data_dir
    if data_dir is None:
        reason = ("disabled (--no-accuracy)" if cfg.no_accuracy else
                  "random-init model (untrained weights mean nothing)" if mr.random_init else
                  "no labelled data: pass --data DIR (FSDD / ESC-50 / AudioSet CSV / labels.csv)")
        notes.append(f"accuracy not measured ({mr.name}): {reason}")
        return {"measured": False, "reason": reason}
    ds = load_dataset(data_dir, split=eval_split(data_dir, cfg.split))
    if len(ds.labels) != mr.num_classes:
        raise DymnEdgeError(f"dataset {ds.name} has {len(ds.labels)} classes, {mr.name} "
                            f"{mr.num_classes}: pass matching --weights and --data")
    data = acc.prepare(ds, window_s=mr.window_s, limit=cfg.max_clips, progress=cfg.progress)
    model = create_model(mr.name, weights=mr.weights, allow_download=False)
    ref_logits = acc.predict(acc.torch_runner(model), data)
    activation = next((r.get("output_activation") for r in mr.rows
                       if r.get("output_activation")), "sigmoid")
    for r in mr.rows:
        if r["status"] != "failed":
            _score_row(r, data, ref_logits, activation, threads=max(cfg.threads))
    return {"measured": True, "dataset": ds.name, "layout": ds.layout, "clips": len(data.mels),
            "classes": len(ds.labels), "multilabel": ds.multilabel, "window_s": mr.window_s}


def _score_row(r: dict[str, Any], data: Any, ref_logits: Any, activation: str, *,
               threads: int) -> None:
    """Scores of one row against the reference logits (a failed engine fails the row)."""
    if r["format"] == "pytorch":
        r["scores"] = acc.score(ref_logits, data, reference=ref_logits,
                                activation=activation).to_dict()
        return
    if r["precision"] == "waveform":  # takes audio, not the prepared log-mels
        r["scores_note"] = "waveform file: score it with --score-file (the runtime's audio path)"
        return
    try:
        engine = load_engine(r["path"], threads=threads, engine=r.get("engine") or "auto")
        logits = acc.predict(engine.run, data)
    except DymnEdgeError as exc:
        r["status"], r["error"] = "failed", f"accuracy run: {exc}"
        return
    r["scores"] = acc.score(logits, data, reference=ref_logits, activation=activation).to_dict()
