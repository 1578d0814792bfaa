"""CI latency-regression gate: compare a benchmark run with a committed baseline.

What is compared, and how strictly:

- **Latency**, per artifact, thread count and input length, as the ratio of its median to
  the median of the reference GEMM timed in the same run (interleaved with it, same thread
  count). The ratio cancels most of the machine's speed and its momentary load, which raw
  milliseconds on a shared runner do not. The gate fails when
  ``current ratio / baseline ratio - 1`` exceeds ``max_regression`` (default 15 %).
  Getting faster never fails; a large speed-up is reported so the baseline gets refreshed.
- **MACs** (model and deployed, and the ONNX graph count) are deterministic: gated exactly.
- **Accuracy / mAP**: the *delta against the PyTorch reference of the same run* is gated,
  with a tolerance. Decided: fp32/fp16 artifacts and the reference itself within one clip
  (1 / N) — float kernels differ in summation order across CPUs (AVX2 / AVX-512 / NEON), which
  can flip a clip on a decision boundary; int8 artifacts within 1 % absolute (3 of 300 FSDD
  clips), because ONNX Runtime and XNNPACK pick different int8 kernels per CPU (VNNI vs
  AVX2 u8s8 with saturation) and the quantized dynamic path amplifies rounding. mAP uses the
  same tolerances. Anything beyond is a real change and fails.
- An artifact present in the baseline but failed or missing in the run fails the gate.
- The eager PyTorch reference row is gated on accuracy only, not latency: it is not a shipped
  artifact, and its speed on a shared 2-core runner swings several-fold with torch threading.

Refreshing the baseline (after an intended change, or a new CI machine type): run on the CI
machine type, from the repository root,

    dymn-bench --ci-gate --write-baseline benchmarks/baselines/ci_dymn_s.json

(the CI configuration: DyMN-S with the FSDD reference weights, 1 s window, 1 thread, the
formats listed in the baseline), review the table it prints, and commit the JSON. ``--ci-gate``
without ``--write-baseline`` re-runs the baseline's configuration and compares.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_MAX_REGRESSION = 0.15
FLOAT_CLIPS_TOL = 1  # clips
INT8_ABS_TOL = 0.01
SPEEDUP_NOTE = 0.30  # faster than this: suggest refreshing the baseline

#: the CI baseline configuration (also what ``--ci-gate`` runs when no baseline exists yet)
CI_CONFIG: dict[str, Any] = {
    "model": "dymn-s",
    # one row per engine plus the quantized file a Pi would run; keeps the CI gate to minutes
    "formats": ["onnx:fp32", "tflite:fp32", "tflite:int8"],
    "window_s": 1.0,
    "lengths": [1.0],
    "threads": [1],
    "budget_s": 3.0,
}


@dataclass
class GateResult:
    """Outcome of a comparison: ``ok`` and one line per finding."""

    ok: bool = True
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: int = 0

    def fail(self, msg: str) -> None:
        self.ok = False
        self.failures.append(msg)

    def summary(self) -> str:
        head = (f"gate PASSED ({self.checked} checks)" if self.ok else
                f"gate FAILED: {len(self.failures)} of {self.checked} checks")
        lines = [head] + [f"  FAIL {m}" for m in self.failures] + [f"  note {m}" for m in self.notes]
        return "\n".join(lines)


def parse_percent(text: str | float) -> float:
    """``"15%"`` / ``"0.15"`` / ``15`` -> 0.15."""
    from dymn_edge.errors import DymnEdgeError  # noqa: PLC0415

    s = str(text).strip()
    try:
        if s.endswith("%"):
            v = float(s[:-1]) / 100.0
        else:
            v = float(s)
            v = v / 100.0 if v > 1.0 else v
    except ValueError:
        raise DymnEdgeError(f"--max-regression must look like 15% or 0.15, got '{text}'") from None
    if not 0.0 < v < 10.0:
        raise DymnEdgeError(f"--max-regression must be positive, got '{text}'")
    return v


def _rows(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in result.get("artifacts", [])}


def _ratio_cells(row: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for t, cell in (row.get("latency") or {}).items():
        for L, st in (cell.get("lengths") or {}).items():
            if st and st.get("ratio_to_gemm") is not None:
                out[(t, L)] = st
    return out


def _acc_tol(row: dict[str, Any], clips: int) -> float:
    if row.get("precision") == "int8":
        return INT8_ABS_TOL
    return FLOAT_CLIPS_TOL / clips + 1e-9 if clips else 1e-9


def compare(current: dict[str, Any], baseline: dict[str, Any], *,
            max_regression: float = DEFAULT_MAX_REGRESSION) -> GateResult:
    """Gate ``current`` against ``baseline`` (both dymn-bench result documents)."""
    res = GateResult()
    cur_rows, base_rows = _rows(current), _rows(baseline)
    if current.get("model", {}).get("name") != baseline.get("model", {}).get("name"):
        res.fail(f"model differs: run {current.get('model', {}).get('name')} vs baseline "
                 f"{baseline.get('model', {}).get('name')}")
    for name, b in base_rows.items():
        c = cur_rows.get(name)
        if b.get("status") == "failed":
            res.notes.append(f"{name}: failed in the baseline too, not gated (refresh the "
                             "baseline once it exports)")
            continue
        res.checked += 1
        if c is None:
            res.fail(f"{name}: in the baseline but not in this run")
            continue
        if c.get("status") == "failed":
            res.fail(f"{name}: failed in this run ({c.get('error', 'no message')})")
            continue
        # MACs: exact
        for key in ("macs", "deployed_macs", "graph_macs"):
            if b.get(key) is not None:
                res.checked += 1
                if c.get(key) != b[key]:
                    res.fail(f"{name}: {key} {c.get(key)} != baseline {b[key]} (MAC counts are "
                             "deterministic: the model or the export form changed)")
        # Latency as a ratio to the reference GEMM, for shipped files only: the eager PyTorch
        # row is a yardstick whose speed swings with torch's own threading, not an artifact.
        cur_cells = _ratio_cells(c)
        base_cells = {} if c.get("format") == "pytorch" else _ratio_cells(b)
        for (t, L), bst in base_cells.items():
            res.checked += 1
            cst = cur_cells.get((t, L))
            if cst is None:
                res.fail(f"{name}: no latency at {L} s, {t} thread(s) in this run")
                continue
            change = cst["ratio_to_gemm"] / bst["ratio_to_gemm"] - 1.0
            detail = (f"{name} @ {L} s, {t} thread(s): {cst['median_ms']:.2f} ms = "
                      f"{cst['ratio_to_gemm']:.3f} x GEMM ({cst['gemm_median_ms']:.2f} ms) vs "
                      f"baseline {bst['median_ms']:.2f} ms = {bst['ratio_to_gemm']:.3f} x GEMM "
                      f"({bst['gemm_median_ms']:.2f} ms): {change:+.1%}")
            if change > max_regression:
                res.fail(f"latency regression {detail} > +{max_regression:.0%} allowed")
            elif change < -SPEEDUP_NOTE:
                res.notes.append(f"faster than baseline, consider refreshing it: {detail}")
            else:
                log.info("latency ok: %s", detail)
        # Accuracy deltas vs the same run's reference
        bs, cs = b.get("scores"), c.get("scores")
        if bs:
            if not cs:
                res.checked += 1
                res.fail(f"{name}: accuracy in the baseline but not measured in this run "
                         f"({(current.get('accuracy') or {}).get('reason', 'no scores')})")
                continue
            clips = int(cs.get("clips") or bs.get("clips") or 0)
            tol = _acc_tol(c, clips)
            for key in ("accuracy", "map") if c.get("format") == "pytorch" else \
                    ("delta_accuracy", "delta_map"):
                if bs.get(key) is None:
                    continue
                res.checked += 1
                diff = (cs.get(key) or 0.0) - bs[key]
                if abs(diff) > tol:
                    res.fail(f"{name}: {key} {cs.get(key):+.4f} vs baseline {bs[key]:+.4f} "
                             f"(change {diff:+.4f}, tolerance {tol:.4f})")
    for name in cur_rows.keys() - base_rows.keys():
        res.notes.append(f"{name}: not in the baseline (not gated)")
    return res
