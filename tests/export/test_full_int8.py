"""Full-integer int8 TFLite of the trained FSDD DyMN-S: integer-only graph, accuracy near fp32.

One conversion + calibration (about 60-90 s on 2 cores): marked slow.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("ai_edge_quantizer")
pytest.importorskip("litert_torch")


@pytest.fixture(scope="module")
def full_int8(tmp_path_factory, fsdd_dir, fsdd_weights):
    import torch

    from dymn_edge.datasets import fsdd_eval_wave, load_dataset
    from dymn_edge.export.calibration import _spread, calibration_mels, mel_frames, to_mel
    from dymn_edge.export.full_int8 import quantize_full_int8_tflite
    from dymn_edge.frontend import FrontendConfig
    from dymn_edge.models import create_model
    from dymn_edge.models.patcher import make_exportable

    fc = FrontendConfig()
    frames = mel_frames(1.0, fc)
    model = make_exportable(create_model("dymn-s", weights=fsdd_weights), "static_k")
    # the exporter's default set: 64 FSDD train clips + 4 metro-recording segments (out of
    # domain; the p5/p95 ranges must ignore them, p1/p99 gave 0.41 here)
    calib = calibration_mels(None, 64, 1.0, fc).mels
    path = tmp_path_factory.mktemp("full_int8") / "dymn-s_fsdd_full_int8.tflite"
    info = quantize_full_int8_tflite(model, frames, calib, path)
    clips = _spread(load_dataset(fsdd_dir, split="test").clips, 100)
    mels = np.concatenate([to_mel(fsdd_eval_wave(c.path), fc, frames) for c in clips])
    labels = np.array([c.targets[0] for c in clips])
    with torch.no_grad():
        ref = model(torch.from_numpy(mels))[0].numpy()
    return path, info, mels, labels, ref


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
    from dymn_edge.export.validate import LiteRTRunner

    path, _, mels, labels, ref = full_int8
    logits, _ = LiteRTRunner(path, threads=1)(mels)
    acc = float((logits.argmax(1) == labels).mean())
    acc_ref = float((ref.argmax(1) == labels).mean())
    assert acc_ref >= 0.9
    assert acc >= acc_ref - 0.05, (acc, acc_ref)
