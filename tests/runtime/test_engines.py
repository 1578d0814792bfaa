"""Engines: content-based format detection, metadata errors, int8 (de)quantization, the engine
table (ONNX Runtime, OpenVINO, LiteRT) and its ``auto`` rule."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dymn_edge.errors import DymnEdgeError, EngineError, MetadataError
from dymn_edge.runtime.engines import LiteRTEngine, OnnxEngine, load_engine, parse_delegate


def _mel(frames: int = 100, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(-0.5, 0.5, (1, 1, 128, frames)).astype(np.float32)


def test_both_formats_load_and_run(fsdd_model: Path) -> None:
    engine = load_engine(fsdd_model, threads=1)
    assert engine.metadata.num_classes == 10
    logits, emb = engine.run(_mel())
    assert logits.shape == (1, 10) and logits.dtype == np.float32
    assert emb.shape[0] == 1 and emb.ndim == 2
    assert np.isfinite(logits).all()
    assert engine.metadata.format in engine.describe()


def test_onnx_and_tflite_agree(fsdd_onnx: Path, fsdd_tflite: Path) -> None:
    from dymn_edge.runtime.tagger import Tagger

    a, b = Tagger(load_engine(fsdd_onnx, threads=1)), Tagger(load_engine(fsdd_tflite, threads=1))
    rng = np.random.default_rng(1)
    seg = (0.05 * rng.standard_normal(32000)).astype(np.float32)
    pa, pb = a.score(seg).probabilities, b.score(seg).probabilities
    assert np.abs(pa - pb).max() < 1e-3


def test_engine_chosen_by_content_not_name(fsdd_tflite: Path, fsdd_onnx: Path, tmp_path: Path) -> None:
    fake_onnx = tmp_path / "really_tflite.onnx"
    shutil.copy(fsdd_tflite, fake_onnx)
    assert isinstance(load_engine(fake_onnx), LiteRTEngine)
    fake_tflite = tmp_path / "really_onnx.tflite"
    shutil.copy(fsdd_onnx, fake_tflite)
    assert isinstance(load_engine(fake_tflite, engine="onnxruntime"), OnnxEngine)
    assert load_engine(fake_tflite).name in ("onnxruntime", "openvino")


def test_onnx_without_metadata_is_one_clear_error(fsdd_onnx: Path, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(fsdd_onnx))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(MetadataError, match="no dymn-edge metadata") as info:
        load_engine(bare)
    assert "\n" not in str(info.value)


def test_tflite_without_metadata_is_one_clear_error(fsdd_tflite: Path, tmp_path: Path) -> None:
    from ai_edge_litert import schema_py_generated as schema
    import flatbuffers

    buf = fsdd_tflite.read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buf, 0))
    model.metadata = [m for m in (model.metadata or []) if m.name != b"dymn_edge" and m.name != "dymn_edge"]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    bare = tmp_path / "bare.tflite"
    bare.write_bytes(bytes(builder.Output()))
    with pytest.raises(MetadataError, match="no dymn-edge metadata"):
        load_engine(bare)


@pytest.mark.parametrize("content", [b"", b"hello world, not a model" * 10, bytes(range(256)) * 8,
                                     b"\x08\x07garbage-protobuf" * 4])
def test_garbage_file_is_one_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(DymnEdgeError) as info:
        load_engine(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg


def test_truncated_tflite(fsdd_tflite: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.tflite"
    path.write_bytes(fsdd_tflite.read_bytes()[:4096])
    with pytest.raises(DymnEdgeError):
        load_engine(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match="not found"):
        load_engine(tmp_path / "nope.tflite")


def test_fixed_shape_rejects_other_lengths(fsdd_tflite: Path) -> None:
    engine = load_engine(fsdd_tflite)
    assert engine.fixed_frames == 100
    with pytest.raises(EngineError, match="exported for 100 frames"):
        engine.run(_mel(57))


def test_onnx_runs_any_length(fsdd_onnx: Path) -> None:
    engine = load_engine(fsdd_onnx)
    if engine.fixed_frames is not None:
        pytest.skip("this exporter writes fixed-time ONNX")
    for frames in (100, 250, 1000):
        assert engine.run(_mel(frames))[0].shape == (1, 10)


def test_batch_larger_than_graph_batch_is_split(fsdd_model: Path) -> None:
    engine = load_engine(fsdd_model)
    assert engine.input_spec.batch == 1  # the exporter's graphs take one clip: a batch of 3 must be split
    mel = np.concatenate([_mel(seed=s) for s in range(3)])
    calls: list[int] = []
    graph_run = engine._run_batch
    engine._run_batch = lambda x: (calls.append(x.shape[0]), graph_run(x))[1]
    batched = engine.run(mel)[0]
    assert calls == [1, 1, 1] and batched.shape == (3, 10)  # three graph runs of one clip each
    single = np.concatenate([engine.run(mel[i:i + 1])[0] for i in range(3)])
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-4)


def test_missing_engine_names_pip_command(fsdd_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith(("onnxruntime", "onnx")):
            raise ImportError(f"No module named '{name}'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(EngineError, match=r"pip install 'dymn-edge\[onnx\]'"):
        load_engine(fsdd_onnx, engine="onnxruntime")


def test_missing_litert_names_pip_command(fsdd_tflite: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith(("ai_edge_litert", "tflite_runtime")):
            raise ImportError(f"No module named '{name}'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(EngineError, match=r"pip install 'dymn-edge\[litert\]'"):
        load_engine(fsdd_tflite)


# LiteRT's Delegate.__del__ raises when load_delegate failed half-way (upstream, harmless)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_delegate_options(fsdd_tflite: Path) -> None:
    assert parse_delegate("libedgetpu.so.1") == ("libedgetpu.so.1", {})
    assert parse_delegate("/opt/npu/libdelegate.so:device=0,cache=/tmp") == \
        ("/opt/npu/libdelegate.so", {"device": "0", "cache": "/tmp"})
    ref = load_engine(fsdd_tflite, delegate="xnnpack").run(_mel())[0]
    plain = load_engine(fsdd_tflite, delegate="none").run(_mel())[0]
    np.testing.assert_allclose(ref, plain, atol=1e-3, rtol=1e-3)
    with pytest.raises(EngineError, match="cannot load LiteRT delegate"):
        load_engine(fsdd_tflite, delegate="libno_such_delegate.so")


def test_int8_io_is_quantized_and_dequantized(tmp_path: Path, fsdd_onnx: Path) -> None:
    """A tiny ONNX graph with int8 input and outputs: the engine quantizes with the metadata's
    input scale / zero point and dequantizes the outputs (checked against NumPy)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from dymn_edge.metadata import ModelMetadata, TensorInfo, read_metadata

    base = read_metadata(fsdd_onnx)
    s_in, z_in, s_out, z_out = 0.05, -3, 0.1, 5
    w = np.random.default_rng(0).normal(0, 0.02, (128 * 100, 10)).astype(np.float32)
    nodes = [
        helper.make_node("DequantizeLinear", ["mel", "s_in", "z_in"], ["x"]),
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "s_out", "z_out"], ["logits"]),
        helper.make_node("QuantizeLinear", ["flat", "s_out", "z_out"], ["embedding"]),
    ]
    inits = [helper.make_tensor("s_in", TensorProto.FLOAT, [], [s_in]),
             helper.make_tensor("z_in", TensorProto.INT8, [], [z_in]),
             helper.make_tensor("s_out", TensorProto.FLOAT, [], [s_out]),
             helper.make_tensor("z_out", TensorProto.INT8, [], [z_out]),
             helper.make_tensor("shape", TensorProto.INT64, [2], [1, -1]),
             onnx.numpy_helper.from_array(w, "w")]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("mel", TensorProto.INT8, [1, 1, 128, 100])],
                              [helper.make_tensor_value_info("logits", TensorProto.INT8, [1, 10]),
                               helper.make_tensor_value_info("embedding", TensorProto.INT8, [1, 12800])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = ModelMetadata(**{**base.__dict__, "dynamic_time": False, "precision": "int8",
                            "inputs": [TensorInfo("mel", [1, 1, 128, 100], "int8", s_in, z_in)],
                            "outputs": [TensorInfo("logits", [1, 10], "int8", s_out, z_out),
                                        TensorInfo("embedding", [1, 12800], "int8", s_out, z_out)]})
    prop = model.metadata_props.add()
    prop.key, prop.value = "dymn_edge", meta.to_json()
    path = tmp_path / "q.onnx"
    onnx.save(model, str(path))

    engine = load_engine(path)
    mel = _mel()
    logits, emb = engine.run(mel)
    q = np.clip(np.round(mel / s_in) + z_in, -128, 127)
    xd = (q - z_in) * s_in
    y = xd.reshape(1, -1) @ w
    expect = (np.clip(np.round(y / s_out) + z_out, -128, 127) - z_out) * s_out
    assert logits.dtype == np.float32 and emb.dtype == np.float32
    np.testing.assert_allclose(logits, expect, atol=s_out * 1.01)


# ---------------------------------------------------------------------------------------
# The engine table: OpenVINO for ONNX files, the auto rule, one set of delegate aliases


def _block_imports(monkeypatch: pytest.MonkeyPatch, prefixes: tuple[str, ...]) -> None:
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith(prefixes):
            raise ImportError(f"No module named '{name}'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)


def test_openvino_matches_onnxruntime_at_two_lengths_and_batch(fsdd_onnx: Path) -> None:
    """Same file, two engines: logits and embeddings within the batch-split tolerance (1e-4),
    at the window, a longer length and a batch of 3; OpenVINO compiled fp32."""
    pytest.importorskip("openvino")
    from dymn_edge.runtime.engine_openvino import OpenVINOEngine

    ort = load_engine(fsdd_onnx, threads=1, engine="onnxruntime")
    ov = load_engine(fsdd_onnx, threads=1, engine="openvino")
    assert isinstance(ov, OpenVINOEngine) and ov.name == "openvino"
    assert ov.config["INFERENCE_PRECISION_HINT"] == "f32" and ov.config["INFERENCE_NUM_THREADS"] == 1
    for frames in (100, 250):
        mel = np.concatenate([_mel(frames, seed=s) for s in range(3)])
        a, b = ort.run(mel), ov.run(mel)
        for x, y in zip(a, b):
            assert x.shape == y.shape and y.dtype == np.float32
            np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-4)
        assert not np.allclose(a[0][0], a[0][1])  # three different inputs, not one repeated
    assert (1, 1, 128, 250) in ov._compiled  # one static compilation per shape
    single = ov.run(_mel(250, seed=1))[0]
    np.testing.assert_allclose(single[0], ov.run(np.concatenate([_mel(250, seed=s) for s in range(3)]))[0][1],
                               rtol=1e-5, atol=1e-5)


def test_openvino_tagger_agrees_with_onnxruntime(fsdd_onnx: Path) -> None:
    pytest.importorskip("openvino")
    from dymn_edge.runtime.tagger import Tagger

    a = Tagger(load_engine(fsdd_onnx, threads=1, engine="onnxruntime"))
    b = Tagger(load_engine(fsdd_onnx, threads=1, engine="openvino"))
    seg = (0.05 * np.random.default_rng(1).standard_normal(32000)).astype(np.float32)
    assert np.abs(a.score(seg).probabilities - b.score(seg).probabilities).max() < 1e-4


@pytest.mark.torch
def test_openvino_file_validates_against_pytorch(fsdd_onnx: Path, fsdd_weights: Path) -> None:
    """The export's parity check (float64 PyTorch oracle, the ONNX fp32 tolerance) with the file
    run by OpenVINO through the engine table: every case judged and passed."""
    pytest.importorskip("openvino")
    from dymn_edge.export import validate as v
    from dymn_edge.export.formats import FORMATS, Format
    from dymn_edge.metadata import read_metadata
    from dymn_edge.models import create_model

    model = create_model("dymn-s", weights=fsdd_weights)
    meta = read_metadata(fsdd_onnx)
    engine = v.load_file(fsdd_onnx, engine="openvino")
    assert engine.name == "openvino" and v.load_file(fsdd_onnx).name == "onnxruntime"  # default: ORT
    report = v.ValidationReport(engine=engine.name, audio="", precision="fp32")
    v.check_parity(engine.run, v.torch_runner(model), window_seconds=meta.window_seconds,
                   fc=meta.frontend_config, dynamic_time=meta.dynamic_time,
                   tolerance=FORMATS[Format.ONNX].tolerance["fp32"], report=report,
                   reference64=v.torch64_runner(model))
    assert report.passed, report.errors
    assert report.judged_cases >= 2 and all(c.ok for c in report.checks if not c.ill_conditioned)


def test_auto_rule_and_engine_table(fsdd_onnx: Path, fsdd_tflite: Path) -> None:
    from dymn_edge.runtime.engines import ENGINE_CHOICES, ENGINES, auto_order

    assert ENGINE_CHOICES == ("auto", "onnxruntime", "openvino", "litert")
    assert {(e.format, e.name) for e in ENGINES} == {("onnx", "onnxruntime"), ("onnx", "openvino"),
                                                     ("tflite", "litert")}
    assert [e.name for e in ENGINES if e.validates] == ["onnxruntime", "litert"]
    assert [e.name for e in auto_order("onnx", "fp32", "dymn-m", 1.0)] == ["openvino", "onnxruntime"]
    assert [e.name for e in auto_order("onnx", "int8", "dymn-m", 1.0)] == ["onnxruntime", "openvino"]
    assert [e.name for e in auto_order("tflite", "fp32", "dymn-m", 1.0)] == ["litert"]
    # static MobileNets: ONNX Runtime below the measured crossover window, OpenVINO from it on
    assert [e.name for e in auto_order("onnx", "fp32", "mn-s", 1.0)] == ["onnxruntime", "openvino"]
    assert [e.name for e in auto_order("onnx", "fp32", "mn-m", 10.0)] == ["openvino", "onnxruntime"]
    if importlib.util.find_spec("openvino") is not None:
        assert load_engine(fsdd_onnx).name == "openvino"  # fp32 DyMN-S
    assert load_engine(fsdd_tflite, engine="auto").name in ("litert", "tflite_runtime")


def test_auto_falls_back_when_openvino_is_missing(fsdd_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _block_imports(monkeypatch, ("openvino",))
    assert isinstance(load_engine(fsdd_onnx), OnnxEngine)
    with pytest.raises(EngineError, match=r"pip install 'dymn-edge\[openvino\]'"):
        load_engine(fsdd_onnx, engine="openvino")


def test_no_onnx_engine_names_both_installs(fsdd_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _block_imports(monkeypatch, ("openvino", "onnxruntime", "onnx"))
    with pytest.raises(EngineError) as info:
        load_engine(fsdd_onnx)
    msg = str(info.value)
    assert "dymn-edge[onnx]" in msg and "dymn-edge[openvino]" in msg and "\n" not in msg


def test_engine_for_the_wrong_format_is_one_line(fsdd_onnx: Path, fsdd_tflite: Path) -> None:
    with pytest.raises(EngineError, match="--engine openvino does not run tflite files"):
        load_engine(fsdd_tflite, engine="openvino")
    with pytest.raises(EngineError, match="--engine litert does not run onnx files"):
        load_engine(fsdd_onnx, engine="litert")
    with pytest.raises(EngineError, match="unknown engine 'tvm'"):
        load_engine(fsdd_onnx, engine="tvm")
    for engine in ("auto", "openvino", "onnxruntime"):
        with pytest.raises(EngineError, match="--delegate applies to TFLite files"):
            load_engine(fsdd_onnx, engine=engine, delegate="none")


def test_one_set_of_delegate_aliases(fsdd_tflite: Path) -> None:
    from dymn_edge.runtime.engines import DELEGATE_ALIASES

    for alias in DELEGATE_ALIASES:
        assert load_engine(fsdd_tflite, delegate=alias.upper()).delegate == alias.upper()
        with pytest.raises(EngineError, match="takes no options"):
            parse_delegate(f"{alias}:threads=2")


def test_onnx_metadata_props_without_onnx_packages(fsdd_onnx: Path, tmp_path: Path) -> None:
    """The wire-format reader OpenVINO's engine uses: the same props as ONNX Runtime reads."""
    from dymn_edge.runtime.onnx_props import read_onnx_metadata_props

    props = read_onnx_metadata_props(fsdd_onnx)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(fsdd_onnx), providers=["CPUExecutionProvider"])
    assert props == dict(session.get_modelmeta().custom_metadata_map) and "dymn_edge" in props
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(fsdd_onnx.read_bytes()[:-100])
    with pytest.raises(MetadataError, match="not a readable ONNX file"):
        read_onnx_metadata_props(cut)


def test_openvino_engine_imports_no_torch_nor_onnxruntime(fsdd_onnx: Path) -> None:
    """In a fresh process: loading and running a file in OpenVINO imports neither torch nor
    the ONNX packages (the metadata is read from the wire format)."""
    pytest.importorskip("openvino")
    code = ("import sys, numpy as np; from dymn_edge.runtime.engines import load_engine; "
            f"e = load_engine({str(fsdd_onnx)!r}, threads=1, engine='openvino'); "
            "e.run(np.zeros((1, 1, 128, 100), np.float32)); "
            "print([m for m in ('torch', 'onnx', 'onnxruntime', 'litert_torch') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_openvino_shapes_beyond_the_cache_share_one_dynamic_compilation(fsdd_onnx: Path) -> None:
    """Static compilations up to MAX_SHAPES, then one dynamic-shape compilation for the rest:
    alternating lengths never recompile per call, and every length still matches ONNX Runtime."""
    pytest.importorskip("openvino")
    ov = load_engine(fsdd_onnx, threads=1, engine="openvino")
    ort = load_engine(fsdd_onnx, threads=1, engine="onnxruntime")
    lengths = (100, 120, 140, 160, 180, 200, 120, 180)
    for frames in lengths:
        np.testing.assert_allclose(ov.run(_mel(frames))[0], ort.run(_mel(frames))[0], rtol=1e-4, atol=1e-4)
    assert len(ov._compiled) == ov.MAX_SHAPES + 1 and () in ov._compiled
    assert {(1, 1, 128, t) for t in lengths[:ov.MAX_SHAPES]} <= set(ov._compiled)


def test_dymn_tag_engine_option(fsdd_onnx: Path, fsdd_tflite: Path, fsdd_test_clips: list,
                                tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--engine openvino`` tags like ``--engine onnxruntime`` (same top tag, probabilities within
    1e-4), also through an archive worker; the wrong engine for the file is exit 2, one line."""
    pytest.importorskip("openvino")
    import json

    from dymn_edge.runtime.cli import tag_main

    clip = str(fsdd_test_clips[3][0])
    outs = {}
    for engine in ("onnxruntime", "openvino"):
        assert tag_main(["--model", str(fsdd_onnx), "--engine", engine, "--json", "--threads", "1", clip]) == 0
        outs[engine] = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    a, b = outs["onnxruntime"]["tags"], outs["openvino"]["tags"]
    assert [t["label"] for t in a] == [t["label"] for t in b]
    assert max(abs(x["probability"] - y["probability"]) for x, y in zip(a, b)) < 1e-4
    out = tmp_path / "tags.jsonl"
    assert tag_main(["--model", str(fsdd_onnx), "--engine", "openvino", "--output", str(out), clip]) == 0
    assert out.read_text().strip()
    capsys.readouterr()
    assert tag_main(["--model", str(fsdd_tflite), "--engine", "openvino", clip]) == 2
    err = capsys.readouterr().err.strip()
    assert "--engine openvino does not run tflite files" in err and len(err.splitlines()) == 1
