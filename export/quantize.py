"""fp16 / int8 variants of a float model file.

Schemes (measured on the trained FSDD DyMN-S, fp32 test accuracy 0.9667; see the lead's
notes and ``tests/export``):

- ONNX ``dynamic`` (default): u8 weights of every Conv / MatMul / Gemm with a constant
  weight (the Dy-Conv kernels computed at run time stay float), activations quantized at
  run time; no calibration. FSDD: 0.97 -> 0.97, 7.2 -> 2.1 MB.
- ONNX ``static_qdq`` (``--static-int8``): ONNX Runtime static quantization, QDQ, s8
  per-channel weights **in a 7-bit range** (``reduce_range``), u8 activations, calibrated on
  real audio, Relu kept. Every op quantized it was at chance (0.10 Percentile / 0.26 MinMax:
  4 out-of-domain clips among 68 set the late-block ranges 100-200x too wide); clip-wise
  ranges (:func:`clipwise_ranges`) and the pooled context / coefficient path float
  (:func:`context_path_nodes`) brought it to 0.92 vs 0.97. The last 5 points were not
  quantization at all: the QDQ graph run as written scores 0.9667, the deployed file 0.92,
  because MLAS's u8 x s8 kernel on x86 without VNNI (AVX2 ``vpmaddubsw``) adds pairs of
  products in int16 and saturates; ORT's precise kernel (``session.x64quantprecision``) gives
  0.9667 on the same file. 7-bit weights cannot saturate (2 x 255 x 64 < 2^15): 0.97, the
  fp32 score. s8 symmetric activations (``activation_type="int8"``) are exact too (0.9733)
  but ORT's CPU EP has no s8 kernel for the depthwise convs and Adds: float ops between Q/DQ
  pairs, 2x slower than u8 (DyMN-M 10 s fp32/int8 0.41 vs 0.89). :func:`_check_kernels`
  checks every export: deployed kernels vs the QDQ graph as written (output SQNR).
  ``--quant-report`` writes the per-node error table (:mod:`~dymn_edge.export.quant_report`).
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
from tqdm import tqdm

from dymn_edge.errors import ExportError, one_line
from dymn_edge.ort import ort_session
from dymn_edge.export.config import CalibrationMethod, QuantizationConfig, QuantScheme
from dymn_edge.export.full_int8 import quantize_full_int8_tflite, run_quantizer
from dymn_edge.export.quant_report import kernel_sqnr, quant_report, write_report
from dymn_edge.formats import Precision

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
                  mels: np.ndarray | None, *, progress: bool = False,
                  report_path: str | Path | None = None) -> Path:
    """int8 ONNX from the fp32 ONNX ``src`` with scheme ``q`` (``mels`` for static schemes).

    ``report_path``: static QDQ only; write the per-node error report
    (:mod:`~dymn_edge.export.quant_report`) as ``<report_path>.quant-report.{json,md}``.
    """
    from onnxruntime import quantization as ortq  # noqa: PLC0415

    dst = Path(dst)
    qt = {"int8": ortq.QuantType.QInt8, "uint8": ortq.QuantType.QUInt8}
    with tempfile.TemporaryDirectory(prefix="dymn-edge-q-") as tmp:
        pre = _preprocess(Path(src), Path(tmp) / "pre.onnx")
        try:
            if q.scheme is QuantScheme.DYNAMIC:
                # per-channel needs initializer weights; the Dy-Conv MatMuls have runtime ones
                ortq.quantize_dynamic(str(pre), str(dst), per_channel=False,
                                      weight_type=qt[q.weight_type],
                                      nodes_to_exclude=_runtime_weight_nodes(pre))
                return dst
            if mels is None or len(mels) == 0:
                raise ExportError("static int8 quantization needs calibration audio")
            import onnx  # noqa: PLC0415

            model = onnx.load(str(pre), load_external_data=False)
            input_name = model.graph.input[0].name
            # Keep Relu/Clip: ORT drops them assuming the output range clips at 0, which a
            # symmetric/percentile range does not (ReLU outputs went negative: accuracy 0.10).
            extra: dict = {"QDQKeepRemovableActivations": True,
                           # s8 activations: centred on 0 (exact on x86, but slow in ORT's CPU EP)
                           "ActivationSymmetric": q.activation_type == "int8"}
            exclude = context_path_nodes(model) if q.keep_context_float else []
            method, reader, kw = _calibration(ortq, q, pre, mels, Path(tmp), input_name, extra, progress)
            ortq.quantize_static(
                str(pre), str(dst), reader,
                quant_format=ortq.QuantFormat.QDQ, per_channel=q.per_channel,
                # 7-bit weights: x86's u8 x s8 kernel saturates without VNNI (module docstring)
                reduce_range=q.reduce_range,
                activation_type=qt[q.activation_type], weight_type=qt[q.weight_type],
                calibrate_method=method, nodes_to_exclude=exclude, extra_options=extra, **kw)
            _check_kernels(dst, mels)
            if report_path is not None:
                _write_quant_report(pre, dst, mels, report_path)
        except ExportError:
            raise
        except Exception as exc:  # the quantizer raises many types
            raise ExportError(f"ONNX int8 quantization failed: {one_line(exc)}") from exc
    return dst


def _calibration(ortq, q: QuantizationConfig, pre: Path, mels: np.ndarray, tmp: Path, input_name: str,
                 extra: dict, progress: bool) -> tuple[object, object, dict]:
    """(ORT calibration method, data reader, extra quantize_static kwargs) of ``q``'s method.

    clipwise ranges are computed here and handed to ORT as a calibration cache (MinMax over
    them); the other methods read the clips through ORT's own calibrators.
    """
    if q.calibration_method is CalibrationMethod.CLIPWISE:
        cache = tmp / "ranges.json"
        ortq.calibrate.save_tensors_data(clipwise_ranges(pre, mels), cache)
        return ortq.CalibrationMethod.MinMax, None, {"calibration_cache_path": str(cache)}
    method = {CalibrationMethod.MINMAX: ortq.CalibrationMethod.MinMax,
              CalibrationMethod.PERCENTILE: ortq.CalibrationMethod.Percentile,
              CalibrationMethod.ENTROPY: ortq.CalibrationMethod.Entropy}[q.calibration_method]
    if method == ortq.CalibrationMethod.Percentile:
        extra["CalibPercentile"] = q.percentile
    return method, _MelReader(input_name, mels, progress), {}


def _write_quant_report(pre: Path, dst: Path, mels: np.ndarray, report_path: str | Path) -> None:
    """The per-node error report of ``dst`` against its float graph on a few clips."""
    idx = np.unique(np.linspace(0, len(mels) - 1, min(len(mels), REPORT_CLIPS)).round().astype(int))
    rep = quant_report(pre, dst, mels[idx])
    for f in write_report(rep, report_path):
        log.info("quantization report: %s", f)


#: calibration clips the per-node report runs (it keeps every activation of each in memory)
REPORT_CLIPS = 8

#: deployed int8 kernels vs the QDQ graph as written, output SQNR below which the export warns
KERNEL_SQNR_DB = 25.0


def _check_kernels(path: Path, mels: np.ndarray, clips: int = 4) -> dict[str, float]:
    """Warn when ONNX Runtime's fused int8 kernels on this CPU depart from the QDQ graph.

    Why: the per-node report and any simulation see the QDQ arithmetic; the file runs
    QLinearConv / QLinearMatMul, whose x86 u8 x s8 form saturates without VNNI (16.6 dB output
    SQNR, -5 accuracy points on the FSDD DyMN-S). Sound kernels agree to 33-170 dB per clip
    (a rounding tie decided differently early on propagates; 7-bit weights, FSDD DyMN-S).
    """

    idx = np.unique(np.linspace(0, len(mels) - 1, min(len(mels), clips)).round().astype(int))
    sq = kernel_sqnr(path, mels[idx])
    worst = min(sq.values()) if sq else float("inf")
    if worst < KERNEL_SQNR_DB:
        log.warning("static int8: this CPU's int8 kernels depart from the quantized graph "
                    "(output SQNR %.1f dB; u8 x s8 saturation on x86 without VNNI?): keep "
                    "reduce_range", worst)
    else:
        log.info("static int8: deployed kernels match the QDQ graph (output SQNR %.0f dB)", worst)
    return sq


def _preprocess(src: Path, dst: Path) -> Path:
    """ORT's recommended pre-processing (ONNX shape inference + graph optimisation).

    Symbolic shape inference is skipped: it fails on the dynamic time axis
    (``floor(frames/2 - 1/2) + 1`` in a Split). Falls back to ``src`` if anything fails.
    """
    from onnxruntime import quantization as ortq  # noqa: PLC0415

    try:
        ortq.quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return dst
    except Exception as exc:  # pre-processing is optional
        log.debug("quant_pre_process skipped (%s)", one_line(exc, 200))
        return src


def clipwise_ranges(path: str | Path, mels: np.ndarray, *, low_pct: float = 5.0,
                    high_pct: float = 95.0):
    """ORT ``TensorsData`` (MinMax form) of every float tensor of ``path`` from ``mels``.

    Per clip the min and max of each tensor; the range is the ``low_pct`` percentile of the
    minima and the ``high_pct`` percentile of the maxima across clips (the full-int8 TFLite
    recipe). Plain MinMax takes the single most extreme clip: with 4 out-of-domain segments
    (the metro recording) among 68 calibration clips, the FSDD DyMN-S's late-block ranges were
    100-200x their in-domain size and the int8 file fell to 0.26 accuracy.
    """
    from onnxruntime.quantization import qdq_loss_debug as dbg  # noqa: PLC0415
    from onnxruntime.quantization.calibrate import CalibrationMethod as OrtMethod  # noqa: PLC0415
    from onnxruntime.quantization.calibrate import TensorsData  # noqa: PLC0415

    suffix = "_ReshapedSavedOutput"  # qdq_loss_debug's name for a saved intermediate tensor
    with tempfile.TemporaryDirectory(prefix="dymn-edge-ranges-") as tmp:
        aug = Path(tmp) / "aug.onnx"
        dbg.modify_model_output_intermediate_tensors(str(path), str(aug))
        sess = ort_session(aug, threads=1, optimize=False)
    names = [o.name for o in sess.get_outputs() if o.name.endswith(suffix)]
    inp = sess.get_inputs()[0].name
    lows = np.empty((len(mels), len(names)))
    highs = np.empty((len(mels), len(names)))
    for i in range(len(mels)):
        for j, v in enumerate(sess.run(names, {inp: np.ascontiguousarray(mels[i:i + 1], np.float32)})):
            lows[i, j], highs[i, j] = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    lo = np.minimum(np.percentile(lows, low_pct, axis=0), 0.0)
    hi = np.maximum(np.percentile(highs, high_pct, axis=0), 0.0)
    data = {n[:-len(suffix)]: (np.array(a, np.float32), np.array(b, np.float32))
            for n, a, b in zip(names, lo, hi)}
    return TensorsData(OrtMethod.MinMax, data)


def context_path_nodes(model) -> list[str]:
    """Nodes of the context / coefficient path: everything computed from a pooled tensor.

    A DyMN block pools its input (ReduceMean), and from that small tensor computes the
    Dy-Conv attention (softmax), the Dy-ReLU coefficients and the aggregated kernels. These
    nodes cost little (no time axis), but quantizing them was the first cliff of the per-node
    report (context means and conv_t/conv_f outputs at 12-16 dB, accumulated error below 5 dB by
    block 10). A node is on the path when it is a mean, or when every non-constant input comes
    from the path; it ends where a pooled tensor meets a full-size one (the Dy-ReLU Mul, the
    pointwise MatMul, the runtime-filter Conv), whose own output is full-size and quantized.
    Every other elementwise consumer of the path stays float too (it would only add Q/DQ pairs
    around float data).
    """
    inits = {i.name for i in model.graph.initializer}
    const = set(inits)
    pooled: set[str] = set()  # computed from means only (small)
    floating: set[str] = set()  # full-size, but downstream of the path through elementwise ops
    names: list[str] = []
    for n in model.graph.node:
        dyn = [i for i in n.input if i and i not in const]
        if n.op_type in ("Constant", "Shape") or not dyn:
            const.update(n.output)
            continue
        if n.op_type in ("ReduceMean", "GlobalAveragePool") or all(i in pooled for i in dyn):
            pooled.update(n.output)
            names.append(n.name)
        elif n.op_type not in _HEAVY_OPS and any(i in pooled or i in floating for i in dyn):
            floating.update(n.output)  # Dy-ReLU's elementwise ops, up to the next heavy op
            names.append(n.name)
    return names


#: ops whose int8 kernels are what static quantization is for
_HEAVY_OPS = ("Conv", "MatMul", "Gemm")


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
    return bytes(run_quantizer(q).quantized_model)


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
        raise ExportError(f"TFLite int8 quantization failed: {one_line(exc)}") from exc


def _tflite_full_int8(data: bytes, mels: np.ndarray | None) -> bytes:
    """Full-integer int8 (int8 I/O, every op int8) of the fp32 flatbuffer ``data``."""
    if mels is None or len(mels) == 0:
        raise ExportError("full-integer int8 needs calibration audio (--calibration DIR)")
    with tempfile.TemporaryDirectory(prefix="dymn-edge-fullint8-") as tmp:
        out = Path(tmp) / "full_int8.tflite"
        info = quantize_full_int8_tflite(None, int(mels.shape[3]), mels, out, fp32=data)
        log.info("full int8: ops outside XNNPACK %s", info["outside_xnnpack"])
        return out.read_bytes()


def quantize_onnx_file(path: Path, precision: Precision | str, q: QuantizationConfig, mels: np.ndarray | None, *,
                       progress: bool = False, report_path: Path | None = None) -> None:
    """The formats table's ONNX quantizer: ``path`` (fp32) is replaced by its int8 file."""
    src = path.with_name("fp32.onnx")
    path.rename(src)
    quantize_onnx(src, path, q, mels, progress=progress, report_path=report_path)


def quantize_tflite_file(path: Path, precision: Precision | str, q: QuantizationConfig, mels: np.ndarray | None, *,
                         progress: bool = False, report_path: Path | None = None) -> None:
    """The formats table's TFLite quantizer: ``path`` (fp32) is rewritten as fp16 or int8."""
    data = path.read_bytes()
    if Precision(precision) is Precision.FP16:
        path.write_bytes(tflite_fp16(data))
    else:
        path.write_bytes(tflite_int8(data, q, mels))
