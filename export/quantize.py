"""fp16 / int8 variants of a float model file.

Schemes (measured on the trained FSDD DyMN-S, fp32 test accuracy 0.9667; see the lead's
notes and ``tests/export``):

- ONNX ``dynamic`` (default): u8 weights of every Conv / MatMul / Gemm with a constant
  weight (the Dy-Conv kernels computed at run time stay float), activations quantized at
  run time; no calibration. FSDD: 0.97 -> 0.97, 7.2 -> 2.1 MB.
- ONNX ``static_qdq``: ONNX Runtime static quantization, QDQ, s8 per-channel weights, u8
  activations, calibrated on real audio. Measured broken on the dynamo-exported graph:
  accuracy 0.10 (Percentile 99.99) / 0.27 (MinMax) with Relu kept (ORT's default also
  drops Relu after Conv, which a non-zero-based range turns into negative activations).
  Errors grow from the first block's context means; selectable, validated, not default.
- TFLite ``weight_only`` (default): int8 weights, dequantized to float in the graph, float
  compute (XNNPACK keeps the single partition). Ordinary convs get per-channel scales; the
  FULLY_CONNECTED weights, which hold the Dy-Conv kernel banks reshaped to
  (C_out*C_in*k*k, K), get per-tensor scales: per-channel there stores one scale per row and
  doubles the file.
- TFLite ``dynamic``: as weight-only, but the kernels quantize activations on the fly.
- TFLite fp16: float16 weights (AI Edge Quantizer float casting), float32 compute.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from dymn_edge.errors import ExportError
from dymn_edge.export.config import CalibrationMethod, QuantizationConfig, QuantScheme

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# ONNX


class _MelReader:
    """onnxruntime CalibrationDataReader over (N, 1, 128, T) log-mels, one at a time."""

    def __init__(self, input_name: str, mels: np.ndarray, progress: bool) -> None:
        self.input_name = input_name
        self.mels = mels
        self.i = 0
        self.bar = None
        if progress:
            from tqdm import tqdm  # noqa: PLC0415

            self.bar = tqdm(total=len(mels), desc="calibrating", unit="clip", leave=False)

    def get_next(self):
        if self.i >= len(self.mels):
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            return None
        x = self.mels[self.i:self.i + 1]
        self.i += 1
        if self.bar is not None:
            self.bar.update(1)
        return {self.input_name: x}

    def rewind(self) -> None:
        self.i = 0


def quantize_onnx(src: str | Path, dst: str | Path, q: QuantizationConfig,
                  mels: np.ndarray | None, *, progress: bool = False) -> Path:
    """int8 ONNX from the fp32 ONNX ``src`` with scheme ``q`` (``mels`` for static schemes)."""
    from onnxruntime import quantization as ortq  # noqa: PLC0415

    dst = Path(dst)
    qt = {"int8": ortq.QuantType.QInt8, "uint8": ortq.QuantType.QUInt8}
    with tempfile.TemporaryDirectory(prefix="dymn-edge-q-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:  # shape inference + graph optimisation recommended before quantization
            ortq.quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        except Exception as exc:  # noqa: BLE001 - pre-processing is optional
            log.debug("quant_pre_process skipped (%s)", str(exc).splitlines()[0][:200])
            pre = Path(src)
        try:
            if q.scheme is QuantScheme.DYNAMIC:
                # per-channel needs initializer weights; the Dy-Conv MatMuls have runtime ones
                ortq.quantize_dynamic(str(pre), str(dst), per_channel=False,
                                      weight_type=qt[q.weight_type],
                                      nodes_to_exclude=_runtime_weight_nodes(pre))
                return dst
            if mels is None or len(mels) == 0:
                raise ExportError("static int8 quantization needs calibration audio")
            method = {CalibrationMethod.MINMAX: ortq.CalibrationMethod.MinMax,
                      CalibrationMethod.PERCENTILE: ortq.CalibrationMethod.Percentile,
                      CalibrationMethod.ENTROPY: ortq.CalibrationMethod.Entropy}[q.calibration_method]
            # Keep Relu/Clip: ORT drops them assuming the output range clips at 0, which a
            # symmetric/percentile range does not (ReLU outputs went negative: accuracy 0.10).
            extra = {"QDQKeepRemovableActivations": True}
            if method == ortq.CalibrationMethod.Percentile:
                extra["CalibPercentile"] = q.percentile
            import onnx  # noqa: PLC0415

            input_name = onnx.load(str(pre), load_external_data=False).graph.input[0].name
            ortq.quantize_static(
                str(pre), str(dst), _MelReader(input_name, mels, progress),
                quant_format=ortq.QuantFormat.QDQ, per_channel=q.per_channel,
                activation_type=qt[q.activation_type], weight_type=qt[q.weight_type],
                calibrate_method=method, extra_options=extra)
        except ExportError:
            raise
        except Exception as exc:  # the quantizer raises many types
            raise ExportError(f"ONNX int8 quantization failed: {str(exc).splitlines()[0][:300]}") from exc
    return dst


def _runtime_weight_nodes(path: Path) -> list[str]:
    """Conv / MatMul / Gemm nodes whose weight is computed at run time (the Dy-Conv kernels)."""
    import onnx  # noqa: PLC0415

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type in ("Conv", "MatMul", "Gemm") and len(n.input) > 1 and n.input[1] not in inits]


# --------------------------------------------------------------------------------------------
# TFLite (AI Edge Quantizer on the fp32 flatbuffer)


def _aeq_quantize(data: bytes, configure) -> bytes:
    from ai_edge_quantizer import quantizer  # noqa: PLC0415

    q = quantizer.Quantizer(bytearray(data))
    configure(q)
    try:
        result = q.quantize(enable_progress_report=False, enable_progress_bar=False)
    except TypeError:  # older AEQ without enable_progress_bar
        result = q.quantize(enable_progress_report=False)
    return bytes(result.quantized_model)


def tflite_fp16(data: bytes) -> bytes:
    """float16 weights (dequantized at load), float32 compute."""
    from ai_edge_quantizer import qtyping  # noqa: PLC0415
    from ai_edge_quantizer.algorithm_manager import AlgorithmName  # noqa: PLC0415

    return _aeq_quantize(data, lambda q: q.add_weight_only_config(
        ".*", qtyping.TFLOperationName.ALL_SUPPORTED, 16, algorithm_key=AlgorithmName.FLOAT_CASTING))


def tflite_int8(data: bytes, qcfg: QuantizationConfig, mels: np.ndarray | None = None) -> bytes:
    """int8 variant of the fp32 flatbuffer ``data`` (weight-only or dynamic-range)."""
    from ai_edge_quantizer import qtyping  # noqa: PLC0415

    op = qtyping.TFLOperationName
    gran = qtyping.QuantGranularity
    conv_gran = gran.CHANNELWISE if qcfg.per_channel else gran.TENSORWISE
    if qcfg.scheme is QuantScheme.FULL_INT8:
        return _tflite_full_int8(data, mels)

    def configure(q) -> None:
        add = (q.add_weight_only_config if qcfg.scheme is QuantScheme.WEIGHT_ONLY
               else q.add_dynamic_config)
        for name in (op.CONV_2D, op.DEPTHWISE_CONV_2D):
            add(".*", name, 8, granularity=conv_gran)
        # FULLY_CONNECTED holds the Dy-Conv kernel banks: per-tensor (per-channel doubles the file)
        add(".*", op.FULLY_CONNECTED, 8, granularity=gran.TENSORWISE)

    try:
        return _aeq_quantize(data, configure)
    except Exception as exc:  # the quantizer raises many types
        raise ExportError(f"TFLite int8 quantization failed: {str(exc).splitlines()[0][:300]}") from exc


def _tflite_full_int8(data: bytes, mels: np.ndarray | None) -> bytes:
    """Full-integer int8 (int8 I/O, every op int8) of the fp32 flatbuffer ``data``."""
    from dymn_edge.export.full_int8 import quantize_full_int8_tflite  # noqa: PLC0415

    if mels is None or len(mels) == 0:
        raise ExportError("full-integer int8 needs calibration audio (--calibration DIR)")
    with tempfile.TemporaryDirectory(prefix="dymn-edge-fullint8-") as tmp:
        out = Path(tmp) / "full_int8.tflite"
        info = quantize_full_int8_tflite(None, int(mels.shape[3]), mels, out, fp32=data)
        log.info("full int8: ops outside XNNPACK %s", info["outside_xnnpack"])
        return out.read_bytes()
