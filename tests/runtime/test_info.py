"""dymn-info: what a model file is, from its own metadata; no folder of the export machine inside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, shared_root
from dymn_edge.runtime.info import main


def test_info_of_the_fsdd_file(fsdd_onnx: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(fsdd_onnx)]) == 0
    out = capsys.readouterr().out
    for words in ("dymn-s", "1-of-N classification (softmax over 10 classes)", "10: zero, one",
                  "1 s = 100 frames, any length (dynamic time)", "fp32 (no quantization)",
                  "passed in onnxruntime", "to PyTorch float64", "PyTorch fp32's own distance",
                  "accuracy on fsdd:test (300 clips): 0.9",
                  "log-mel 128 bands, 32000 Hz", "dymn-edge", "torch"):
        assert words in out, (words, out)
    assert "UNTRAINED" not in out


def test_info_names_the_engines_in_auto_order(fsdd_onnx: Path, fsdd_tflite: Path, capsys) -> None:
    """An fp32 DyMN ONNX file: OpenVINO first (auto's measured rule), then ONNX Runtime."""
    import importlib.util

    assert main([str(fsdd_onnx)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("engines"))
    assert line.index("openvino") < line.index("onnxruntime")
    if importlib.util.find_spec("openvino") is not None:
        assert line.endswith("--engine auto: openvino")
    assert main([str(fsdd_tflite)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("engines"))
    assert "litert" in line and "onnx" not in line


@pytest.mark.parametrize("precision,scheme", [("int8", "int8_weight_only"), ("full_int8", "full_int8")])
def test_int8_schemes_are_told_apart(fsdd_export, precision: str, scheme: str, capsys) -> None:
    path = fsdd_export("tflite", precision).path
    assert main(["--json", str(path)]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["precision"] == "int8" and meta["quantization_scheme"] == scheme
    assert main([str(path)]) == 0
    assert f"[{scheme}]" in capsys.readouterr().out


def test_no_export_machine_paths_in_metadata(fsdd_onnx: Path, capsys) -> None:
    assert main(["--json", str(fsdd_onnx)]) == 0
    text = capsys.readouterr().out
    meta = json.loads(text)
    assert meta["weights_source"] == "fsdd_dymn04.pt" and meta["task"] == "1-of-N classification"
    for folder in {str(REPO), str(shared_root()), str(Path.home()), str(fsdd_onnx.parent), "/tmp/"}:
        assert folder not in text, folder


def test_untrained_and_unvalidated_files_say_so(fsdd_onnx: Path, tmp_path: Path, capsys) -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(fsdd_onnx))
    for p in model.metadata_props:
        if p.key == "dymn_edge":
            d = json.loads(p.value)
            d.update(untrained=True, validation={"passed": None, "skipped": True})
            p.value = json.dumps(d)
    path = tmp_path / "untrained.onnx"
    onnx.save(model, str(path))
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "UNTRAINED" in out and "NOT validated" in out


def test_not_a_model_file_is_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"hello")
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dymn-info: error:")


def test_waveform_file_is_described_as_waveform_in(fsdd_onnx: Path) -> None:
    """A --waveform file takes samples, not log-mel frames: dymn-info says so."""
    import dataclasses

    from dymn_edge.metadata import read_metadata
    from dymn_edge.runtime.info import describe

    meta = read_metadata(fsdd_onnx)
    wave = dataclasses.replace(meta, input_kind="waveform")
    text = describe(wave)
    assert "1 s = 32000 samples of mono 32000 Hz waveform in, probabilities out" in text
    assert "frames" not in text.split("window", 1)[1].splitlines()[0]
    assert "in the graph: log-mel 128 bands" in text
    assert "1 s = 100 frames" in describe(meta)
