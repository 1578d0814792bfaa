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
- **DyMN / static MN latency ratio** (``ratio_to_static``: a DyMN file's median over the
  median of its MN partner's file of the same format and precision, measured interleaved in
  the same run, so it barely depends on the machine): its own check and threshold, fails when
  ``current ratio / baseline ratio - 1`` exceeds ``max_ratio_regression`` (default 25 %). A
  baseline without the MN rows skips it with a note (refresh the baseline to enable it).
- An artifact present in the baseline but failed or missing in the run fails the gate.
- The eager PyTorch reference row is gated on accuracy only, not latency: it is not a shipped
  artifact, and its speed on a shared 2-core runner swings several-fold with torch threading.

Refreshing the baseline (after an intended change, or a new CI machine type): run on the CI
machine type, from the repository root, the gate command of ``.ci/run`` with
``--write-baseline .ci/baselines/ci_dymn_s.json`` in place of ``--compare`` (the CI
configuration: DyMN-S with the weights and data the CI passes, a random-init MN-S as its static
partner for the ratio check, 1 s window, 1 thread, the formats listed in the baseline), review
the table it prints, and commit the JSON. The baseline is the CI's, not the package's: it lives
in ``.ci/``, and :func:`baseline_form` keeps the machine's folders and host name out of it.
``--ci-gate`` without ``--write-baseline`` re-runs the baseline's configuration and compares.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any
from dymn_edge.metadata import scrub_paths
from dymn_edge.errors import DymnEdgeError

log = logging.getLogger(__name__)

DEFAULT_MAX_REGRESSION = 0.15
DEFAULT_MAX_RATIO_REGRESSION = 0.25
REFRESH_COMMAND = ("the gate command of .ci/run with --write-baseline .ci/baselines/ci_dymn_s.json "
                   "instead of --compare")
FLOAT_CLIPS_TOL = 1  # clips
INT8_ABS_TOL = 0.01
SPEEDUP_NOTE = 0.30  # faster than this: suggest refreshing the baseline

#: the CI baseline configuration (also what ``--ci-gate`` runs when no baseline exists yet)
CI_CONFIG: dict[str, Any] = {
    # DyMN-S and its static partner MN-S, timed in one interleaved run: the DyMN-S / MN-S
    # latency ratio at 1 s, 1 thread is gated on its own (--max-ratio-regression)
    "model": "dymn-s,mn-s",
    # MN-S only serves the speed ratio: a seeded random init, no download, same graph
    "random_init_models": ["mn-s"],
    # one row per engine plus the quantized file a Pi would run; keeps the CI gate to minutes
    "formats": ["onnx:fp32", "tflite:fp32", "tflite:int8"],
    "window_s": 1.0,
    "lengths": [1.0],
    "threads": [1],
    "budget_s": 3.0,
}


def baseline_form(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` as a committed baseline: absolute paths cut to their last part, no host name.

    The gate reads ratios, MACs and accuracies; where the files and weights lay on the
    machine that measured them is nobody's business once the JSON is committed.
    """
    out = scrub_paths(copy.deepcopy(result))
    out.get("machine", {}).pop("hostname", None)
    return out


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


def parse_percent(text: str | float, flag: str = "--max-regression") -> float:
    """``"15%"`` / ``"0.15"`` / ``15`` -> 0.15; ``flag`` names the option in the error."""
    s = str(text).strip()
    try:
        if s.endswith("%"):
            v = float(s[:-1]) / 100.0
        else:
            v = float(s)
            v = v / 100.0 if v > 1.0 else v
    except ValueError:
        raise DymnEdgeError(f"{flag} must look like 15% or 0.15, got '{text}'") from None
    if not 0.0 < v < 10.0:
        raise DymnEdgeError(f"{flag} must be positive, got '{text}'")
    return v


def _models(result: dict[str, Any]) -> list[str]:
    """Models of a result document (older single-model documents: ``model.name``)."""
    return list(result.get("models") or [(result.get("model") or {}).get("name")])


def _rows(result: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Rows keyed by (model, name); rows without ``model`` belong to the document's model."""
    first = (result.get("model") or {}).get("name")
    return {(r.get("model") or first, r["name"]): r for r in result.get("artifacts", [])}


def _label(key: tuple[str, str]) -> str:
    return f"{key[0]} {key[1]}" if key[0] else key[1]


def _ratio_cells(row: dict[str, Any], what: str = "ratio_to_gemm"
                 ) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for t, cell in (row.get("latency") or {}).items():
        for L, st in ((cell or {}).get("lengths") or {}).items():
            if st and st.get(what) is not None:
                out[(t, L)] = st
    return out


def _acc_tol(row: dict[str, Any], clips: int) -> float:
    if row.get("precision") == "int8":
        return INT8_ABS_TOL
    return FLOAT_CLIPS_TOL / clips + 1e-9 if clips else 1e-9


def compare(current: dict[str, Any], baseline: dict[str, Any], *,
            max_regression: float = DEFAULT_MAX_REGRESSION,
            max_ratio_regression: float = DEFAULT_MAX_RATIO_REGRESSION) -> GateResult:
    """Gate ``current`` against ``baseline`` (both dymn-bench result documents).

    Per baseline row: it ran, its MACs are unchanged (exact), its latency relative to the
    reference GEMM did not regress, its accuracy deltas hold; then the DyMN / MN ratios.
    """
    res = GateResult()
    cur_rows, base_rows = _rows(current), _rows(baseline)
    missing = [m for m in _models(baseline) if m not in _models(current)]
    if missing:
        res.fail(f"model differs: baseline has {', '.join(map(str, missing))}, this run "
                 f"{', '.join(map(str, _models(current)))}")
    for key, b in base_rows.items():
        name = _label(key)
        c = cur_rows.get(key)
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
        _check_macs(res, name, c, b)
        _check_latency(res, name, c, b, max_regression)
        _check_accuracy(res, name, c, b, current)
    for key in sorted(cur_rows.keys() - base_rows.keys(), key=str):
        res.notes.append(f"{_label(key)}: not in the baseline (not gated)")
    _compare_static_ratios(res, cur_rows, base_rows, max_ratio_regression)
    return res


def _check_macs(res: GateResult, name: str, c: dict, b: dict) -> None:
    """MAC counts are deterministic: any change means the model or the export form changed."""
    for key in ("macs", "deployed_macs", "graph_macs"):
        if b.get(key) is not None:
            res.checked += 1
            if c.get(key) != b[key]:
                res.fail(f"{name}: {key} {c.get(key)} != baseline {b[key]} (MAC counts are "
                         "deterministic: the model or the export form changed)")


def _check_latency(res: GateResult, name: str, c: dict, b: dict, max_regression: float) -> None:
    """Latency as a ratio to the reference GEMM, for shipped files only: the eager PyTorch
    row is a yardstick whose speed swings with torch's own threading, not an artifact."""
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


def _check_accuracy(res: GateResult, name: str, c: dict, b: dict, current: dict) -> None:
    """Accuracy (PyTorch row) or accuracy deltas to the same run's reference (files)."""
    bs, cs = b.get("scores"), c.get("scores")
    if not bs:
        return
    if not cs:
        res.checked += 1
        res.fail(f"{name}: accuracy in the baseline but not measured in this run "
                 f"({(current.get('accuracy') or {}).get('reason', 'no scores')})")
        return
    clips = int(cs.get("clips") or bs.get("clips") or 0)
    tol = _acc_tol(c, clips)
    for key in ("accuracy", "map") if c.get("format") == "pytorch" else ("delta_accuracy", "delta_map"):
        if bs.get(key) is None:
            continue
        res.checked += 1
        diff = (cs.get(key) or 0.0) - bs[key]
        if abs(diff) > tol:
            res.fail(f"{name}: {key} {cs.get(key):+.4f} vs baseline {bs[key]:+.4f} "
                     f"(change {diff:+.4f}, tolerance {tol:.4f})")


def _compare_static_ratios(res: GateResult, cur_rows: dict, base_rows: dict,
                           max_ratio: float) -> None:
    """Gate each DyMN file's latency ratio to its static MN partner (same run, same engine).

    Shipped files only, like the latency check. A baseline that lacks the ratio (no MN rows)
    skips the check with a note, so CI keeps passing until the baseline is refreshed.
    """
    skipped: set[str] = set()
    for key, b in base_rows.items():
        if b.get("format") == "pytorch" or b.get("status") == "failed":
            continue
        c = cur_rows.get(key)
        cur_cells = _ratio_cells(c, "ratio_to_static") if c else {}
        base_cells = _ratio_cells(b, "ratio_to_static")
        if not base_cells:
            if cur_cells:
                skipped.add(str(c.get("static_model") or "static MN"))
            continue
        for (t, L), bst in base_cells.items():
            res.checked += 1
            cst = cur_cells.get((t, L))
            if cst is None:
                res.fail(f"{_label(key)}: no ratio to {b.get('static_model', 'its MN partner')} "
                         f"at {L} s, {t} thread(s) in this run (was the MN model run?)")
                continue
            change = cst["ratio_to_static"] / bst["ratio_to_static"] - 1.0
            detail = (f"{_label(key)} / {b.get('static_model', 'MN')} @ {L} s, {t} thread(s): "
                      f"{cst['ratio_to_static']:.3f} vs baseline {bst['ratio_to_static']:.3f}: "
                      f"{change:+.1%}")
            if change > max_ratio:
                res.fail(f"DyMN/MN ratio regression {detail} > +{max_ratio:.0%} allowed")
            elif change < -SPEEDUP_NOTE:
                res.notes.append(f"DyMN/MN ratio improved, consider refreshing the baseline: "
                                 f"{detail}")
            else:
                log.info("ratio ok: %s", detail)
    for partner in sorted(skipped):
        msg = (f"DyMN/MN ratio check skipped: the baseline has no {partner} rows (refresh it "
               f"with: {REFRESH_COMMAND})")
        log.warning(msg)
        res.notes.append(msg)
