"""Full-integer int8 TFLite of the trained FSDD DyMN-S: integer-only graph, accuracy near fp32.

One conversion + calibration (about 60-90 s on 2 cores): marked slow.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("ai_edge_quantizer")
pytest.importorskip("litert_torch")


def _logits(path, mels: np.ndarray, classes: int) -> np.ndarray:
    """Float logits of a metadata-less TFLite file, one clip at a time (int8 I/O handled)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    out = next(o for o in it.get_output_details() if o["shape"][-1] == classes)
    rows = []
    for i in range(len(mels)):
        x = mels[i:i + 1].reshape(inp["shape"])
        if inp["dtype"] == np.int8:
            s, z = inp["quantization"]
            x = np.clip(np.round(x / s + z), -128, 127)
        it.set_tensor(inp["index"], x.astype(inp["dtype"]))
        it.invoke()
        y = it.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] == np.int8:
            s, z = out["quantization"]
            y = (y - z) * s
        rows.append(y.reshape(-1))
    return np.stack(rows)


@pytest.fixture(scope="module")
def parts(fsdd_dir, fsdd_weights):
    """Export-form model, frames, calibration mels, 100 test mels, labels, PyTorch logits."""
    import torch

    from dymn_edge.datasets import fsdd_eval_wave, load_dataset
    from dymn_edge.export.calibration import _spread, calibration_mels, mel_frames, to_mel
    from dymn_edge.export.config import CalibrationConfig
    from dymn_edge.frontend import FrontendConfig
    from dymn_edge.models import create_model
    from dymn_edge.models.patcher import make_exportable

    fc = FrontendConfig()
    frames = mel_frames(1.0, fc)
    model = make_exportable(create_model("dymn-s", weights=fsdd_weights), "static_k")
    # 64 FSDD train clips (the exporter has no default set: the calibration folder is passed)
    calib = calibration_mels(CalibrationConfig(fsdd_dir, 64), 1.0, fc).mels
    clips = _spread(load_dataset(fsdd_dir, split="test").clips, 100)
    mels = np.concatenate([to_mel(fsdd_eval_wave(c.path), fc, frames) for c in clips])
    labels = np.array([c.targets[0] for c in clips])
    with torch.no_grad():
        ref = model(torch.from_numpy(mels))[0].numpy()
    return model, frames, calib, mels, labels, ref


@pytest.fixture(scope="module")
def full_int8(tmp_path_factory, parts):
    from dymn_edge.export.full_int8 import quantize_full_int8_tflite

    model, frames, calib, mels, labels, ref = parts
    path = tmp_path_factory.mktemp("full_int8") / "dymn-s_fsdd_full_int8.tflite"
    info = quantize_full_int8_tflite(model, frames, calib, path)
    return path, info, mels, labels, ref


@pytest.mark.slow
def test_int8_with_xnnpack_refused_ops_float_is_one_xnnpack_graph(tmp_path, parts):
    """int8 convs / FC, float SOFTMAX / HARD_SWISH / MAXIMUM / BATCH_MATMUL: nothing outside XNNPACK."""
    from dymn_edge.export.full_int8 import XNNPACK_FLOAT_OPS, quantize_full_int8_tflite
    model, frames, calib, mels, labels, ref = parts
    path = tmp_path / "hybrid.tflite"
    info = quantize_full_int8_tflite(model, frames, calib, path, float_ops=XNNPACK_FLOAT_OPS)
    assert info["outside_xnnpack"] == {}, info["outside_xnnpack"]
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
        assert op not in info["float_ops"], info["float_ops"]
    assert "float: SOFTMAX" in info["scheme"]
    logits = _logits(path, mels, ref.shape[1])
    acc, acc_ref = float((logits.argmax(1) == labels).mean()), float((ref.argmax(1) == labels).mean())
    assert acc >= acc_ref - 0.03, (acc, acc_ref)  # measured 0.953 vs 0.970 on the 300 clips


@pytest.mark.slow
def test_full_int8_has_no_float_compute(full_int8):
    _, info, *_ = full_int8
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL"):
        assert info["ops"].get(op, 0) > 0 or op == "BATCH_MATMUL"
        assert op not in info["float_ops"], info["float_ops"]
    assert info["float_ops"] == {}, info["float_ops"]  # nothing float at all, I/O included
    assert "DEQUANTIZE" not in info["ops"]
    assert set(info["io_dtype"].values()) == {"int8"}


@pytest.mark.slow
def test_full_int8_accuracy_close_to_fp32(full_int8):
    from ai_edge_litert.interpreter import Interpreter

    path, _, mels, labels, ref = full_int8
    # a bare quantizer output (no dymn-edge metadata, so not a runtime engine's file): the
    # graph's own int8 I/O parameters
    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    (i_s, i_z), d_in = it.get_input_details()[0]["quantization"], it.get_input_details()[0]
    d_out = next(d for d in it.get_output_details() if d["shape"][-1] == 10)
    logits = []
    for m in mels:
        it.set_tensor(d_in["index"], np.clip(np.round(m[None] / i_s) + i_z, -128, 127).astype(np.int8))
        it.invoke()
        logits.append(it.get_tensor(d_out["index"])[0].astype(np.float32))
    logits = np.stack(logits)
    acc = float((logits.argmax(1) == labels).mean())
    acc_ref = float((ref.argmax(1) == labels).mean())
    assert acc_ref >= 0.9
    assert acc >= acc_ref - 0.05, (acc, acc_ref)


@pytest.mark.slow
def test_full_int8_within_the_default_bound_on_a_held_out_speaker(fsdd_export):
    """The session's --full-int8 export (calibration: the FSDD folder) is held to the default
    --max-int8-drop on a speaker calibration never heard (measured: 0.9840 vs fp32 0.9720 on 250
    of yweweler's clips, top-1 agreement 98.0 %, logits SQNR 16.7 dB); no recipe to fall back to."""
    from dymn_edge.metadata import read_metadata

    meta = read_metadata(fsdd_export("tflite", "full_int8").path)
    held = meta.calibration["heldout"]
    (check,) = held["checks"]
    assert held["kept"] == "full_int8" == check["recipe"] and held["bound_points"] == 0.5
    assert held["split"].startswith("speaker yweweler held out (500 clips; calibration from george")
    assert check["clips"] == 250 and check["measure"] == "accuracy" and check["drop_points"] <= 0.5
    assert check["top1_agreement"] >= 0.95 and check["sqnr_db"] > 12.0
    assert "held-out check (speaker yweweler" in meta.quantization  # what dymn-info prints
