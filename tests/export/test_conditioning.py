"""Validation on ill-conditioned checkpoints: correct files pass, planted bugs still fail.

The golden DyMN-S (random weights, BatchNorm statistics from real audio) is driven far out of
its domain by the parity speech: logits of 1e5-1e10, PyTorch fp32 up to 12 % off float64, so
two correct fp32 implementations disagree there. Those cases are reported, not judged; the
same audio quieter / under noise is judged strictly in their place (issue 24, section 1).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dymn_edge.export import validate as v
from dymn_edge.registry import get_spec

from conftest import require_file

FC = get_spec("dymn-s").frontend


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """PyTorch on one thread here: the oracle runs dozens of small batches on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def golden():
    from dymn_edge.models import create_model

    return create_model("dymn-s", weights=require_file("reference/golden_dymn04.pt"))


@pytest.fixture(scope="module")
def fsdd(fsdd_weights: Path):
    from dymn_edge.models import create_model

    return create_model("dymn-s", weights=fsdd_weights)


class FixedLengthPool(nn.Module):
    """The export form with its time pooling baked to the 1 s window (a real export bug)."""

    def __init__(self, form: nn.Module) -> None:
        super().__init__()
        self.form = form
        with torch.no_grad():
            feat = form.features(torch.zeros(1, 1, FC.n_mels, 100))
        self.cells = feat.shape[2] * feat.shape[3]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embed = self.form.features(x).sum((2, 3)) / self.cells
        return self.form.classifier(embed), embed


def _bn_bug(model: nn.Module) -> nn.Module:
    """A BatchNorm 2 % off."""
    buggy = copy.deepcopy(model)
    bns = [m for m in buggy.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        bns[len(bns) // 2].weight.mul_(1.02)
    return buggy


def _judge(file_model: nn.Module, model: nn.Module, dynamic_time: bool = True, cases=None,
           tolerance: float = 1e-3) -> v.ValidationReport:
    rep = v.ValidationReport(engine="torch", audio="", precision="fp32")
    v.check_parity(v.torch_runner(file_model), v.torch_runner(model), window_seconds=1.0, fc=FC,
                   dynamic_time=dynamic_time, tolerance=tolerance, report=rep,
                   reference64=v.torch64_runner(model), cases=cases)
    return rep


@pytest.mark.parametrize("dynamic_time", [True, False])
def test_correct_golden_export_form_passes_and_names_ill_conditioned(golden, dynamic_time) -> None:
    from dymn_edge.models.patcher import make_exportable

    rep = _judge(make_exportable(golden, "runtime_weight"), golden, dynamic_time)
    assert rep.passed, rep.errors
    assert not rep.warnings
    ill = rep.summary()["ill_conditioned"]
    assert ill and all(c["relative_fp32_error"] > v.ILL_CONDITIONED for c in ill)
    originals = v.parity_cases(1.0, FC, dynamic_time)[0]
    assert {c["case"] for c in ill} == {label for label, _ in originals}  # all: loud speech
    judged = [c for c in rep.checks if not c.ill_conditioned]
    assert rep.judged_cases >= 1 and all(" dB" in c.case for c in judged)  # the stand-ins
    assert all(c.relative_fp32_error <= v.ILL_CONDITIONED and c.max_abs_diff <= c.allowed < 2e-3
               for c in judged), [(c.case, c.max_abs_diff, c.allowed) for c in judged]


@pytest.mark.parametrize("bug", ["batchnorm", "pooling"])
@pytest.mark.parametrize("which", ["golden", "fsdd"])
def test_planted_bugs_still_fail(golden, fsdd, which, bug) -> None:
    """A 2 % BatchNorm and a pooling baked to the 1 s window fail on well-conditioned cases."""
    from dymn_edge.models.patcher import make_exportable

    model = golden if which == "golden" else fsdd
    buggy = _bn_bug(model) if bug == "batchnorm" else FixedLengthPool(make_exportable(model, "runtime_weight"))
    rep = _judge(buggy, model)
    assert not rep.passed
    failed = {e.split(":")[0] for e in rep.errors}
    judged = {c.case for c in rep.checks if not c.ill_conditioned}
    assert failed and failed <= judged, (failed, judged)  # only judged cases fail the file
    if bug == "pooling":  # exact at the window, wrong at the other lengths
        assert not any(e.startswith("1 s @") for e in rep.errors)


def test_no_well_conditioned_case_warns(golden) -> None:
    """Given cases only (no stand-ins to try), all ill-conditioned: passes, but says so."""
    from dymn_edge.models.patcher import make_exportable

    cases = v.parity_cases(1.0, FC, True)[0]
    rep = _judge(make_exportable(golden, "runtime_weight"), golden, cases=cases)
    assert rep.passed and rep.judged_cases == 0
    assert rep.warnings and "NOT judged strictly" in rep.warnings[0]
    assert rep.summary()["warnings"] == rep.warnings


def test_quieter_cases_keep_shapes_and_differ(golden) -> None:
    """A stand-in is the same segment (same shape), quieter and with seeded noise."""
    base = v.parity_cases(1.0, FC, True)[0]
    for level in v.LEVELS:
        alt = v.parity_cases(1.0, FC, True, level=level)[0]
        assert [x.shape for _, x in alt] == [x.shape for _, x in base]
        assert all(not np.array_equal(a, b) for (_, a), (_, b) in zip(alt, base))
    wave = v.parity_cases(1.0, FC, True, waveform_samples=32000, level=(0.1, 0.0))[0]
    loud = v.parity_cases(1.0, FC, True, waveform_samples=32000)[0]
    np.testing.assert_allclose(wave[0][1], loud[0][1] * np.float32(0.1), rtol=1e-6)


@pytest.mark.parametrize("fmt,precision,window", [
    ("onnx", "fp32", 1.0),  # ~20 s: the file issue 24 quotes, in the default run
    pytest.param("onnx", "fp32", None, marks=pytest.mark.slow),
    pytest.param("tflite", "fp32", None, marks=pytest.mark.slow),
    pytest.param("tflite", "fp16", None, marks=pytest.mark.slow)])
def test_golden_checkpoint_exports_with_validation(tmp_path, fmt, precision, window) -> None:
    """The files issue 24 saw rejected: validated, passed, ill-conditioned cases in the report."""
    from dymn_edge.export.api import export_model
    from dymn_edge.export.config import ExportConfig
    from dymn_edge.runtime.info import describe

    weights = require_file("reference/golden_dymn04.pt")
    res = export_model(ExportConfig(model="dymn-s", weights=weights, format=fmt, precision=precision,
                                    window_seconds=window, output=tmp_path / f"golden.{fmt}"),
                       progress=False)
    rep = res.report
    assert rep["passed"] is True and not rep["errors"]
    assert rep["ill_conditioned"] and rep["judged_cases"] >= 1
    assert all(c["max_abs_diff"] <= c["allowed"] for c in rep["checks"] if not c["ill_conditioned"])
    text = describe(res.metadata)
    assert "ill-conditioned, not judged" in text and rep["ill_conditioned"][0]["case"] in text


def _bn_from_real_audio(model: nn.Module, fsdd_dir: Path) -> nn.Module:
    """Random weights, BatchNorm running statistics from real speech (then eval)."""
    from dymn_edge.audio import read_audio
    from dymn_edge.export.calibration import to_mel

    waves = [read_audio(p) for p in sorted((fsdd_dir).rglob("*.wav"))[:48]]
    mels = np.concatenate([to_mel(w, FC, 100) for w in waves])
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
    model.train()
    with torch.no_grad():
        for i in range(0, len(mels), 8):
            model(torch.from_numpy(mels[i:i + 8]))
    return model.eval()


@pytest.mark.slow
def test_dymn_m_with_real_audio_batchnorm_exports_with_validation(tmp_path, fsdd_dir) -> None:
    from dymn_edge.export.api import export_model
    from dymn_edge.export.config import ExportConfig
    from dymn_edge.models import create_model

    model = _bn_from_real_audio(create_model("dymn-m", pretrained=False, seed=3), fsdd_dir)
    weights = tmp_path / "dymn_m_bn.pt"
    torch.save(model.state_dict(), weights)
    for fmt in ("onnx", "tflite"):
        res = export_model(ExportConfig(model="dymn-m", weights=weights, format=fmt, window_seconds=1.0,
                                        output=tmp_path / f"m.{fmt}"), progress=False)
        assert res.report["passed"] is True and res.report["judged_cases"] >= 1, res.report["errors"]
